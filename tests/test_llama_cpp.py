"""llama.cpp end to end: the Golden Gate direction, exported as a control vector, moves llama-server's
answers the way our `Add` moves ours at the same strength (concept rate side by side).

Needs the llama-server binary (`make llama-cpp`) and the real embedded model; run with `-s` to see
the figures: `.venv/bin/python -m pytest -q -s tests/test_llama_cpp.py`.
"""

import json

import pytest
import torch

from features import concept_latent, load_concept
from lm.chat import as_conversation, render
from lm.generate import GenerationConfig, generate
from lm.engines import server_replies
from lm.llama_server import LLAMA_CPP_INSTALL, LLAMA_SERVER_ENV, find_llama_server, llama_server, require_llama_server
from lm.sources import embedded_gguf
from saes.access import DEFAULT_SAE, load_sae, sae_hook
from steering.control_vector import model_hint, write_control_vector
from steering.directions import difference_of_means, feature_edit_norm, with_norm
from steering.metrics import concept_rate, load_data
from steering.vectors import Add

needs_llama_cpp = pytest.mark.skipif(
    find_llama_server() is None,
    reason=f"llama.cpp's llama-server is not installed: run `{LLAMA_CPP_INSTALL}` (builds it from source, ~9 min on 2 cores)")

CONCEPT = "golden_gate_bridge"
STRENGTH = 1.5  # x the latent's max-activation edit norm, as steering.experiment.sweep_conditions' raw_add
N_PROMPTS, NEW_TOKENS = 35, 48  # all unrelated questions, greedy


def golden_gate_add(model) -> Add:
    """The raw difference-of-means direction at the shipped SAE's layer, at the matched norm."""
    concept = load_concept(CONCEPT)
    sae = load_sae(DEFAULT_SAE)
    latent, max_act = concept_latent(DEFAULT_SAE, CONCEPT)
    raw = difference_of_means(model, sae_hook(sae), concept["positive"], concept["negative"])
    return Add(sae_hook(sae), with_norm(raw, feature_edit_norm(sae, latent, STRENGTH * max_act)))


def llama_answers(model, prompts, args=()) -> list[str]:
    ids = [render(model.tokenizer, as_conversation(p), True).ids.tolist() for p in prompts]
    with llama_server(embedded_gguf(), list(args)) as url:
        gen = GenerationConfig(max_new_tokens=NEW_TOKENS, temperature=0.0, top_p=1.0)
        return [r.text for r in server_replies(url, ids, gen, seed=0, workers=4)]


def test_a_missing_binary_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv(LLAMA_SERVER_ENV, str(tmp_path / "nope"))
    assert find_llama_server() is None
    with pytest.raises(FileNotFoundError, match="not an executable file.*make llama-cpp"):
        require_llama_server()


@pytest.mark.slow
@needs_llama_cpp
def test_llama_server_refusing_a_control_vector_fails_clearly(tmp_path):
    cv = write_control_vector(Add("blocks.1.hook_resid_post", torch.ones(64)), tmp_path / "small.gguf", "llama", 30)
    # llama.cpp logs "control vector n_embd does not match model" and would serve unsteered
    with pytest.raises(RuntimeError, match="did not apply the control vector.*n_embd does not match"):
        with llama_server(embedded_gguf(), ["--control-vector-scaled", f"{cv}:1.0"], startup_timeout=60):
            pass
    with pytest.raises(RuntimeError, match="did not apply the control vector.*failed to load"):
        with llama_server(embedded_gguf(), ["--control-vector-scaled", f"{tmp_path / 'missing.gguf'}:1.0"]):
            pass


@pytest.mark.slow
@needs_llama_cpp
def test_control_vector_moves_llama_cpp_like_ours(smollm, tmp_path):
    add = golden_gate_add(smollm)
    cv = write_control_vector(add, tmp_path / "golden_gate.gguf", model_hint(smollm), smollm.cfg.n_layers)
    prompts = load_data("unrelated_questions")[:N_PROMPTS]
    gen = GenerationConfig(max_new_tokens=NEW_TOKENS, temperature=0.0, batch_size=N_PROMPTS)
    answers = {
        "ours_unsteered": [g.text for g in generate(smollm, prompts, gen, progress=False)],
        "ours_steered": [g.text for g in generate(smollm, prompts, gen, fwd_hooks=add.hooks(smollm), progress=False)],
        "llama_cpp_unsteered": llama_answers(smollm, prompts),
        "llama_cpp_steered": llama_answers(smollm, prompts, ["--control-vector-scaled", f"{cv}:1.0"]),
    }
    rates = {k: concept_rate(v, CONCEPT) for k, v in answers.items()}
    print(json.dumps({"strength": STRENGTH, "hook": add.hook, "norm": float(add.vector.norm()),
                      "n_prompts": N_PROMPTS, "max_new_tokens": NEW_TOKENS, "concept_rate": rates}))
    for i in range(3):
        print(f"Q: {prompts[i]}\n  ours:      {answers['ours_steered'][i][:160]!r}\n"
              f"  llama.cpp: {answers['llama_cpp_steered'][i][:160]!r}")
    assert rates["ours_steered"] > rates["ours_unsteered"]
    assert rates["llama_cpp_steered"] > rates["llama_cpp_unsteered"]
