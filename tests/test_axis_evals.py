"""Judge-free evaluation pieces used by scripts/cap.py, checked against independent computations."""

import pytest
import torch

from lm.chat import render

from axis.evals import NeutralKL, identity_rates, mc_accuracy, refusal_rate, response_nll, text_nll



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
