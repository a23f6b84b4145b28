import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
