"""The compiled static-cache decode step (`lm.decode`) against the eager engine (HF `generate` on hooks).

Exactness: for every edit kind (add at each position mode, clamp set/add/project, scale, ablate, caps
per token and windowed, several at once) the compiled step's logits match eager's within 1e-4 at
every step and greedy tokens are equal. Each case compiles once on the tiny model (a few seconds).
"""

import sys
import warnings

import pytest
import torch

from lm.batch import pad
from lm.chat import render
from lm.decode import COMPILES, Sampler, sample, site_of
from lm.layout import decode_model
from lm.fastpath import fast_path
from lm.generate import GenerationConfig, end_of_turn_ids, generate, hooked_runner, tracking
from lm.kernel import Kernel
from steering import Ablate, Add, Cap, Clamp, SAECap, Scale, Steering
from steering.vectors import add_edit

HOOK = "blocks.1.hook_resid_post"
PROMPTS = ["Tell me about the weather today.", "Name a fruit, please, and then say why."]


def unit(seed: int, d: int = 64) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def batch(tiny):
    tok = tiny.tokenizer
    ids, att, _ = pad([render(tok, [{"role": "user", "content": p}], True).ids for p in PROMPTS],
                      tok.pad_token_id, side="left")
    return ids, att


def both(tiny, hooks, n=12, penalty=1.0, min_new=0, **kw):
    """(compiled tokens, per-step logits) and (eager tokens, per-step logits), greedy."""
    ids, att = batch(tiny)
    tok, stops = tiny.tokenizer, end_of_turn_ids(tiny.tokenizer)
    trace = []
    got = sample(decode_model(fast_path(tiny).hf), ids, att, [h.kernel for _, h in hooks], max_new_tokens=n,
                 min_new_tokens=min_new, temperature=0, top_p=1.0, repetition_penalty=penalty, stops=stops,
                 pad_id=tok.pad_token_id, context=512, trace=trace, **kw)
    with torch.no_grad(), hooked_runner(tiny, hooks) as runner, tracking(runner, ids.shape[1], (att == 0).sum(1)):
        out = runner.generate(input_ids=ids, attention_mask=att, max_new_tokens=n, min_new_tokens=min_new or None,
                              do_sample=False, repetition_penalty=penalty, eos_token_id=stops,
                              pad_token_id=tok.pad_token_id, output_logits=True, return_dict_in_generate=True)
    return (got, trace), (out.sequences[:, ids.shape[1]:], [x.float() for x in out.logits])


def cases(sae_dir):
    v, w = unit(0), unit(1)
    return {
        "add_all": Add(HOOK, v, 3.0),
        "add_prompt": Add("blocks.0.hook_resid_pre", v, 4.0, positions="prompt"),
        "add_generated": Add("blocks.2.hook_mlp_out", v, 4.0, positions="generated"),
        "add_explicit": Add("blocks.1.hook_attn_out", v, 4.0, positions=[2, 5, 40, 41, 43]),
        "add_embed": Add("hook_embed", v, 0.5),
        "clamp_set": Clamp(sae_dir, {3: 4.0, 7: 2.0}),
        "clamp_add": Clamp(sae_dir, {3: 0.8}, mode="add", positions="generated"),
        "clamp_project": Clamp(sae_dir, {3: 0.5}, mode="project", unit=2.0),
        "scale": Scale(sae_dir, [3, 7], 4.0),
        "ablate": Ablate("blocks.2.hook_resid_post", w),
        "cap": Cap(HOOK, v, tau=0.5),
        "cap_window": Cap("blocks.2.hook_resid_post", w, tau=0.3, window=4, gain=0.7),
        "saecap_window": SAECap(sae_dir, unit(2, 256), tau=0.2, window=3),
        "cap_conditional": Cap("blocks.2.hook_resid_post", w, tau=0.6, window=4, gain=2.0, trigger=0.3),
        "saecap_conditional": SAECap(sae_dir, unit(2, 256), tau=0.3, trigger=0.2, gain=2.0),
        "several": Steering([Add("blocks.0.hook_resid_post", v, 2.0), Clamp(sae_dir, {3: 0.8}, mode="add"),
                             Cap("blocks.3.hook_resid_post", w, tau=0.4, window=5, mode="ceiling")]),
    }


@pytest.mark.parametrize("name", list(cases("x")))
def test_compiled_step_matches_eager(tiny, topk_sae_dir, name):
    x = cases(topk_sae_dir)[name]
    (got, trace), (ref, logits) = both(tiny, x.hooks(tiny))
    assert got.shape == ref.shape and torch.equal(got, ref)
    assert len(trace) == len(logits)
    assert max((a - b).abs().max().item() for a, b in zip(trace, logits)) < 1e-4
    unsteered = both(tiny, [])[0][1]
    assert any((a - b).abs().max() > 1e-2 for a, b in zip(trace, unsteered)), "the edit changed nothing"


@pytest.mark.parametrize("segment", [1, 3])
def test_segments_of_layers_match_eager(tiny, topk_sae_dir, segment):
    """Layers run SEGMENT at a time in one compiled call; with short segments the tiny model's 4 layers
    split into segments with and without edits (3: an uneven tail), and a plain segment's program is
    shared: still eager's tokens and logits, and the window state carried across segments."""
    x = cases(topk_sae_dir)["several"]
    (got, trace), (ref, logits) = both(tiny, x.hooks(tiny), segment=segment)
    assert torch.equal(got, ref)
    assert max((a - b).abs().max().item() for a, b in zip(trace, logits)) < 1e-4


def test_penalty_and_min_new_tokens_match_eager(tiny):
    (got, trace), (ref, logits) = both(tiny, Add(HOOK, unit(0), 3.0).hooks(tiny), n=10, penalty=1.3, min_new=6)
    assert torch.equal(got, ref)
    assert max((a - b).abs().max().item() for a, b in zip(trace, logits)) < 1e-4


def test_strength_sweep_reuses_the_compiled_step(tiny):
    """Strengths and directions are data: new values run the program compiled for the first, and
    its logits follow the new values (they match eager at those values, not the first ones)."""
    cfg = GenerationConfig(max_new_tokens=6, temperature=0, decode="compiled")
    generate(tiny, PROMPTS, cfg, fwd_hooks=Add(HOOK, unit(0), 0.5).hooks(tiny), progress=False)
    n, cnt = len(COMPILES), torch._dynamo.utils.counters["stats"]["unique_graphs"]
    (_, first), _ = both(tiny, Add(HOOK, unit(0), 0.5).hooks(tiny))
    (_, trace), (_, logits) = both(tiny, Add(HOOK, unit(3), -5.0).hooks(tiny))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == cnt and len(COMPILES) == n
    assert max((a - b).abs().max().item() for a, b in zip(trace, logits)) < 1e-4
    assert (trace[0] - first[0]).abs().max() > 1e-2


def test_auto_is_compiled_and_falls_back_with_one_clear_warning(tiny, monkeypatch):
    monkeypatch.delenv("STEERLENS_DECODE", raising=False)
    assert GenerationConfig().decode == "auto"
    monkeypatch.setattr(sys.modules["lm.generate"], "AUTO_MIN_TOKENS", 8)  # short calls; the rule is tested below
    cfg = GenerationConfig(max_new_tokens=5, temperature=0)
    steer = Add(HOOK, unit(0), 3.0)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        auto = generate(tiny, PROMPTS, cfg, fwd_hooks=steer.hooks(tiny), progress=False)
    assert not [w for w in seen if "lm.generate" in str(w.message)]
    eager = generate(tiny, PROMPTS, GenerationConfig(max_new_tokens=5, temperature=0, decode="eager"),
                     fwd_hooks=steer.hooks(tiny), progress=False)
    assert [g.text for g in auto] == [g.text for g in eager]

    plain = [(HOOK, lambda x, hook: x + 3.0 * unit(0))]
    with pytest.warns(UserWarning, match="plain function"):
        got = generate(tiny, PROMPTS, cfg, fwd_hooks=plain, progress=False)
    assert [g.text for g in got] == [g.text for g in eager]
    with pytest.raises(ValueError, match="decode='compiled' cannot run here"):
        generate(tiny, PROMPTS, GenerationConfig(max_new_tokens=3, decode="compiled"), fwd_hooks=plain, progress=False)
    with steer.apply(tiny), pytest.warns(UserWarning, match="outside fwd_hooks"):
        outside = generate(tiny, PROMPTS, cfg, progress=False)
    assert [g.text for g in outside] == [g.text for g in eager]
    other = Kernel(HOOK, add_edit, (torch.zeros(64, device="meta"),))
    fn = lambda x, hook: x  # noqa: E731
    fn.kernel = other
    with pytest.warns(UserWarning, match="another device"):
        generate(tiny, PROMPTS[:1], GenerationConfig(max_new_tokens=8), fwd_hooks=[(HOOK, fn)], progress=False)
    with pytest.raises(ValueError, match="use one of"):
        generate(tiny, PROMPTS, GenerationConfig(decode="fast"), progress=False)


def test_auto_runs_short_calls_eagerly(tiny, monkeypatch):
    """A call too short to repay compiling stays eager under "auto", silently; forcing compiles it."""
    from lm.generate import AUTO_MIN_TOKENS, choose_engine

    monkeypatch.delenv("STEERLENS_DECODE", raising=False)
    hooks = Add(HOOK, unit(0), 3.0).hooks(tiny)
    short = GenerationConfig(max_new_tokens=4)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert choose_engine(tiny, hooks, short, torch.device("cpu"), 2) is None
        long = GenerationConfig(max_new_tokens=AUTO_MIN_TOKENS // 2)
        assert len(choose_engine(tiny, hooks, long, torch.device("cpu"), 2)) == 1
        assert len(choose_engine(tiny, hooks, GenerationConfig(max_new_tokens=4, decode="compiled"),
                                 torch.device("cpu"), 2)) == 1
    assert not seen


def test_site_of_names_the_editable_hook_points():
    assert site_of("blocks.3.hook_resid_post") == (3, "hook_resid_post")
    assert site_of("hook_embed") == (-1, "hook_embed")
    assert site_of("blocks.0.attn.hook_pattern") is None and site_of("ln_final.hook_normalized") is None


def test_sampled_compiled_generation_is_seeded(tiny):
    cfg = GenerationConfig(max_new_tokens=8, min_new_tokens=8, temperature=0.9, top_p=0.8, decode="compiled")
    a, b = (generate(tiny, PROMPTS, cfg, progress=False, seed=s) for s in (0, 0))
    c = generate(tiny, PROMPTS, cfg, progress=False, seed=1)
    assert [g.ids.tolist() for g in a] == [g.ids.tolist() for g in b]
    assert [g.ids.tolist() for g in a] != [g.ids.tolist() for g in c]
    assert all(len(g.ids) == 8 for g in a)


@pytest.mark.parametrize("scale", [3.0, 8.0, 0.05])
def test_candidate_top_p_keeps_what_the_full_sort_keeps(scale):
    """HF's rule on all tokens vs ours on the top candidates: same kept set wherever ours claims enough mass."""
    from transformers.generation.logits_process import TopPLogitsWarper

    scores = torch.randn(6, 3000, generator=torch.Generator().manual_seed(0)) * scale
    smp = Sampler(False, torch.tensor(1.0), torch.tensor(0.9), torch.tensor(1.0), False, torch.zeros(3000, dtype=torch.bool))
    idx, p, short = smp.candidates(scores)
    hf = TopPLogitsWarper(0.9)(None, scores.clone()).isfinite()
    for r in range(6):
        ours = set(idx[r][p[r] > 0].tolist())
        if short[r]:
            assert len(ours) == idx.shape[1]  # every candidate kept and more needed: the full sort redraws
        else:
            assert ours == set(hf[r].nonzero().squeeze(1).tolist())
    assert bool(short.all()) if scale < 0.1 else not bool(short.any())


def test_redraw_replaces_only_the_flagged_rows_from_the_full_top_p_set():
    from transformers.generation.logits_process import TopPLogitsWarper

    g = torch.Generator().manual_seed(1)
    scores = torch.cat([torch.randn(2, 3000, generator=g) * 0.05, torch.randn(2, 3000, generator=g) * 8.0])
    smp = Sampler(False, torch.tensor(1.0), torch.tensor(0.9), torch.tensor(1.0), False, torch.zeros(3000, dtype=torch.bool))
    seen, allow = torch.zeros(4, 3000, dtype=torch.bool), torch.tensor(True)
    nxt, short = smp(scores, seen, allow)
    assert short.tolist() == [True, True, False, False]
    kept = TopPLogitsWarper(0.9)(None, scores.clone()).isfinite()
    got = smp.redraw(nxt, short, scores, seen, allow)
    assert torch.equal(got[2:], nxt[2:])
    assert all(kept[r, got[r]] for r in range(4))
    draws = {smp.redraw(nxt, short, scores, seen, allow)[0].item() for _ in range(20)}
    assert len(draws) > 10  # a flat row's draw spreads over its large kept set


def test_int8_weights_are_an_option_close_to_float(tiny):
    ids, att = batch(tiny)
    hf = fast_path(tiny).hf
    from lm.decode import teacher_forced_logits
    from lm.layout import DecodeModel

    out = {kind: teacher_forced_logits(decode_model(hf, kind), ids, att)[:, -1] for kind in ("float", "int8")}
    assert isinstance(decode_model(hf, "int8"), DecodeModel) and decode_model(hf, "int8") is decode_model(hf, "int8")
    rel = (out["int8"] - out["float"]).norm() / out["float"].norm()
    assert 0 < rel < 0.05
    got = generate(tiny, PROMPTS, GenerationConfig(max_new_tokens=4, weights="int8", decode="compiled"), progress=False)
    assert len(got) == 2
    with pytest.raises(ValueError, match="compiled decode step only"):
        generate(tiny, PROMPTS, GenerationConfig(weights="int8", decode="eager"), progress=False)
    with pytest.raises(ValueError, match="use one of"):
        decode_model(hf, "int4")
