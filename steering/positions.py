"""Which token positions an intervention touches, correct under KV-cached generation.

With a KV cache the prefill sees the whole (left-padded) prompt and each decoding step sees one
new token at the front of nothing: "position 0 of this forward" is not "position 0 of the text".
Steering libraries that index the current forward's tokens steer the wrong tokens after the
prefill (steering-vectors #60, CAA #3, pyvene #193). We ask `lm.generate.decode_state()` for the
absolute offset of the tokens a hook sees now and the padded prompt length, and select from those.

Positions are absolute indices into the padded sequence as the hooks see it (prompt tokens first,
then generated ones). Outside `generate` (a plain forward) every token is a prompt token: "prompt"
steers all of them and "generated" none.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from jaxtyping import Bool

from lm.generate import decode_state
from lm.kernel import Kernel, no_state
from steering.window import carry, text_tokens

Positions = str | list[int]  # "all" | "prompt" | "generated" | explicit absolute positions
NAMED = ("all", "prompt", "generated")

ALL = slice(None)  # steer every token of this forward
NONE = None  # steer nothing in this forward


def check_positions(positions) -> Positions:
    """Validate and normalise (explicit lists become sorted unique ints)."""
    if isinstance(positions, str):
        if positions not in NAMED:
            raise ValueError(f"positions={positions!r}: use one of {NAMED} or a list of token positions.")
        return positions
    if isinstance(positions, torch.Tensor):
        positions = positions.tolist()
    try:
        items = list(positions)
    except TypeError:
        raise ValueError(f"positions={positions!r}: use one of {NAMED} or a list of non-negative ints.") from None
    bad = [p for p in items if isinstance(p, bool) or not isinstance(p, (int, float))
           or not math.isfinite(p) or p != int(p) or p < 0]
    if bad:
        raise ValueError(f"positions: {bad[:5]} are not non-negative integer positions "
                         "(absolute indices into the padded sequence).")
    out = sorted({int(p) for p in items})
    if not out:
        raise ValueError("positions is an empty list: it would steer nothing. Use 'all', 'prompt', "
                         "'generated' or at least one position.")
    return out


class Selector:
    """Callable `(seq_len, device) -> ALL | NONE | index` for the tokens a hook sees right now.

    Cheap on the hot path: named modes do a few integer comparisons, no tensors per step.
    """

    def __init__(self, positions: Positions):
        self.positions = check_positions(positions)
        self.explicit = None if isinstance(self.positions, str) else torch.tensor(self.positions)

    def __call__(self, seq_len: int, device=None):
        st = decode_state()
        start = st.offset if st is not None else 0
        mode = self.positions
        if mode == "all":
            return ALL
        if self.explicit is not None:
            p = self.explicit
            hit = p[(p >= start) & (p < start + seq_len)] - start
            if len(hit) == 0:
                return NONE
            return ALL if len(hit) == seq_len else hit.to(device)
        if st is None:  # plain forward: everything is prompt
            return ALL if mode == "prompt" else NONE
        split = st.prompt_len - start  # first generated index within this forward
        if mode == "prompt":
            return ALL if split >= seq_len else NONE if split <= 0 else slice(0, split)
        return ALL if split <= 0 else NONE if split >= seq_len else slice(split, None)


def position_mask(positions: Positions) -> Callable[[int, int], Bool[torch.Tensor, " total"]]:
    """The same choice as `Selector`, as a mask over a whole generation's absolute positions
    `(prompt_len, total) -> Bool[total]`: what the compiled decode step gates its edits with."""
    positions = check_positions(positions)

    def where(prompt_len: int, total: int):
        j = torch.arange(total)
        if positions == "all":
            return torch.ones(total, dtype=torch.bool)
        if positions == "prompt":
            return j < prompt_len
        if positions == "generated":
            return j >= prompt_len
        return torch.isin(j, torch.tensor(positions))
    return where


def edit_hook(kernel: Kernel, positions: Positions, d: int, what: str):
    """A TransformerLens hook `fn(x, hook) -> x` applying `kernel` to the selected positions only.

    The hook carries the kernel (`fn.kernel`, with its position mask), so `lm.generate` can run the
    same edit inside its compiled decode step; a stateful kernel (a windowed cap) keeps its state
    per generation batch through `steering.window.carry`."""
    select = Selector(positions)
    kernel.where = position_mask(select.positions)
    stateful = kernel.init_state is not no_state
    if stateful and select.positions != "all":
        raise ValueError(f"{what}: an edit that carries state across tokens needs positions='all'.")

    def fail(x, hook):
        raise ValueError(f"{what}: hook {getattr(hook, 'name', '?')} carries vectors of size {x.shape[-1]} "
                         f"but the intervention has size {d}. Use a hook of matching width.")

    def edit(x):
        if not stateful:
            return kernel(x)[0]
        b, s = x.shape[:2]
        valid = text_tokens(b, s, x.device)
        return carry(kernel, b, x.device, kernel.init_state, lambda state: kernel(x, state, valid))

    def hook_fn(x, hook):
        if x.shape[-1] != d:
            fail(x, hook)
        sel = ALL if select.positions == "all" else select(x.shape[1], x.device)
        if sel is NONE:
            return x
        if sel is ALL:
            return edit(x)
        out = x.clone()
        out[:, sel] = edit(x[:, sel])
        return out
    hook_fn.kernel = kernel
    return hook_fn
