import pytest
import torch


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
