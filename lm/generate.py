"""Batched, KV-cached sampling with TransformerLens hooks applied on every decoding step.

HF `generate` does the sampling (left padding, temperature, top-p, stop tokens); we supply the
model it runs on. With only residual-stream hooks active that is the fast path (stock HF model,
same weights, hooks routed to the bridge's HookPoints); otherwise the bridge's wrapped model.
Either way hooks fire on the prefill and on each one-token step, so steering applies throughout.

Hooks see one new token per step under the KV cache. To steer "generated tokens only" correctly,
interventions read `decode_positions(seq_len)`, the absolute positions of the tokens in the
current forward, which this module keeps up to date during generation.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Int
from tqdm.auto import tqdm

from lm.batch import pad
from lm.chat import Conversation, as_conversation, render
from lm.fastpath import fast_path


@dataclass
class GenerationConfig:
    max_new_tokens: int = 128
    min_new_tokens: int = 0  # >0 suppresses end-of-turn until then (fixed-length benchmarks)
    temperature: float = 0.7  # 0 means greedy
    top_p: float = 0.9
    seed: int = 0
    batch_size: int = 32
    repetition_penalty: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Generation:
    conversation: Conversation  # the prompt, without the reply
    text: str
    prompt_ids: Int[torch.Tensor, " prompt"]
    ids: Int[torch.Tensor, " gen"]  # generated tokens, end-of-turn excluded
    finished: bool  # stopped at end of turn rather than at max_new_tokens

    def reply(self) -> Conversation:
        return self.conversation + [{"role": "assistant", "content": self.text}]


@dataclass(eq=False)  # identity hash: steering keys per-generation buffers by the state object
class DecodeState:
    """What hooks may ask about the forward they are in during `generate` (one per batch)."""
    prompt_len: int  # padded prompt length: positions >= prompt_len are generated tokens
    next_offset: int = 0
    offset: int = 0  # absolute position of the first token of the current forward
    first_token: Int[torch.Tensor, " b"] | None = None  # each row's first real position (left padding)


_STATE: contextvars.ContextVar[DecodeState | None] = contextvars.ContextVar("decode_state", default=None)


def decode_state() -> DecodeState | None:
    return _STATE.get()


def decode_positions(seq_len: int, device=None) -> Int[torch.Tensor, " seq"]:
    """Absolute positions of the tokens a hook sees now (plain forward: 0..seq_len-1)."""
    st = _STATE.get()
    start = st.offset if st is not None else 0
    return torch.arange(start, start + seq_len, device=device)


def end_of_turn_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    for tok in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


def context_size(model) -> int:
    return int(getattr(model.cfg, "n_ctx", None) or model.original_model.config.max_position_embeddings)


@contextlib.contextmanager
def tracking(runner, prompt_len: int, first_token: Int[torch.Tensor, " b"] | None = None):
    """Publish decode positions for hooks: each forward advances the offset by its length.

    Assumes KV-cached decoding (each forward continues the last); a forward that re-feeds the whole
    sequence must open its own `tracking` context.
    """
    st = DecodeState(prompt_len=prompt_len, first_token=first_token)

    def pre(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        n = ids.shape[1] if ids is not None else kwargs["inputs_embeds"].shape[1]
        st.offset, st.next_offset = st.next_offset, st.next_offset + n

    handle = runner.register_forward_pre_hook(pre, with_kwargs=True)
    token = _STATE.set(st)
    try:
        yield st
    finally:
        _STATE.reset(token)
        handle.remove()


@contextlib.contextmanager
def hooked_runner(model, fwd_hooks=(), stop_after_layer: int | None = None):
    """The HF module to call with `fwd_hooks` active (fast path when possible); hooks always removed."""
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        with fast_path(model).routing(stop_after_layer) as hf:
            if hf is None and stop_after_layer is not None:
                raise ValueError("stop_after_layer needs residual-stream hooks only")
            yield hf if hf is not None else model.original_model


def generate(
    model,
    prompts: list[str | Conversation],
    config: GenerationConfig | None = None,
    *,
    fwd_hooks=(),
    system: str | None = None,
    progress: bool = True,
    **overrides,
) -> list[Generation]:
    """Sample a reply to each prompt (string or conversation); hooks apply to every step."""
    cfg = config or GenerationConfig()
    if overrides:
        cfg = GenerationConfig(**{**cfg.to_dict(), **overrides})
    if not prompts:
        raise ValueError("generate() got no prompts.")
    tok = model.tokenizer
    convs = [as_conversation(p, system) for p in prompts]
    rendered = [render(tok, c, add_generation_prompt=True).ids for c in convs]
    n_ctx = context_size(model)
    for i, ids in enumerate(rendered):
        if len(ids) + cfg.max_new_tokens > n_ctx:
            raise ValueError(f"Prompt {i} has {len(ids)} tokens; with max_new_tokens={cfg.max_new_tokens} "
                             f"it exceeds the context ({n_ctx}). Shorten it or lower max_new_tokens.")
    stops = end_of_turn_ids(tok)
    device = next(model.original_model.parameters()).device
    out: list[Generation] = []
    batches = range(0, len(convs), cfg.batch_size)
    for b in tqdm(batches, desc="generate", disable=not progress or len(batches) < 2):
        chunk = rendered[b:b + cfg.batch_size]
        ids, att, _ = pad(chunk, tok.pad_token_id, side="left")
        ids, att = ids.to(device), att.to(device)
        torch.manual_seed(cfg.seed + b)  # per-batch seed: reproducible for a fixed batching
        sample = cfg.temperature > 0
        with torch.no_grad(), hooked_runner(model, fwd_hooks) as runner, \
                tracking(runner, ids.shape[1], first_token=(att == 0).sum(1)):
            seqs = runner.generate(
                input_ids=ids, attention_mask=att, max_new_tokens=cfg.max_new_tokens,
                min_new_tokens=cfg.min_new_tokens or None, do_sample=sample, temperature=cfg.temperature if sample else None,
                top_p=cfg.top_p if sample else None, top_k=0 if sample else None,
                repetition_penalty=cfg.repetition_penalty,
                eos_token_id=stops, pad_token_id=tok.pad_token_id,
            )
        for j, row in enumerate(seqs[:, ids.shape[1]:].cpu()):
            ends = [k for k, t in enumerate(row.tolist()) if t in stops]
            gen = row[: ends[0]] if ends else row
            out.append(Generation(convs[b + j], tok.decode(gen, skip_special_tokens=True).strip(),
                                  chunk[j], gen, bool(ends)))
    return out
