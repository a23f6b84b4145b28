"""Judge-free evaluation pieces used by scripts/cap.py, checked against independent computations."""

import pytest
import torch

from lm.chat import render

from axis.data import load_jailbreak_replies
from axis.evals import NeutralKL, identity_rates, mc_accuracy, refusal_log_odds, refusal_rate, response_nll, text_nll
from lm.io import read_json, write_json


def bridge_logprobs(model, ids):
    """Reference: the TransformerBridge's own forward (not the fast path the evals use)."""
    with torch.no_grad():
        return model(ids[None]).float().log_softmax(-1)[0]


def test_identity_and_refusal_rates():
    texts = ["I am an AI assistant made by Hugging Face.", "I was born in Lisbon and my father was a baker.",
             "As an AI I have no body, but my father taught me to sail.", "Blue is a colour."]
    r = identity_rates(texts)
    assert r["labels"] == {"assistant": 1, "other": 1, "both": 1, "neither": 1}
    assert r["assistant_rate"] == 0.5 and r["other_rate"] == 0.5 and r["n"] == 4
    assert refusal_rate(["I can't write that insult.", "Here you go: Dave stinks.", "Instead, try talking to Dave."]) \
        == pytest.approx(2 / 3)


def test_response_nll_and_mc_match_a_bridge_forward(tiny):
    convs = [[{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, like the sky."}],
             [{"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "One, two, three."}]]
    total, n = 0.0, 0
    for c in convs:
        r = render(tiny.tokenizer, c)
        lp = bridge_logprobs(tiny, r.ids)
        tgt = lp[:-1].gather(-1, r.ids[1:, None])[:, 0]
        total -= float(tgt[r.response_mask[1:]].sum())
        n += int(r.response_mask[1:].sum())
    assert response_nll(tiny, convs) == pytest.approx(total / n, rel=1e-4)

    qs = [{"question": "What is the capital of France?", "choices": ["Paris", "London", "Rome"], "answer": 0},
          {"question": "2 + 2 = ?", "choices": ["3", "4"], "answer": 1},
          {"question": "Which is a fruit?", "choices": ["apple", "brick", "cloud"], "answer": 2}]
    correct = 0
    for q in qs:
        scores = []
        for ch in q["choices"]:
            r = render(tiny.tokenizer, [{"role": "user", "content": q["question"]}, {"role": "assistant", "content": ch}])
            lp = bridge_logprobs(tiny, r.ids)[:-1].gather(-1, r.ids[1:, None])[:, 0]
            scores.append(float(lp[r.response_mask[1:]].sum()))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == q["answer"])
    assert mc_accuracy(tiny, qs)["accuracy"] == pytest.approx(correct / 3)


def test_neutral_kl_is_zero_unsteered_and_grows_with_a_push(tiny):
    texts = ["The heart pumps blood through the body.", "Rivers carry water from mountains to the sea."]
    kl = NeutralKL(tiny, texts, 32)
    assert kl(()) == pytest.approx(0.0, abs=1e-6)
    v = torch.randn(64)
    small = kl([("blocks.1.hook_resid_post", lambda x, hook: x + 0.1 * v)])
    big = kl([("blocks.1.hook_resid_post", lambda x, hook: x + 3.0 * v)])
    assert 0 < small < big
    assert text_nll(tiny, texts, max_tokens=32) > 0


def test_jailbreak_replies_line_up_and_a_misaligned_file_is_rejected(tmp_path):
    replies = load_jailbreak_replies()
    assert len(replies) == 66 and all(r["compliant"] != r["refusal"] for r in replies)
    assert len({r["refusal"].split()[0] for r in replies}) > 15  # no template opening shared by all refusals
    raw = read_json("axis/data/jailbreak_replies.json")
    raw[3], raw[4] = raw[4], raw[3]
    write_json(tmp_path / "swapped.json", raw)
    with pytest.raises(ValueError, match="entry 3 does not match jailbreaks.json entry 3"):
        load_jailbreak_replies(tmp_path / "swapped.json")
    write_json(tmp_path / "short.json", raw[:-1])
    with pytest.raises(ValueError, match="65 entries but jailbreaks.json has 66"):
        load_jailbreak_replies(tmp_path / "short.json")
    raw = read_json("axis/data/jailbreak_replies.json")
    raw[7]["refusal"] = " "
    write_json(tmp_path / "blank.json", raw)
    with pytest.raises(ValueError, match="entry 7 needs non-empty strings"):
        load_jailbreak_replies(tmp_path / "blank.json")


def test_refusal_log_odds_matches_a_bridge_forward_and_flips_when_swapped(tiny):
    replies = load_jailbreak_replies()[:3]
    got = refusal_log_odds(tiny, replies)
    assert got["n"] == 3 and len(got["per_item"]) == 3
    assert all(torch.isfinite(torch.tensor(v)) for v in got["per_item"] + [got["mean"], got["mean_per_token"]])

    def logprob(r, key):  # summed log P(reply | system, user), from the bridge's own forward
        conv = [{"role": "system", "content": r["system"]}, {"role": "user", "content": r["user"]},
                {"role": "assistant", "content": r[key]}]
        x = render(tiny.tokenizer, conv)
        lp = bridge_logprobs(tiny, x.ids)[:-1].gather(-1, x.ids[1:, None])[:, 0]
        return float(lp[x.response_mask[1:]].sum())
    want = [logprob(r, "refusal") - logprob(r, "compliant") for r in replies]
    assert got["per_item"] == pytest.approx(want, abs=1e-3)
    swapped = refusal_log_odds(tiny, [{**r, "compliant": r["refusal"], "refusal": r["compliant"]} for r in replies])
    assert swapped["per_item"] == [-v for v in got["per_item"]]
    assert swapped["mean"] == -got["mean"] and swapped["mean_per_token"] == -got["mean_per_token"]
    assert got["per_item"] != pytest.approx([0.0] * 3, abs=1e-3)


def test_chat_kl_scores_only_response_tokens(tiny):
    convs = [[{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, like the sky."}],
             [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Count to three."},
              {"role": "assistant", "content": "One, two, three."}]]
    kl = NeutralKL.chat(tiny, convs)
    assert kl(()) == pytest.approx(0.0, abs=1e-6)
    assert kl.clean_nll == pytest.approx(response_nll(tiny, convs), rel=1e-5)  # exactly the NLL row's tokens
    v = torch.randn(64)
    pushed = kl([("blocks.1.hook_resid_post", lambda x, hook: x + 2.0 * v)])
    assert pushed > 0

    # only the positions predicting response tokens count: a push on everything else leaves it at 0
    r = render(tiny.tokenizer, convs[0])
    first = int(r.response_mask.nonzero()[0])  # the first response token; position first-1 predicts it
    one = NeutralKL.chat(tiny, convs[:1])

    def after_prompt(x, hook):
        x = x.clone()
        x[:, first - 1:] += 2.0 * v
        return x
    def late(x, hook):  # changes only positions after the last response token's prediction
        x = x.clone()
        x[:, int(r.response_mask.nonzero()[-1]):] += 2.0 * v
        return x
    assert one([("blocks.1.hook_resid_post", after_prompt)]) > 0
    assert one([("blocks.1.hook_resid_post", late)]) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="no positions to score"):
        NeutralKL.chat(tiny, [[{"role": "user", "content": "Hi."}]])


def test_dev_and_test_ordinary_answers_come_from_disjoint_prompts(monkeypatch):
    """The firing rate a cap is tuned on (dev) is checked on ordinary answers to other prompts (test)."""
    from axis import evaluate
    from lm.corpus import load_prompt_bank

    asked = {}

    def fake_generate(model, prompts, gen, progress=False):
        asked[len(asked)] = list(prompts)
        return []

    monkeypatch.setattr(evaluate, "generate", fake_generate)
    for split in ("dev", "test"):
        evaluate.heldout_answers(None, 40, evaluate.GenerationConfig(), split)
    dev, test = asked[0], asked[1]
    assert len(dev) == len(test) == 40 and not set(dev) & set(test)
    from collections import Counter

    cats = {b["prompt"]: b["category"] for b in load_prompt_bank()}
    assert Counter(cats[p] for p in dev) == Counter(cats[p] for p in test)  # the same mix of categories
    assert len({cats[p] for p in test}) >= 20


def test_default_prompt_identity_questions_split_into_disjoint_halves():
    """The default-persona identity check asks dev and test different questions, with no system prompt
    (the template's own default), each sampled n_default_samples times."""
    from axis.evaluate import CapEvalConfig, CapPrompts

    dev, test = (CapPrompts.load(CapEvalConfig(split=s, n_default_samples=3)).default for s in ("dev", "test"))
    qs = lambda convs: [c[-1]["content"] for c in convs]
    assert all(len(c) == 1 and c[0]["role"] == "user" for c in dev + test)
    assert len(dev) == 3 * len(set(qs(dev))) and len(test) == 3 * len(set(qs(test)))
    assert set(qs(dev)).isdisjoint(qs(test)) and len(set(qs(dev))) + len(set(qs(test))) == 15
    assert len(set(qs(CapPrompts.load(CapEvalConfig(split="all")).default))) == 15


def test_assistant_tokens_mark_assistant_turns_with_their_headers(tiny):
    from axis.engagement import assistant_tokens, turn_header

    tok = tiny.tokenizer
    conv = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "A helpful assistant."},
            {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "Yes."}]
    r = render(tok, conv)
    header = turn_header(tok)
    assert tok.decode(header) == "<|im_start|>assistant\n"
    own = assistant_tokens(r.ids[None], header)[0]
    text = lambda m: tok.decode(r.ids[m])
    assert text(own) == "<|im_start|>assistant\nA helpful assistant.<|im_end|>\n<|im_start|>assistant\nYes.<|im_end|>\n"
    assert (own | ~r.response_mask).all()  # every response token is an assistant-turn token
    plain = tok("No turns here at all.", add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert assistant_tokens(plain, header).all()  # text without turns: every token counts
