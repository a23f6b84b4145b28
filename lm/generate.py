"""Batched, KV-cached sampling with TransformerLens hooks applied on every decoding step.

Two engines, one interface. By default (`decode="auto"`) a call that samples at least
AUTO_MIN_TOKENS tokens runs the hooks' edits inside the compiled static-cache decode step of
`lm.decode`: every hook built by a steerlens intervention carries its edit as data
(`lm.kernel.Kernel`), so add, clamp and cap all compile. Where that cannot apply (a
plain hook function, hooks attached outside `fwd_hooks`, an architecture or device without a
compiled step) it warns once and falls back to the eager engine: HF `generate` does the sampling
(left padding, temperature, top-p, stop tokens) on the fast path (stock HF model, same weights,
hooks routed to the bridge's HookPoints) or the bridge's wrapped model. Either way edits apply on
the prefill and on each one-token step, so steering applies throughout. `decode="eager"` or
`"compiled"` (or the environment variable STEERLENS_DECODE) forces one engine.

Hooks see one new token per step under the KV cache. To steer "generated tokens only" correctly,
interventions read `decode_positions(seq_len)`, the absolute positions of the tokens in the
current forward, which this module keeps up to date during generation.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
from dataclasses import asdict, dataclass, field

import torch
from jaxtyping import Int
from tqdm.auto import tqdm

from lm.batch import pad
from lm.chat import Conversation, as_conversation, render
from lm.decode import sample, site_of
from lm.layout import decode_model
from lm.fastpath import fast_path
from lm.kernel import kernel_of


DECODE_ENV = "STEERLENS_DECODE"
DECODE_MODES = ("auto", "compiled", "eager")
# "auto" compiles when the call samples at least this many tokens (prompts x max_new_tokens): a new
# edit structure or batch shape costs ~1-4 s of compilation with inductor's cache warm and ~12-15 s
# per segment program cold, on 2 cores; a 14-prompt x 48-token condition would not win that back
# (compiled steps save ~3 ms a token at batch 32).
AUTO_MIN_TOKENS = 2048


@dataclass
class GenerationConfig:
    max_new_tokens: int = 128
    min_new_tokens: int = 0  # >0 suppresses end-of-turn until then (fixed-length benchmarks)
    temperature: float = 0.7  # 0 means greedy
    top_p: float = 0.9
    seed: int = 0
    batch_size: int = 32
    repetition_penalty: float = 1.0
    decode: str = field(default_factory=lambda: os.environ.get(DECODE_ENV, "auto"))  # auto | compiled | eager
    weights: str = "float"  # "int8": weight-only int8 matrices in the compiled step (an option, never the default)

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


def compiled_kernels(model, fwd_hooks, device) -> tuple[list | None, str]:
    """The hooks' kernels when the compiled decode step can run them all, else (None, why not)."""
    fp = fast_path(model)
    if fp.hf is None:
        return None, f"architecture {fp.model_type!r} has no compiled decode step"
    if device.type not in ("cpu", "cuda"):
        return None, f"device {device.type!r} has no compiled decode step"
    if fp.active_hook_points():
        return None, "hooks are attached to the model outside fwd_hooks (pass them as fwd_hooks=)"
    kernels = []
    for name, fn in fwd_hooks:
        k = kernel_of(fn)
        if k is None:
            return None, f"the hook at {name} is a plain function, not a steerlens intervention's edit"
        if site_of(name) is None or name != k.hook:
            return None, f"hook point {name} is outside the compiled step's residual-stream sites"
        if not k.compilable:
            return None, f"the edit at {name} reads an SAE the compiled step cannot trace (not a plain TopK SAE)"
        if any(p.device != device for p in k.params):
            return None, f"the edit at {name} holds tensors on another device than the model ({device})"
        kernels.append(k)
    return kernels, ""


def choose_engine(model, fwd_hooks, cfg: GenerationConfig, device, n_prompts: int) -> list | None:
    """Kernels for the compiled engine, or None for the eager one (warning once why, under "auto"; a
    call too short to repay compiling runs eager silently)."""
    if cfg.decode not in DECODE_MODES:
        raise ValueError(f"GenerationConfig.decode={cfg.decode!r}: use one of {DECODE_MODES} "
                         f"(or set {DECODE_ENV} to one of them).")
    if cfg.weights != "float" and cfg.decode == "eager":
        raise ValueError(f"weights={cfg.weights!r} exists in the compiled decode step only; use decode='auto' or 'compiled'.")
    if cfg.decode == "eager":
        return None
    if cfg.decode == "auto" and cfg.weights == "float" and n_prompts * cfg.max_new_tokens < AUTO_MIN_TOKENS:
        return None
    kernels, why = compiled_kernels(model, fwd_hooks, device)
    if kernels is None and cfg.weights != "float":
        raise ValueError(f"weights={cfg.weights!r} needs the compiled decode step, which cannot run here: {why}.")
    if kernels is None:
        if cfg.decode == "compiled":
            raise ValueError(f"decode='compiled' cannot run here: {why}. Use decode='auto' to fall back to eager.")
        warnings.warn(f"lm.generate: eager decoding, {why}.", stacklevel=3)
    return kernels


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
    kernels = choose_engine(model, list(fwd_hooks), cfg, device, len(convs))
    out: list[Generation] = []
    batches = range(0, len(convs), cfg.batch_size)
    for b in tqdm(batches, desc="generate", disable=not progress or len(batches) < 2):
        chunk = rendered[b:b + cfg.batch_size]
        ids, att, _ = pad(chunk, tok.pad_token_id, side="left")
        ids, att = ids.to(device), att.to(device)
        torch.manual_seed(cfg.seed + b)  # per-batch seed: reproducible for a fixed batching
        new = (_compiled(model, ids, att, cfg, stops, kernels, n_ctx) if kernels is not None
               else _eager(model, ids, att, cfg, stops, fwd_hooks))
        for j, row in enumerate(new.cpu()):
            ends = [k for k, t in enumerate(row.tolist()) if t in stops]
            gen = row[: ends[0]] if ends else row
            out.append(Generation(convs[b + j], tok.decode(gen, skip_special_tokens=True).strip(),
                                  chunk[j], gen, bool(ends)))
    return out


def _eager(model, ids, att, cfg: GenerationConfig, stops, fwd_hooks) -> Int[torch.Tensor, "b n"]:
    """HF `generate` on the hooked runner: the fallback engine."""
    sample = cfg.temperature > 0
    with torch.no_grad(), hooked_runner(model, fwd_hooks) as runner, \
            tracking(runner, ids.shape[1], first_token=(att == 0).sum(1)):
        seqs = runner.generate(
            input_ids=ids, attention_mask=att, max_new_tokens=cfg.max_new_tokens,
            min_new_tokens=cfg.min_new_tokens or None, do_sample=sample, temperature=cfg.temperature if sample else None,
            top_p=cfg.top_p if sample else None, top_k=0 if sample else None,
            repetition_penalty=cfg.repetition_penalty,
            eos_token_id=stops, pad_token_id=model.tokenizer.pad_token_id,
        )
    return seqs[:, ids.shape[1]:]


def _compiled(model, ids, att, cfg: GenerationConfig, stops, kernels, n_ctx) -> Int[torch.Tensor, "b n"]:
    """`lm.decode.sample` with the hooks' kernels inside the compiled step."""
    return sample(decode_model(fast_path(model).hf, cfg.weights), ids, att, kernels, max_new_tokens=cfg.max_new_tokens,
                  min_new_tokens=cfg.min_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                  repetition_penalty=cfg.repetition_penalty, stops=stops, pad_id=model.tokenizer.pad_token_id,
                  context=n_ctx)
