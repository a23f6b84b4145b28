"""Render conversations with the model's chat template and mark the assistant-response tokens.

Persona work averages activations over response tokens only, so the mask must exclude every
template token (`<|im_start|>assistant\\n`, `<|im_end|>`, the system prompt the template inserts).
We find each response's character span by rendering the conversation prefix with
`add_generation_prompt=True`, then map spans to tokens with the tokenizer's offset mapping.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}
Conversation = list[Message]
ROLES = ("system", "user", "assistant")


def check_conversation(conv: Conversation) -> None:
    if not isinstance(conv, list) or not conv:
        raise ValueError("A conversation is a non-empty list of {'role': ..., 'content': ...} dicts.")
    for i, m in enumerate(conv):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"Message {i} must be {{'role': one of {ROLES}, 'content': str}}; got {m!r}.")


def as_conversation(prompt: str | Conversation, system: str | None = None) -> Conversation:
    """A bare string becomes one user turn; `system` adds a system prompt in front."""
    conv = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system is not None:
        conv = [{"role": "system", "content": system}] + conv
    check_conversation(conv)
    return conv


def render_text(tokenizer, conv: Conversation, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=add_generation_prompt)


@dataclass
class Rendered:
    ids: Int[torch.Tensor, " seq"]
    response_mask: Bool[torch.Tensor, " seq"]
    text: str


def render(tokenizer, conv: Conversation, add_generation_prompt: bool = False) -> Rendered:
    """Token ids of the templated conversation and a mask of assistant-content tokens."""
    check_conversation(conv)
    text = render_text(tokenizer, conv, add_generation_prompt)
    spans = []
    for i, m in enumerate(conv):
        if m["role"] != "assistant":
            continue
        prefix = render_text(tokenizer, conv[:i], add_generation_prompt=True) if i else ""
        start = text.find(m["content"], len(prefix))
        if not text.startswith(prefix) or start < 0:
            raise ValueError("This chat template does not render conversations prefix-consistently; "
                             "response masks need a template where each turn extends the previous.")
        spans.append((start, start + len(m["content"])))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [any(s <= a and b <= e and b > a for s, e in spans) for a, b in enc["offset_mapping"]]
    return Rendered(torch.tensor(enc["input_ids"]), torch.tensor(mask, dtype=torch.bool), text)
