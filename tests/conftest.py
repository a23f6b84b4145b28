import json
import os
from pathlib import Path

import pytest
import torch

from tests.helpers import random_topk_sae_dir


# The compiled decode step costs seconds of compilation per edit structure and batch shape, which
# hundreds of short tiny-model generations would pay over and over: tests run the eager engine unless
# they ask for decode="compiled" (tests/test_decode.py, which checks the two agree).
os.environ.setdefault("STEERLENS_DECODE", "eager")


@pytest.fixture(autouse=True)
def torch_threads(request):
    """Tiny-model tests run on one thread: on 2 busy cores a second torch thread spin-waits and slows
    tiny forwards ~50x. Slow tests (the real 135M model) use both cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(2 if request.node.get_closest_marker("slow") else 1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny():
    """A 4-layer random Llama (d_model 64) with SmolLM2's tokenizer and chat template."""
    from lm.testing import tiny_model

    return tiny_model()


@pytest.fixture(scope="session")
def smollm():
    """The real embedded SmolLM2-135M-Instruct (slow tests only)."""
    from lm.model import load_model

    return load_model(device="cpu")


@pytest.fixture(scope="session")
def topk_sae_dir(tmp_path_factory):
    """A random TopK SAE (64 -> 256, k=8) at blocks.1.hook_resid_post, saved in SAELens format."""
    return random_topk_sae_dir(tmp_path_factory.mktemp("topk_sae"))


@pytest.fixture(scope="session")
def concept_sae_dir(tmp_path_factory):
    """The same TopK SAE with a concepts.json naming latent 7 golden_gate_bridge (max activation 3.0)."""
    path = random_topk_sae_dir(tmp_path_factory.mktemp("concept_sae"))
    concepts = {"golden_gate_bridge": {"latent": 7, "max_activation": 3.0, "auroc_heldout": 0.9}}
    (Path(path) / "concepts.json").write_text(json.dumps(concepts))
    return path


@pytest.fixture(scope="session")
def relu_sae_dir(tmp_path_factory):
    """A random ReLU SAE (64 -> 128) at blocks.2.hook_resid_post whose features fire on the tiny model."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=64, d_sae=128, metadata=SAEMetadata(hook_name="blocks.2.hook_resid_post")))
    with torch.no_grad():
        sae.b_enc.fill_(0.05)  # make features fire on the tiny model's small activations
    path = tmp_path_factory.mktemp("relu_sae")
    sae.save_model(str(path))
    return str(path)
