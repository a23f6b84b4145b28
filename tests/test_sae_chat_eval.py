"""Chat evaluation of SAEs: held-out whole conversations, FVU with massive activations counted apart,
CE recovered with the splice at ordinary tokens only, and the quality bar."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sae_lens.evals import ExplainedVarianceCalculator

from lm.harvest import forward_batch
from lm.io import write_json
from lm.text import pack, token_sequences
from saes.access import load_sae
from saes.chat_eval import ChatEvalConfig, evaluate_chats, quality_bar
from saes.config import resolve
from saes.data import heldout_conversations, split_rows
from saes.eval import evaluate_dir
from saes.io import save_sae
from tests.helpers import HOOK, identity_sae


def old_split_rows(cfg, tokenizer, heldout_only=False):
    """split_rows as it was before the split moved into saes.data._split_indices (verbatim)."""
    rows = pack(token_sequences(cfg.data, tokenizer), cfg.context_size)
    order = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(cfg.seed))
    n_eval = -(-cfg.eval_tokens // cfg.tokens_per_row)
    if n_eval >= rows.shape[0]:
        raise ValueError("too few rows")
    if heldout_only:
        return rows[order[:n_eval]], None
    train = order[n_eval:]
    if cfg.data_mode == "cached":
        per_shard = -(-cfg.harvest_tokens // (cfg.tokens_per_row * cfg.data_shards))
        train = train[: per_shard * cfg.data_shards]
        if len(train) < per_shard * cfg.data_shards:
            raise ValueError("do not fit")
    if len(train) == 0:
        raise ValueError("no rows left")
    return rows[order[:n_eval]], rows[train]


# ~30% of the default corpus's rows trained on, so about a quarter of its chats are held out
CACHED = dict(context_size=128, harvest_tokens=300_000, eval_tokens=2_000)


@pytest.mark.parametrize("over", [{}, CACHED, dict(CACHED, data_mode="stream", eval_tokens=200_000), dict(seed=3)])
def test_split_rows_unchanged(tiny, over):
    cfg = resolve("tiny", **over)
    for heldout_only in (False, True):
        new, old = split_rows(cfg, tiny.tokenizer, heldout_only), old_split_rows(cfg, tiny.tokenizer, heldout_only)
        assert torch.equal(new[0], old[0])
        assert (new[1] is None and old[1] is None) or torch.equal(new[1], old[1])


def _check_heldout(cfg, tokenizer, seqs):
    """heldout_conversations holds out exactly the conversations whose rows (found by their contents)
    include no training row of split_rows; returns how many it held out."""
    rows = pack(seqs, cfg.context_size)
    trained_rows = {r.numpy().tobytes() for r in split_rows(cfg, tokenizer)[1]}
    trained = [r.numpy().tobytes() in trained_rows for r in rows]
    held = heldout_conversations(cfg, tokenizer)
    j, got = 0, set()  # held is a subsequence of seqs, in corpus order: find each one's index
    for i, s in enumerate(seqs):
        if j < len(held) and np.array_equal(held[j], s):
            got.add(i)
            j += 1
    assert j == len(held)
    a = 0
    for i, s in enumerate(seqs):
        b = a + len(s)
        touched = [r for r in range(a // cfg.context_size, (b - 1) // cfg.context_size + 1) if r < len(rows)]
        assert (not any(trained[r] for r in touched) and len(s) >= 2) == (i in got), (i, touched)
        a = b
    assert [x.tolist() for x in heldout_conversations(cfg, tokenizer, 3)] == [x.tolist() for x in held[:3]]
    return len(held)


@pytest.mark.parametrize("over", [CACHED, dict(CACHED, data_mode="stream", eval_tokens=400_000)])
def test_heldout_conversations_share_no_token_with_a_training_row(tiny, over):
    cfg = resolve("tiny", **over)
    seqs = token_sequences(cfg.data, tiny.tokenizer)
    assert 10 < _check_heldout(cfg, tiny.tokenizer, seqs) < len(seqs)


def test_heldout_conversations_at_the_tail_and_too_short(tiny, monkeypatch):
    import saes.data

    rng = np.random.default_rng(0)
    lengths = list(rng.integers(1, 12, 40))
    lengths.append(8 - sum(lengths) % 8 + 1)  # the rest ends 1 token into a row ...
    lengths.append(2)  # ... so this chat lies wholly in the dropped tail
    flat = np.arange(sum(lengths), dtype=np.int64) + 1000  # every row's contents unique
    seqs = np.split(flat, np.cumsum(lengths)[:-1])
    monkeypatch.setattr(saes.data, "token_sequences", lambda source, tokenizer: seqs)
    cfg = resolve("tiny", data="synthetic", context_size=8, eval_tokens=14, harvest_tokens=56)
    n = _check_heldout(cfg, tiny.tokenizer, seqs)
    held = heldout_conversations(cfg, tiny.tokenizer)
    assert 0 < n < len(seqs) and np.array_equal(held[-1], seqs[-1]) and all(len(s) >= 2 for s in held)
    assert any(len(s) == 1 for s in seqs)


@pytest.fixture(scope="module")
def chats(tiny):
    return heldout_conversations(resolve("tiny"), tiny.tokenizer, 5)


def test_identity_sae_reconstructs_chats(tiny, chats):
    m = evaluate_chats(identity_sae(), tiny, chats, batch_size=2, progress=False)
    assert m["n_chats"] == 5 and m["n_tokens"] == sum(map(len, chats)) and m["n_predictions"] == m["n_tokens"] - 5
    assert m["n_massive"] == 0 and m["n_ordinary"] == m["n_tokens"]  # the random tiny model has no massive token
    assert m["fvu_all_tokens"] < 1e-6 and m["fvu_ordinary_tokens"] < 1e-6 and m["fvu_massive_tokens"] is None
    assert m["l0_ordinary"] == 64 and abs(m["ce_loss_recovered"] - 1) < 1e-6
    assert m["massive_threshold"] == pytest.approx(10 * m["median_norm"])
    assert m["chat_eval_config"] == {"n_chats": 5, "massive_factor": 10.0, "batch_size": 2}
    one = evaluate_chats(identity_sae(), tiny, chats, batch_size=1, progress=False)  # padding changes nothing
    assert one["ce_loss_clean"] == pytest.approx(m["ce_loss_clean"], rel=1e-5)
    assert one["ce_loss_zero_ablation"] == pytest.approx(m["ce_loss_zero_ablation"], rel=1e-5)
    assert one["median_norm"] == pytest.approx(m["median_norm"], rel=1e-5)


def boost(x, hook):
    """A massive activation at position 0, as SmolLM2's attention sink (norm ~150x the median)."""
    x = x.clone()
    x[:, 0] *= 1000
    return x


def _fvu(pairs):
    ev = ExplainedVarianceCalculator()
    for x, r in pairs:
        ev.add_batch(sae_output=r, hidden_acts=x)
    return 1 - ev.compute()


def test_massive_tokens_are_counted_and_left_out(tiny, chats, topk_sae_dir):
    sae = load_sae(topk_sae_dir)
    with tiny.hooks(fwd_hooks=[(HOOK, boost)]):  # added first, so it runs before evaluate_chats' hooks
        m = evaluate_chats(sae, tiny, chats, batch_size=2, progress=False)
        xs = [forward_batch(tiny, torch.as_tensor(s)[None], [HOOK])[HOOK][0] for s in chats]
    assert m["n_massive"] == 5 and m["massive_positions"] == {"0": 5, "1": 0, "other": 0}
    assert m["n_ordinary"] == m["n_tokens"] - 5
    with torch.no_grad():
        pairs = [(x, sae.decode(sae.encode(x))) for x in xs]
    assert m["fvu_ordinary_tokens"] == pytest.approx(_fvu([(x[1:], r[1:]) for x, r in pairs]), rel=1e-4)
    assert m["fvu_all_tokens"] == pytest.approx(_fvu(pairs), rel=1e-4)
    assert m["fvu_massive_tokens"] == pytest.approx(_fvu([(x[:1], r[:1]) for x, r in pairs]), rel=1e-4)
    plain = evaluate_chats(sae, tiny, chats, batch_size=2, progress=False)
    assert plain["n_massive"] == 0 and plain["fvu_ordinary_tokens"] == plain["fvu_all_tokens"]


def test_zero_sae_ablates_ordinary_tokens_only(tiny, chats):
    with tiny.hooks(fwd_hooks=[(HOOK, boost)]):
        m = evaluate_chats(identity_sae(zero=True), tiny, chats, batch_size=3, progress=False)

        def ablate(x, hook):  # by hand: zero every position but the massive one
            x = x.clone()
            x[:, 1:] = 0
            return x

        total = 0.0
        with torch.no_grad(), tiny.hooks(fwd_hooks=[(HOOK, ablate)]):
            for s in chats:
                ids = torch.as_tensor(s)[None]
                total += F.cross_entropy(tiny(ids)[0, :-1], ids[0, 1:], reduction="sum").item()
    assert m["ce_loss_with_sae"] == pytest.approx(m["ce_loss_zero_ablation"], rel=1e-6)
    assert m["ce_loss_zero_ablation"] == pytest.approx(total / m["n_predictions"], rel=1e-4)
    assert abs(m["ce_loss_recovered"]) < 1e-6


def test_evaluate_chats_refuses_bad_input(tiny, chats):
    with pytest.raises(ValueError, match="no conversations"):
        evaluate_chats(identity_sae(), tiny, [], progress=False)
    with pytest.raises(ValueError, match="conversation 1 is not a 1-D sequence of >= 2 tokens"):
        evaluate_chats(identity_sae(), tiny, [chats[0], np.array([5])], progress=False)
    with pytest.raises(ValueError, match="factor > 1"):
        evaluate_chats(identity_sae(), tiny, chats[:1], massive_factor=0.5, progress=False)
    with pytest.raises(ValueError, match="d_in is 32 but blocks.1.hook_resid_post has width 64"):
        evaluate_chats(identity_sae(32), tiny, chats[:1], progress=False)


def test_quality_bar():
    good = {"dead_fraction": 0.05, "chats": {"fvu_ordinary_tokens": 0.12, "ce_loss_recovered": 0.96}}
    bar = quality_bar(good)
    assert bar["pass"] and set(bar["checks"]) == {"fvu_ordinary", "ce_loss_recovered", "dead_fraction"}
    assert bar["checks"]["fvu_ordinary"] == {"metric": "chats.fvu_ordinary_tokens", "value": 0.12, "op": "<=",
                                             "threshold": 0.15, "pass": True}
    worse = (("fvu_ordinary_tokens", 0.16), ("ce_loss_recovered", 0.94), ("ce_loss_recovered", float("nan")))
    for path, value in worse:
        bad = quality_bar({**good, "chats": {**good["chats"], path: value}})
        assert not bad["pass"] and [k for k, c in bad["checks"].items() if not c["pass"]] == [
            "fvu_ordinary" if path.startswith("fvu") else "ce_loss_recovered"]
    assert not quality_bar({**good, "dead_fraction": 0.10})["checks"]["dead_fraction"]["pass"]  # strictly below
    missing = quality_bar({"dead_fraction": 0.0, "chats": {"skipped": "none held out"}})
    assert not missing["pass"] and missing["checks"]["fvu_ordinary"]["value"] is None
    json.dumps(bar)


def test_evaluate_dir_and_command_report_chats(tiny, tmp_path, capsys):
    from steerlens.cli import run_command

    text = tmp_path / "t.txt"
    text.write_text("\n\n".join(f"Chat {i}: the user asks about cats, dogs and the sea at length." for i in range(300)))
    sae_dir = tmp_path / "sae"
    tc = {"model": "tiny", "data": str(text), "context_size": 16, "eval_tokens": 120, "harvest_tokens": 960,
          "data_shards": 2}
    save_sae(identity_sae(), sae_dir, extra_json={"train_config.json": tc})
    m, _ = evaluate_dir(sae_dir, tiny, chats=ChatEvalConfig(n_chats=6), progress=False)
    assert m["chats"]["n_chats"] == 6 and m["chats"]["fvu_ordinary_tokens"] < 1e-6
    assert "sharing no token with a training row" in m["chats"]["source"]
    assert set(m["quality_bar"]["checks"]) == {"fvu_ordinary", "ce_loss_recovered", "dead_fraction"}
    other = tmp_path / "other.txt"
    other.write_text("\n\n".join(f"Another text {i} about trees." for i in range(10)))
    m, _ = evaluate_dir(sae_dir, tiny, chats=ChatEvalConfig(n_chats=4), chats_from=str(other), progress=False)
    assert m["chats"]["n_chats"] == 4 and "--chats-from" in m["chats"]["source"]

    write_json(sae_dir / "metrics.json", {"training": {"steps": 3}, "fvu": 9.0})
    out = run_command("eval", [str(sae_dir), "--model", "tiny", "--chats", "3", "--update-metrics"])
    saved = json.loads((sae_dir / "metrics.json").read_text())
    assert saved == out and saved["training"] == {"steps": 3} and saved["fvu"] < 1e-6
    assert saved["chats"]["n_chats"] == 3 and "quality_bar" in saved and (sae_dir / "density.png").is_file()
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == saved
    assert not (sae_dir / "eval.json").exists()
