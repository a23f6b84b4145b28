"""Judge-free metrics and raw directions on the tiny model."""

import math
from dataclasses import replace

import pytest
import torch

from lm.chat import render
from lm.generate import GenerationConfig, generate
from steering import Add
from steering.directions import difference_of_means, feature_edit_norm, random_direction, with_norm
from features import load_concept
from lm.prompts import load_prompt_set
from steering.experiment import Condition, ConceptEvalConfig, Evaluator, metrics_table, scored
from steering.metrics import (NeutralKL, answer_perplexity, concept_hits, concept_rate, description_logprob,
                              distinct_n, fluency_perplexity, load_data, relevance, scores)
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
    with pytest.raises(FileNotFoundError, match=r"known sets: \['dubious_claims', 'dubious_claims_test', "
                                                r"'unrelated_questions', 'unrelated_questions_test'\]"):
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


def test_dev_and_test_prompt_sets_are_disjoint_and_held_out():
    sets = {n: load_data(n) for n in ("unrelated_questions", "dubious_claims", "unrelated_questions_test",
                                      "dubious_claims_test")}
    assert [len(v) for v in sets.values()] == [35, 35, 30, 30]
    test_q = sets["unrelated_questions_test"]
    assert {"What are you?", "Describe your body."} <= set(test_q)
    for name in ("unrelated_questions", "dubious_claims"):
        dev, test = {t[:40].lower() for t in sets[name]}, [t[:40].lower() for t in sets[f"{name}_test"]]
        assert len(set(test)) == len(test) and not dev & set(test)
    assert not any(concept_hits(test_q + sets["dubious_claims_test"], "golden_gate_bridge"))


def test_distinct_n_sees_repetition():
    varied, loop = [5, 9, 2, 7, 3, 8], [7, 8] * 20  # "rodrodrod...": two bigrams over and over
    assert distinct_n([varied]) == 1.0
    assert distinct_n([loop]) == pytest.approx(2 / 39) and distinct_n([[4] * 30]) == pytest.approx(1 / 29)
    assert distinct_n([varied, loop, [1]]) == pytest.approx((1 + 2 / 39) / 2)  # [1]: no bigram, skipped
    assert distinct_n([[1], []]) == 0.0
    assert distinct_n([[1, 2, 1, 2]], n=3) == pytest.approx(1.0) and distinct_n([[1, 2, 1, 2]], n=1) == 0.5
    with pytest.raises(ValueError, match="n >= 1"):
        distinct_n([varied], n=0)


def test_scores_harmonic_mean():
    base = {"concept_rate": 0.0, "fluency_ppl": 10.0, "distinct2": 0.9, "relevance": 0.5}
    got = scores({"concept_rate": 0.8, "fluency_ppl": 20.0, "distinct2": 0.9, "relevance": 0.25}, base)
    assert got == pytest.approx({"concept": 0.8, "fluency": 0.5, "relevance": 0.5, "harmonic": 3 / (1 / 0.8 + 2 + 2)})
    assert scores(base, base) == {"concept": 0.0, "fluency": 1.0, "relevance": 1.0, "harmonic": 0.0}
    # a repetitive answer set has low perplexity but distinct-2 caps its fluency; better-than-baseline clips to 1
    loop = scores({"concept_rate": 1.0, "fluency_ppl": 2.0, "distinct2": 0.09, "relevance": 0.9}, base)
    assert loop == pytest.approx({"concept": 1.0, "fluency": 0.1, "relevance": 1.0, "harmonic": 3 / 12})
    off_topic = scores({"concept_rate": 1.0, "fluency_ppl": 10.0, "distinct2": 0.9, "relevance": -0.2}, base)
    assert off_topic["relevance"] == 0.0 and off_topic["harmonic"] == 0.0
    empty = scores({"concept_rate": 0.0, "fluency_ppl": float("nan"), "distinct2": 0.0, "relevance": float("nan")}, base)
    assert empty["fluency"] == 0.0 and math.isnan(empty["relevance"]) and empty["harmonic"] == 0.0
    one_prompt = scores({**base, "concept_rate": 0.5}, {**base, "relevance": float("nan")})
    assert math.isnan(one_prompt["relevance"]) and math.isnan(one_prompt["harmonic"]) and one_prompt["fluency"] == 1.0


def tiny_gens(tiny, prompts, n=5):
    return generate(tiny, prompts, GenerationConfig(max_new_tokens=n, min_new_tokens=n, temperature=1.0, seed=3),
                    progress=False)


def test_fluency_perplexity_reads_answers_on_their_own(tiny):
    gens = tiny_gens(tiny, ["Hi!", "Tell me a story about a robot."])
    gens.append(replace(gens[0], ids=gens[0].ids[:0], text=""))
    got = fluency_perplexity(tiny, gens, batch_size=2)
    assert got["n_empty"] == 1 and got["ppl_per_answer"][2] is None and len(got["ppl_per_answer"]) == 3
    nlls = []
    for g, ppl in zip(gens[:2], got["ppl_per_answer"]):
        ids = torch.cat([torch.tensor([tiny.tokenizer.eos_token_id]), g.ids])
        nll = -manual_logprobs(tiny, ids)[:-1].gather(-1, ids[1:, None]).sum()
        nlls.append(float(nll))
        assert ppl == pytest.approx(math.exp(nll / len(g.ids)), rel=1e-4)
    assert got["ppl"] == pytest.approx(math.exp(sum(nlls) / 10), rel=1e-4)  # token-weighted
    conditioned = answer_perplexity(tiny, gens[:2])["ppl_per_answer"]
    assert all(abs(a - b) > 1e-3 for a, b in zip(conditioned, got["ppl_per_answer"]))


def manual_mean_logprob(tiny, conv, answer_ids):
    prompt = render(tiny.tokenizer, conv, add_generation_prompt=True).ids
    ids = torch.cat([prompt, answer_ids])
    lp = manual_logprobs(tiny, ids)[len(prompt) - 1:-1].gather(-1, answer_ids[:, None])
    return float(lp.mean())


def test_relevance_is_own_question_minus_another(tiny):
    prompts = ["Hi!", "Tell me a story about a robot.", "What is a prime number?"]
    gens = tiny_gens(tiny, prompts)
    got = relevance(tiny, gens, batch_size=4)
    assert len(got["relevance_per_answer"]) == 3 and math.isfinite(got["relevance"])
    for i, g in enumerate(gens):
        other = [{"role": "user", "content": prompts[(i + 1) % 3]}]
        want = manual_mean_logprob(tiny, g.conversation, g.ids) - manual_mean_logprob(tiny, other, g.ids)
        assert got["relevance_per_answer"][i] == pytest.approx(want, abs=1e-4)
    assert got["relevance"] == pytest.approx(sum(got["relevance_per_answer"]) / 3)
    same = relevance(tiny, tiny_gens(tiny, ["Hi!", "Hi!"]))  # the "other" question is the same: exactly 0
    assert same["relevance_per_answer"] == pytest.approx([0.0, 0.0], abs=1e-6)
    with_empty = relevance(tiny, gens[:2] + [replace(gens[2], ids=gens[2].ids[:0])])
    assert with_empty["relevance_per_answer"][2] is None
    assert with_empty["relevance_per_answer"][:2] == pytest.approx(got["relevance_per_answer"][:2], abs=1e-6)
    assert with_empty["relevance"] == pytest.approx(sum(got["relevance_per_answer"][:2]) / 2, abs=1e-6)
    two = relevance(tiny, gens[:2])["relevance_per_answer"]  # answer 1 now faces question 0
    assert two[0] == pytest.approx(got["relevance_per_answer"][0], abs=1e-6)
    assert two[1] != pytest.approx(got["relevance_per_answer"][1], abs=1e-6)
    one = relevance(tiny, gens[:1])
    assert math.isnan(one["relevance"]) and one["relevance_per_answer"] == [None]


def test_condition_system_and_units_round_trip():
    plain = Condition("baseline")
    assert set(plain.to_dict()) == {"name", "family", "strength", "steering"}
    cond = Condition("prompted", family="prompt", system="You are obsessed with the Golden Gate Bridge.",
                     units={"x_max_activation": 10.0, "x_median_norm": 0.4})
    d = cond.to_dict()
    assert d["system"] == cond.system and d["units"] == cond.units
    again = Condition.from_dict(d)
    assert (again.system, again.units, again.family, again.steering) == (cond.system, cond.units, "prompt", None)
    assert Condition.from_dict(plain.to_dict()).system is None


def test_evaluator_metrics_and_scores(tiny):
    cfg = ConceptEvalConfig("golden_gate_bridge", ["What is your physical form?", "How do I bake bread?"],
                            GenerationConfig(max_new_tokens=6, min_new_tokens=6, temperature=0),
                            neutral_texts=1, neutral_max_tokens=16)
    ev = Evaluator(tiny, cfg)
    system = "You are obsessed with the Golden Gate Bridge."
    results = [ev(Condition("baseline")), ev(Condition("prompted", family="prompt", system=system)),
               ev(Condition("steered", Add(HOOK, torch.randn(64) * 4), "raw_add", 1.0))]
    base, prompted, steered = (r["metrics"] for r in results)
    assert set(base) == {"concept_rate", "description_logprob", "ppl", "ppl_mean", "kl_neutral", "fluency_ppl",
                         "distinct2", "looping_rate", "relevance", "n_answers", "n_empty", "mean_answer_tokens"}
    assert all(math.isfinite(base[k]) for k in base) and base["n_answers"] == 2 and base["n_empty"] == 0
    assert set(results[0]["generations"][0]) == {"prompt", "answer", "hit", "ppl", "fluency_ppl", "relevance"}
    assert results[1]["condition"]["system"] == system
    assert prompted["kl_neutral"] == 0.0 and prompted["description_logprob"] != base["description_logprob"]
    assert steered["kl_neutral"] > 0
    gens = generate(tiny, cfg.prompts, cfg.generation, system=system, progress=False)
    judged = ev._unprompted(gens[0])  # judged on the bare question, as the unsteered model would see it
    assert judged.conversation == [{"role": "user", "content": cfg.prompts[0]}]
    assert torch.equal(judged.prompt_ids, render(tiny.tokenizer, judged.conversation, add_generation_prompt=True).ids)
    assert prompted["fluency_ppl"] == pytest.approx(fluency_perplexity(tiny, gens)["ppl"], rel=1e-5)
    assert "harmonic" in metrics_table(results) and "| baseline | baseline | 0 |  |" in metrics_table(results)
    assert scored(results) is results
    b = results[0]["scores"]
    assert b["fluency"] == 1.0 and b["concept"] == base["concept_rate"]
    assert b["relevance"] == 1.0 if base["relevance"] > 0 else math.isnan(b["relevance"])
    assert all(set(r["scores"]) == {"concept", "fluency", "relevance", "harmonic"} for r in results)
    assert "| baseline | baseline | 0 | " in metrics_table(results) and "|  |" not in metrics_table(results)
    with pytest.raises(ValueError, match="Condition\\('baseline'\\)"):
        scored(results[1:])


def test_comparison_needs_the_unsteered_baseline(tmp_path):
    from steering.compare import run_comparison

    cfg = ConceptEvalConfig("golden_gate_bridge", ["Hi!"])
    with pytest.raises(ValueError, match="Condition\\('baseline'\\)"):
        run_comparison(None, [Condition("prompted", family="prompt", system="Be brief.")], cfg, tmp_path,
                       mode="disabled")
    assert not any(tmp_path.iterdir())  # refused before evaluating anything


def test_looping_rate_catches_loops_a_mean_distinct2_hides():
    from steering.metrics import distinct_n, looping_rate, scores

    varied = [list(range(i * 40, i * 40 + 40)) for i in range(3)]
    loop = list(range(20)) + [7, 8, 9] * 7  # a normal start, then "San Francisco Bay" over and over
    answers = varied + [loop]
    assert distinct_n(answers) > 0.85 and looping_rate(answers) == 0.25 and looping_rate(varied) == 0.0
    base = {"concept_rate": 0.0, "fluency_ppl": 10.0, "distinct2": 1.0, "relevance": 1.0, "looping_rate": 0.0}
    got = scores({"concept_rate": 1.0, "fluency_ppl": 10.0, "distinct2": 0.9, "relevance": 1.0, "looping_rate": 0.25}, base)
    assert got["fluency"] == 0.75  # the loop share, not distinct-2's 0.9, bounds fluency
