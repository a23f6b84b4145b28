"""Model, chat formatting, generation, text data and activation harvesting shared by steerlens."""

from lm.chat import Conversation, as_conversation, render
from lm.generate import Generation, GenerationConfig, decode_positions, generate
from lm.harvest import HarvestConfig, harvest
from lm.model import EMBEDDED, load_model

__all__ = ["EMBEDDED", "Conversation", "Generation", "GenerationConfig", "HarvestConfig",
           "as_conversation", "decode_positions", "generate", "harvest", "load_model", "render"]
