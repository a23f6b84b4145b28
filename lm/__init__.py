"""Model, chat formatting, generation, text data and activation harvesting shared by steerlens.

Layout: `sources` (where weights come from: embedded SmolLM2, "tiny", a HF dir, a TransformerLens
name) -> `model` (`load_model`, `model_hash`) -> `fastpath` (bridge hook points over a plain HF
model); `chat` (templates, response masks), `batch` (`pad`, the one padding helper), `generate`
and `harvest` (KV-cached sampling, activation streaming); `text`, `corpus` and `prompts` (text
sources, the built-in corpus, shared prompt sets in lm/data/); `io` (atomic writes), `report`
(HTML reports); `tracking` (the one W&B helper: offline by default, quiet, read back offline
runs); `llama_server` (a llama.cpp server on the embedded GGUF, for rollouts and control vectors); `testing` (the tiny model, loaded).
"""

from lm.chat import Conversation, as_conversation, render
from lm.generate import Generation, GenerationConfig, decode_positions, generate
from lm.harvest import HarvestConfig, harvest
from lm.model import load_model
from lm.sources import EMBEDDED

__all__ = ["EMBEDDED", "Conversation", "Generation", "GenerationConfig", "HarvestConfig",
           "as_conversation", "decode_positions", "generate", "harvest", "load_model", "render"]
