"""Interventions on the tiny model with a randomly initialised SAELens SAE."""

import json

import pytest
import torch

from lm.batch import pad
from lm.chat import render
from lm.generate import GenerationConfig, generate
from saes.access import FeatureIdError
from steering import Ablate, Add, Cap, Clamp, SAECap, Scale, Steering, from_dict, load, load_sae

from tests.helpers import HOOK, random_topk_sae_dir

LATER = "blocks.3.hook_resid_post"


@pytest.fixture(scope="module")
def ids(tiny):
    return render(tiny.tokenizer, [{"role": "user", "content": "Tell me about the weather today."}], True).ids[None]


def run(model, ids, hooks=(), capture=LATER):
    """Logits and the activation at `capture` under `hooks` (plain forward, no cache)."""
    seen = {}

    def cap(x, hook):
        seen["x"] = x.detach().clone()
        return x

    with torch.no_grad(), model.hooks(fwd_hooks=list(hooks) + [(capture, cap)]):
        logits = model(ids)
    return logits, seen["x"]


def unhooked(model) -> bool:
    return all(not hp._forward_hooks and not hp._forward_pre_hooks for hp in model.hook_dict.values())


def sae_reference(sae, edit_features):
    """Scaling Monosemanticity by the book: decode(edited f) + (x - decode(f))."""
    def hook(x, hook):
        f = sae.encode(x)
        err = x - sae.decode(f)
        return sae.decode(edit_features(f.clone())) + err
    return hook


def test_add_cap_ablate_match_their_formulas(tiny, ids):
    torch.manual_seed(1)
    v = torch.randn(64)
    _, clean = run(tiny, ids, capture=HOOK)
    _, h = run(tiny, ids, Add(HOOK, v, alpha=2.0).hooks(tiny), capture=HOOK)
    torch.testing.assert_close(h, clean + 2 * v)
    u = v / v.norm()
    proj = clean @ u
    tau = float(proj.median())
    _, h = run(tiny, ids, Cap(HOOK, v, tau, "floor").hooks(tiny), capture=HOOK)
    assert (h @ u >= tau - 1e-4).all()
    torch.testing.assert_close(h, clean + u * torch.relu(tau - proj)[..., None])
    _, h = run(tiny, ids, Cap(HOOK, v, tau, "ceiling").hooks(tiny), capture=HOOK)
    assert (h @ u <= tau + 1e-4).all()
    torch.testing.assert_close(h, clean - u * torch.relu(proj - tau)[..., None])
    assert ((h @ u < tau - 1e-3) == (proj < tau - 1e-3)).all()  # below the ceiling: untouched
    _, h = run(tiny, ids, Ablate(HOOK, v).hooks(tiny), capture=HOOK)
    assert (h @ u).abs().max() < 1e-4
    assert unhooked(tiny)


def test_clamp_matches_saelens_reference_and_keeps_error(tiny, ids, concept_sae_dir):
    sae = load_sae(concept_sae_dir)

    def set7(f):
        f[..., 7] = 5.0
        return f
    ref_logits, ref = run(tiny, ids, [(HOOK, sae_reference(sae, set7))])
    logits, h = run(tiny, ids, Clamp(concept_sae_dir, {7: 5.0}).hooks(tiny))
    torch.testing.assert_close(h, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    clean_logits, clean = run(tiny, ids)
    assert (h - clean).abs().max() > 1e-2  # the clamp did something


def test_no_feature_change_equals_clean_model_exactly(tiny, ids, concept_sae_dir):
    sae = load_sae(concept_sae_dir)
    clean_logits, _ = run(tiny, ids)
    _, h = run(tiny, ids, capture=HOOK)
    acts = sae.encode(h)[0]
    never = int((acts > 0).sum(0).argmin())
    assert (acts[:, never] == 0).all()
    for x in (Scale(concept_sae_dir, [3, 7], 1.0), Clamp(concept_sae_dir, {never: 0.0})):
        logits, _ = run(tiny, ids, x.hooks(tiny))
        assert torch.equal(logits, clean_logits), type(x).__name__


def test_scale_ablate_and_saecap_match_reference(tiny, ids, concept_sae_dir):
    sae = load_sae(concept_sae_dir)
    _, h = run(tiny, ids, capture=HOOK)
    busy = int((sae.encode(h) > 0).sum((0, 1)).argmax())

    def times3(f):
        f[..., busy] *= 3
        return f

    def zero(f):
        f[..., busy] = 0
        return f
    for x, fn in ((Scale(concept_sae_dir, [busy], 3.0), times3), (Ablate(sae=concept_sae_dir, features=[busy]), zero)):
        _, got = run(tiny, ids, x.hooks(tiny))
        _, want = run(tiny, ids, [(HOOK, sae_reference(sae, fn))])
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.manual_seed(2)
    axis = torch.randn(sae.cfg.d_sae)
    a = axis / axis.norm()
    tau = float((sae.encode(h) @ a).max()) + 1.0  # floor above every token: all get raised to tau

    def cap(f):
        return f + a * torch.relu(tau - f @ a)[..., None]
    _, got = run(tiny, ids, SAECap(concept_sae_dir, axis, tau).hooks(tiny))
    _, want = run(tiny, ids, [(HOOK, sae_reference(sae, cap))])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_relative_clamp_uses_max_activations(tiny, ids, concept_sae_dir):
    absolute, _ = run(tiny, ids, Clamp(concept_sae_dir, {7: 6.0}).hooks(tiny))
    given, _ = run(tiny, ids, Clamp(concept_sae_dir, {7: 2.0}, relative=True, max_activations={7: 3.0}).hooks(tiny))
    from_file, _ = run(tiny, ids, Clamp(concept_sae_dir, {7: 2.0}, relative=True).hooks(tiny))  # concepts.json: 3.0
    assert torch.equal(absolute, given) and torch.equal(absolute, from_file)
    with pytest.raises(KeyError, match="max activation"):
        Clamp(concept_sae_dir, {8: 2.0}, relative=True).hooks(tiny)


def test_positions_in_a_plain_forward(tiny, ids):
    v = torch.randn(64)
    clean, _ = run(tiny, ids)
    gen, _ = run(tiny, ids, Add(HOOK, v, 4.0, positions="generated").hooks(tiny))
    prompt, _ = run(tiny, ids, Add(HOOK, v, 4.0, positions="prompt").hooks(tiny))
    every, _ = run(tiny, ids, Add(HOOK, v, 4.0).hooks(tiny))
    assert torch.equal(gen, clean) and torch.equal(prompt, every)
    _, h = run(tiny, ids, Add(HOOK, v, 1.0, positions=[2, 5]).hooks(tiny), capture=HOOK)
    _, h0 = run(tiny, ids, capture=HOOK)
    changed = (h - h0).abs().amax(-1)[0] > 0
    assert changed.nonzero().flatten().tolist() == [2, 5]


@pytest.mark.parametrize("kind", ["add", "clamp"])
@pytest.mark.parametrize("positions", ["generated", "prompt", "explicit"])
def test_kv_cached_generation_matches_no_cache_reference(tiny, concept_sae_dir, kind, positions):
    """Steer with the KV cache, then re-run prompt + answer in one uncached forward with a hand-made hook."""
    torch.manual_seed(3)
    v = torch.randn(64)
    sae = load_sae(concept_sae_dir)
    prompts = ["Hi!", "Could you tell me a long story about a small robot and a cat?"]
    tok = tiny.tokenizer
    pids, att, _ = pad([render(tok, [{"role": "user", "content": p}], True).ids for p in prompts], tok.pad_token_id, side="left")
    P, n = pids.shape[1], 8
    pos = {"generated": "generated", "prompt": "prompt", "explicit": [P - 2, P + 1, P + 4]}[positions]
    steer = Add(HOOK, v, 3.0, positions=pos) if kind == "add" else Clamp(concept_sae_dir, {7: 12.0}, positions=pos)
    chunks = []

    def cap(x, hook):
        chunks.append(x.detach().clone())
        return x
    cfg = GenerationConfig(max_new_tokens=n, min_new_tokens=n, temperature=0, batch_size=2)
    out = generate(tiny, prompts, cfg, fwd_hooks=steer.hooks(tiny) + [(LATER, cap)], progress=False)
    assert unhooked(tiny) and len(chunks) == n  # prefill + n - 1 one-token steps
    cached = torch.cat(chunks, 1)
    gen = torch.stack([g.ids for g in out])
    full = torch.cat([pids, gen], 1)
    mask = torch.cat([att, torch.ones_like(gen)], 1)
    chosen = torch.zeros(full.shape[1], dtype=torch.bool)
    chosen[{"generated": slice(P, None), "prompt": slice(0, P), "explicit": pos}[positions]] = True

    def reference(x, hook):  # the same edit, applied by position in the whole sequence
        y = x + 3.0 * v if kind == "add" else sae_reference(sae, lambda f: f.index_fill_(-1, torch.tensor([7]), 12.0))(x, hook)
        return torch.where(chosen[None, :, None], y, x)
    seen = []
    with torch.no_grad(), tiny.hooks(fwd_hooks=[(HOOK, reference), (LATER, lambda x, hook: seen.append(x) or x)]):
        hf = tiny.original_model
        logits = hf(input_ids=full, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    uncached = seen[0][:, :-1]
    real = mask[:, :-1].bool()
    torch.testing.assert_close(cached[real], uncached[real], atol=2e-4, rtol=1e-4)
    assert torch.equal(logits[:, P - 1:-1].argmax(-1), gen)
    # the steering mattered: the uncached unsteered run differs exactly at and after the steered positions
    plain = []
    with torch.no_grad(), tiny.hooks(fwd_hooks=[(LATER, lambda x, hook: plain.append(x) or x)]):
        hf(input_ids=full, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    moved = ((plain[0] - seen[0]).abs().amax(-1) > 1e-3)[:, :-1] & real
    first = int(chosen.nonzero()[0])
    assert moved[:, first:].any() and not moved[:, :first].any()


def windowed_reference(p, mask, window, tau, gain):
    """Per row, the push gain * relu(tau - mean of the last `window` projections of real tokens after the first)."""
    push = torch.zeros_like(p)
    for r in range(p.shape[0]):
        real = mask[r].nonzero().flatten().tolist()
        for j in real:
            prior = [i for i in real[1:] if j - window < i <= j]
            m = p[r, prior].mean() if prior else p[r, j]
            push[r, j] = gain * torch.relu(tau - m)
    return push


@pytest.mark.parametrize("basis", ["raw", "sae"])
def test_windowed_cap_kv_cached_matches_reference(tiny, concept_sae_dir, basis):
    """The windowed cap keeps its last W projections across KV-cached steps, skips left padding and the
    sink, and equals a whole-sequence recomputation by hand; window=1 is the per-token cap exactly."""
    torch.manual_seed(5)
    sae = load_sae(concept_sae_dir)
    v = torch.randn(64) if basis == "raw" else torch.randn(256)
    u = v / v.norm()
    proj = (lambda x: x @ u) if basis == "raw" else (lambda x: sae.encode(x) @ u)
    along = u if basis == "raw" else u @ sae.W_dec
    prompts = ["Hi!", "Could you tell me a long story about a small robot and a cat?"]
    tok = tiny.tokenizer
    pids, att, _ = pad([render(tok, [{"role": "user", "content": p}], True).ids for p in prompts], tok.pad_token_id, side="left")
    with torch.no_grad():
        _, h = run(tiny, pids, capture=HOOK)
    p0 = proj(h)[att.bool()]
    tau, window, gain, n = float(p0.quantile(0.7)), 5, 2.0, 8
    make = ((lambda **k: Cap(HOOK, v, tau, **k)) if basis == "raw"
            else (lambda **k: SAECap(concept_sae_dir, v, tau, **k)))
    one, _ = run(tiny, pids, make(window=1).hooks(tiny))
    every, _ = run(tiny, pids, make().hooks(tiny))
    torch.testing.assert_close(one, every, atol=1e-4, rtol=1e-4)  # equal up to the running sums' rounding
    chunks = []
    cfg = GenerationConfig(max_new_tokens=n, min_new_tokens=n, temperature=0, batch_size=2)
    out = generate(tiny, prompts, cfg, progress=False, fwd_hooks=make(window=window, gain=gain).hooks(tiny)
                   + [(LATER, lambda x, hook: chunks.append(x.detach().clone()) or x)])
    assert unhooked(tiny) and len(chunks) == n
    full = torch.cat([pids, torch.stack([g.ids for g in out])], 1)
    mask = torch.cat([att, torch.ones(2, n, dtype=att.dtype)], 1)
    pushes = []

    def reference(x, hook):
        push = windowed_reference(proj(x), mask.bool(), window, tau, gain)
        pushes.append(push)
        return x + push[..., None] * along
    seen = []
    with torch.no_grad(), tiny.hooks(fwd_hooks=[(HOOK, reference), (LATER, lambda x, hook: seen.append(x) or x)]):
        tiny.original_model(input_ids=full, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    real = mask[:, :-1].bool()
    torch.testing.assert_close(torch.cat(chunks, 1)[real], seen[0][:, :-1][real], atol=2e-4, rtol=1e-4)
    fired = pushes[0][:, :-1][real] > 0
    assert fired.any() and not fired.all()  # the cap did something, and not everywhere


def test_hooks_removed_when_generation_raises(tiny, concept_sae_dir):
    v = torch.randn(64)
    clean = generate(tiny, ["Hello"], GenerationConfig(max_new_tokens=4, temperature=0), progress=False)
    for steer in (Add(HOOK, v, 5.0, positions="generated"), Clamp(concept_sae_dir, {7: 9.0})):
        with pytest.raises(ValueError, match="exceeds the context"):
            with steer.apply(tiny):
                generate(tiny, ["word " * 600], GenerationConfig(max_new_tokens=4), progress=False)
        assert unhooked(tiny)
    with pytest.raises(RuntimeError, match="boom"):
        with Add(HOOK, v).apply(tiny):
            def boom(x, hook):
                raise RuntimeError("boom")
            generate(tiny, ["Hello"], GenerationConfig(max_new_tokens=4), fwd_hooks=[(LATER, boom)], progress=False)
    assert unhooked(tiny)
    again = generate(tiny, ["Hello"], GenerationConfig(max_new_tokens=4, temperature=0), progress=False)
    assert torch.equal(again[0].ids, clean[0].ids)


def test_json_round_trip(tiny, ids, concept_sae_dir, tmp_path):
    torch.manual_seed(4)
    v, axis = torch.randn(64), torch.randn(256)
    items = [Add(HOOK, v, 0.5, positions="generated"), Cap("blocks.2.hook_resid_post", v, 1.5, "ceiling"),
             Ablate(HOOK, v, positions=[1, 3]), Ablate(sae=concept_sae_dir, features=[4]),
             Clamp(concept_sae_dir, {7: 2.0, 9: -1.0}, relative=True, max_activations={7: 3.0, 9: 1.0}),
             Scale(concept_sae_dir, [7], 2.5, positions="prompt"), SAECap(concept_sae_dir, axis, 0.3, "floor"),
             Cap(HOOK, v, 0.5, window=4, gain=3.0), SAECap(concept_sae_dir, axis, 0.3, window=2, gain=0.5)]
    both = Steering(items)
    for x in items + [both]:
        d = json.loads(json.dumps(x.to_dict()))
        y = from_dict(d)
        assert type(y) is type(x) and y.to_dict() == x.to_dict()
        a, _ = run(tiny, ids, x.hooks(tiny))
        b, _ = run(tiny, ids, y.hooks(tiny))
        assert torch.equal(a, b)
    both.save(tmp_path / "steer.json")
    assert load(tmp_path / "steer.json").to_dict() == both.to_dict()
    assert json.loads((tmp_path / "steer.json").read_text())["interventions"][4]["sae"] == concept_sae_dir
    from_obj = Clamp(load_sae(concept_sae_dir), {7: 1.0})  # an SAE loaded from disk remembers its path
    assert from_obj.to_dict()["sae"] == concept_sae_dir


def test_steering_composes_layers_like_nested_contexts(tiny, ids, concept_sae_dir):
    v = torch.randn(64)
    parts = [Add("blocks.0.hook_resid_post", v), Clamp(concept_sae_dir, {7: 4.0}),
             Cap("blocks.2.hook_resid_post", v, 0.0)]
    together, _ = run(tiny, ids, Steering(parts).hooks(tiny))
    with parts[0].apply(tiny), parts[1].apply(tiny), parts[2].apply(tiny):
        nested, _ = run(tiny, ids)
    assert torch.equal(together, nested)
    with Steering(parts).apply(tiny):
        assert not unhooked(tiny)
    assert unhooked(tiny)


def test_bad_input_is_refused_and_model_left_unhooked(tiny, ids, concept_sae_dir, tmp_path):
    clean, _ = run(tiny, ids)
    v = torch.randn(64)
    wrong_layer = random_topk_sae_dir(tmp_path / "deep", hook="blocks.20.hook_resid_post")
    wrong_width = random_topk_sae_dir(tmp_path / "wide", d_in=576)
    cases = [
        (FeatureIdError, "999 is out of range", lambda: Clamp(concept_sae_dir, {999: 1.0}).apply(tiny)),
        (FeatureIdError, "-1 is out of range", lambda: Scale(concept_sae_dir, [-1], 2.0).apply(tiny)),
        (FeatureIdError, "ids are ints", lambda: Scale(concept_sae_dir, [1.5], 2.0)),
        (ValueError, "trained on 'blocks.1",
         lambda: Clamp(concept_sae_dir, {7: 1.0}, hook="blocks.2.hook_resid_post").apply(tiny)),
        (ValueError, "which this model does not have", lambda: Clamp(wrong_layer, {7: 1.0}).apply(tiny)),
        (ValueError, "size 576", lambda: Clamp(wrong_width, {7: 1.0}).apply(tiny)),
        (ValueError, "finite", lambda: Clamp(concept_sae_dir, {7: float("nan")})),
        (ValueError, "finite", lambda: Add(HOOK, v, alpha=float("inf"))),
        (ValueError, "NaN or inf", lambda: Add(HOOK, torch.full((64,), float("nan")))),
        (ValueError, "NaN or inf", lambda: Cap(HOOK, torch.tensor([float("inf")] * 64), 1.0)),
        (ValueError, "size 65", lambda: Add(HOOK, torch.randn(65)).apply(tiny)),
        (ValueError, "feature_axis has size 10", lambda: SAECap(concept_sae_dir, torch.randn(10), 1.0).apply(tiny)),
        (ValueError, "unknown hook", lambda: Add("blocks.9.hook_resid_post", v).apply(tiny)),
        (ValueError, "zero vector", lambda: Ablate(HOOK, torch.zeros(64))),
        (ValueError, "mode", lambda: Cap(HOOK, v, 1.0, mode="both")),
        (ValueError, "window=-2", lambda: Cap(HOOK, v, 1.0, window=-2)),
        (ValueError, "gain=0", lambda: SAECap(concept_sae_dir, torch.randn(256), 1.0, gain=0)),
        (ValueError, "needs positions='all'", lambda: Cap(HOOK, v, 1.0, window=8, positions="generated")),
        (ValueError, "positions", lambda: Add(HOOK, v, positions="answer")),
        (ValueError, "positions", lambda: Add(HOOK, v, positions=[-1])),
        (FileNotFoundError, "not an SAE directory", lambda: Clamp(tmp_path / "nothing", {1: 1.0}).apply(tiny)),
        (ValueError, "Not an intervention", lambda: from_dict({"type": "Rotate"})),
    ]
    for err, msg, make in cases:
        with pytest.raises(err, match=msg):
            with Steering([Add("blocks.0.hook_resid_post", v)]).apply(tiny), make():
                pass
        assert unhooked(tiny), msg
    with pytest.raises(ValueError, match="size 65"):  # a bad part of a composition attaches nothing
        with Steering([Add("blocks.0.hook_resid_post", v), Add(HOOK, torch.randn(65))]).apply(tiny):
            pass
    assert unhooked(tiny)
    after, _ = run(tiny, ids)
    assert torch.equal(after, clean)


@pytest.mark.slow
def test_real_model_generated_positions_and_clamp_identity(smollm, tmp_path):
    """On SmolLM2 at layer 15: cached "generated" steering equals an uncached reference, and a
    no-op feature edit with a randomly initialised SAE of the default shape leaves logits exact."""
    hook = "blocks.15.hook_resid_post"
    sae_dir = random_topk_sae_dir(tmp_path / "sae", hook=hook, d_in=576, d_sae=4608, k=32)
    torch.manual_seed(0)
    v = torch.randn(576)
    v = v / v.norm() * 90.0  # ~0.5x the median token norm there
    steer = Add(hook, v, positions="generated")
    prompts = ["What is your physical form?", "Name a colour."]
    tok = smollm.tokenizer
    pids, att, _ = pad([render(tok, [{"role": "user", "content": p}], True).ids for p in prompts], tok.pad_token_id, side="left")
    P, n = pids.shape[1], 8
    cfg = GenerationConfig(max_new_tokens=n, min_new_tokens=n, temperature=0, batch_size=2)
    with steer.apply(smollm):
        out = generate(smollm, prompts, cfg, progress=False)
    plain = generate(smollm, prompts, cfg, progress=False)
    gen = torch.stack([g.ids for g in out])
    assert gen.tolist() != torch.stack([g.ids for g in plain]).tolist()
    full, mask = torch.cat([pids, gen], 1), torch.cat([att, torch.ones_like(gen)], 1)

    def reference(x, hook):
        y = x.clone()
        y[:, P:] += v
        return y
    with torch.no_grad(), smollm.hooks(fwd_hooks=[(hook, reference)]):
        logits = smollm.original_model(input_ids=full, attention_mask=mask,
                                       position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    assert torch.equal(logits[:, P - 1:-1].argmax(-1), gen)
    ids = full[:1, :P]
    with torch.no_grad():
        clean = smollm(ids)
        with Scale(sae_dir, [0, 1, 2], 1.0).apply(smollm):
            same = smollm(ids)
        with Clamp(sae_dir, {5: 50.0}).apply(smollm):
            moved = smollm(ids)
    assert torch.equal(clean, same) and (moved - clean).abs().max() > 1e-2
    assert unhooked(smollm)


@pytest.mark.parametrize("b_dec_in,rescale,hooked", [(False, False, False), (True, True, False), (True, False, True)])
def test_feature_reader_equals_sae_encode(b_dec_in, rescale, hooked):
    """The clamp's lean TopK read (and its fallback) gives exactly what sae.encode gives."""
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    from saes.access import _plain_topk, feature_reader

    torch.manual_seed(3)
    sae = TopKSAE(TopKSAEConfig(d_in=64, d_sae=256, k=8, apply_b_dec_to_input=b_dec_in,
                                rescale_acts_by_decoder_norm=rescale)).eval()
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.W_dec.mul_(torch.rand(256, 1) + 0.5)  # unequal decoder norms, so rescaling matters
    if hooked:  # somebody edits the SAE's pre-activations: the lean path must step aside
        sae.hook_sae_acts_pre.add_hook(lambda x, hook: x * 2)
    assert _plain_topk(sae) == (not hooked)
    x = torch.randn(3, 50, 64) * 4
    full = sae.encode(x)
    idx = torch.tensor(sorted(set(full[..., :].nonzero()[:, -1].tolist()))[:20] + [0, 255])
    got = feature_reader(sae, idx)(x)
    assert got.shape == (3, 50, len(idx))
    assert (got > 0).sum() > 20  # the chosen features do fire
    torch.testing.assert_close(got, full[..., idx], atol=1e-5, rtol=1e-5)
    std = StandardSAE(StandardSAEConfig(d_in=64, d_sae=256)).eval()
    assert not _plain_topk(std)
    torch.testing.assert_close(feature_reader(std, idx)(x), std.encode(x)[..., idx])


def hysteresis_reference(p, valid, on, engage, release):
    """The floor switch token by token: on past `engage`, off once back at `release`."""
    out = torch.zeros_like(p, dtype=torch.bool)
    for r in range(p.shape[0]):
        state = bool(on[r])
        for j in range(p.shape[1]):
            if valid[r, j] and p[r, j] < engage:
                state = True
            elif valid[r, j] and p[r, j] >= release:
                state = False
            out[r, j] = state
    return out


def test_hysteresis_matches_a_token_loop_across_chunks():
    from steering.window import hysteresis

    torch.manual_seed(0)
    p, valid = torch.randn(4, 30), torch.rand(4, 30) > 0.2
    on0 = torch.tensor([False, True, False, True])
    ref = hysteresis_reference(p, valid, on0, -0.5, 0.7)
    whole, last = hysteresis(p, valid, on0, -0.5, 0.7, "floor")
    assert torch.equal(whole, ref) and torch.equal(last, ref[:, -1])
    a, mid = hysteresis(p[:, :11], valid[:, :11], on0, -0.5, 0.7, "floor")  # a KV-cached split
    b, _ = hysteresis(p[:, 11:], valid[:, 11:], mid, -0.5, 0.7, "floor")
    assert torch.equal(torch.cat([a, b], 1), ref)
    assert ref.any() and not ref.all()
    ceil, _ = hysteresis(-p, valid, on0, 0.5, -0.7, "ceiling")  # the mirror image
    assert torch.equal(ceil, ref)


@pytest.mark.parametrize("basis", ["raw", "sae"])
def test_conditional_cap(tiny, ids, concept_sae_dir, basis):
    """trigger=tau acts where the plain cap does (the sink aside: a switch never engages on it); a
    trigger below every measure never acts; in between it acts on fewer tokens than the plain cap;
    KV-cached generation carries the switch exactly."""
    from axis.capping import CapMonitor

    torch.manual_seed(3)
    v = torch.randn(64) if basis == "raw" else torch.randn(256)
    make = ((lambda **k: Cap(HOOK, v, **k)) if basis == "raw" else (lambda **k: SAECap(concept_sae_dir, v, **k)))
    _, h = run(tiny, ids, capture=HOOK)
    cap0 = make(tau=0.0)
    p = cap0.bind(tiny)[1].measurer(torch.device("cpu"), torch.float32)(h)[0, 1:]
    tau, low = float(p.quantile(0.8)), float(p.quantile(0.3))
    def fired(c):
        mon = CapMonitor([c])
        run(tiny, ids, mon.hooks(tiny, Steering([c])))
        return mon.active[HOOK][0, 1:]
    for window in (0, 3):
        assert torch.equal(fired(make(tau=tau, window=window)), fired(make(tau=tau, window=window, trigger=tau)))
    clean, _ = run(tiny, ids)
    never, _ = run(tiny, ids, make(tau=tau, trigger=float(p.min()) - 10).hooks(tiny))
    assert torch.equal(never, clean)
    some, every = fired(make(tau=tau, trigger=low)), fired(make(tau=tau))
    assert some.any() and some.sum() < every.sum() and not (some & ~every).any()
    with pytest.raises(ValueError, match="trigger=.*must lie at or below tau"):
        make(tau=0.0, trigger=1.0)
    with pytest.raises(ValueError, match="needs positions='all'"):
        make(tau=0.0, trigger=-1.0, positions="generated")
    # KV-cached: the switch state carries across decoding steps (one prompt: no padding)
    cap = make(tau=tau, trigger=low, gain=3.0)
    cfg = GenerationConfig(max_new_tokens=8, min_new_tokens=8, temperature=0, batch_size=1)
    steps = []
    out = generate(tiny, [[{"role": "user", "content": "Tell me about the weather today."}]], cfg, progress=False,
                   fwd_hooks=cap.hooks(tiny) + [(LATER, lambda x, hook: steps.append(x.detach().clone()) or x)])
    full = torch.cat([ids, out[0].ids[None]], 1)
    _, whole = run(tiny, full, cap.hooks(tiny))
    torch.testing.assert_close(torch.cat(steps, 1)[0], whole[0, :-1], atol=2e-4, rtol=1e-4)
