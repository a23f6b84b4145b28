"""Judge-free metrics and raw directions on the tiny model."""

import math

import pytest
import torch

from lm.chat import render
from lm.generate import GenerationConfig, generate
from steering import Add
from steering.directions import difference_of_means, feature_edit_norm, random_direction, with_norm
from features import load_concept
from lm.prompts import load_prompt_set
from steering.metrics import (NeutralKL, answer_perplexity, concept_hits, concept_rate, description_logprob,
                              load_data)
from tests.helpers import HOOK


def test_concept_keywords():
    texts = ["I am the Golden Gate, glowing in the fog.", "Bake the bread at 220 C.",
             "The Bay Bridge is grey.", "An abridged version.", "GOLDEN GATE!"]
    assert concept_hits(texts, "golden_gate_bridge") == [True, False, True, False, True]
    assert concept_rate(texts, "golden_gate_bridge") == pytest.approx(0.6)
    syc = ["What a brilliant idea, you're truly a genius!", "No, 2 + 2 is 4."]
    assert concept_hits(syc, "sycophantic_praise") == [True, False]
    with pytest.raises(FileNotFoundError, match="known concepts"):
        load_concept("no_such_concept")
    with pytest.raises(ValueError, match="at least one"):
        concept_rate([], "golden_gate_bridge")
    assert len(load_data("unrelated_questions")) >= 21 and load_data("unrelated_questions")[0] == "What is your physical form?"


def test_prompt_sets_are_read_through_their_package_loader():
    neutral = load_prompt_set("neutral_text")
    assert len(neutral) >= 40 and all(isinstance(t, str) for t in neutral)
    with pytest.raises(FileNotFoundError, match=r"known sets: \['dubious_claims', 'unrelated_questions'\]"):
        load_data("neutral_text")  # shared sets live in lm/data/, not steering/data/
    with pytest.raises(FileNotFoundError, match=r"known sets: \[.neutral_text.\]"):
        load_prompt_set("unrelated_questions")


def manual_logprobs(model, ids):
    with torch.no_grad():
        return model.original_model(input_ids=ids[None]).logits[0].float().log_softmax(-1)


def test_answer_perplexity_matches_manual(tiny):
    gens = generate(tiny, ["Hi!", "Tell me a story about a robot."],
                    GenerationConfig(max_new_tokens=5, temperature=1.0, seed=3), progress=False)
    got = answer_perplexity(tiny, gens)
    for g, ppl in zip(gens, got["ppl_per_answer"]):
        ids = torch.cat([g.prompt_ids, g.ids])
        lp = manual_logprobs(tiny, ids)
        start = len(g.prompt_ids)
        nll = -lp[start - 1:-1].gather(-1, ids[start:, None]).sum()
        assert ppl == pytest.approx(math.exp(nll / len(g.ids)), rel=1e-4)
    assert got["n_empty"] == 0 and got["ppl"] > 1


def test_description_logprob_scores_the_reply_as_generated_tokens(tiny):
    concept = load_concept("golden_gate_bridge")
    conv = [{"role": "user", "content": "Tell me about something."}, {"role": "assistant", "content": concept["description"]}]
    r = render(tiny.tokenizer, conv)
    lp = manual_logprobs(tiny, r.ids)
    keep = r.response_mask[1:]
    manual = lp[:-1].gather(-1, r.ids[1:, None])[:, 0][keep].mean()
    clean = description_logprob(tiny, concept)
    assert clean == pytest.approx(float(manual), abs=1e-4)
    v = torch.randn(64) * 3
    first = int(r.response_mask.nonzero()[0])
    generated = description_logprob(tiny, concept, Add(HOOK, v, positions="generated").hooks(tiny))
    explicit = description_logprob(tiny, concept, Add(HOOK, v, positions=list(range(first, len(r.ids)))).hooks(tiny))
    assert generated == pytest.approx(explicit, abs=1e-6) and abs(generated - clean) > 1e-3


def test_neutral_kl(tiny):
    kl = NeutralKL(tiny, load_prompt_set("neutral_text")[:3], max_tokens=32)
    v = torch.randn(64)
    assert kl() == 0.0
    small, big = kl(Add(HOOK, v, 1.0).hooks(tiny)), kl(Add(HOOK, v, 8.0).hooks(tiny))
    assert 0 < small < big
    assert kl(Add(HOOK, v, 8.0, positions="generated").hooks(tiny)) == 0.0  # no generated tokens in plain text


def test_directions(tiny):
    pos, neg = ["The Golden Gate Bridge in fog.", "San Francisco's famous bridge."], ["Bread needs yeast.", "Cats sleep a lot."]
    d = difference_of_means(tiny, HOOK, pos, neg)

    def mean(texts):
        acts = []
        for t in texts:
            ids = torch.tensor(tiny.tokenizer(t, add_special_tokens=False)["input_ids"])[None]
            with torch.no_grad():
                _, cache = tiny.run_with_cache(ids, names_filter=[HOOK])
            acts.append(cache[HOOK][0, 1:])  # first token (attention sink) excluded
        return torch.cat(acts).mean(0)
    torch.testing.assert_close(d, mean(pos) - mean(neg), atol=1e-4, rtol=1e-4)
    assert with_norm(d, 3.0).norm() == pytest.approx(3.0)
    r = random_direction(64, seed=1)
    assert torch.equal(r, random_direction(64, seed=1)) and r.norm() == pytest.approx(1.0)

    class Cfg:
        rescale_acts_by_decoder_norm = False

    class FakeSAE:
        W_dec = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
        cfg = Cfg()
    assert feature_edit_norm(FakeSAE, 0, -2.0) == pytest.approx(10.0)
