"""The mean projection over each row's last W tokens, kept correct across KV-cached decoding steps.

Lu et al. calibrate tau on per-rollout *mean* projections but compare it with each token's. A
token's projection spreads several times wider than a rollout mean, so a per-token floor fires on
ordinary assistant tokens too (12-26% of them on SmolLM2 at p75). A windowed measure compares like
with like: the mean over the last W tokens, left padding and each row's first token (the attention
sink) excluded.

`window_mean` is a pure function of the new projections and the carried state (the last W values
and their validity), so the compiled decode step (`lm.decode`) carries the state as tensors. Under
hooks (`carry`) the state of each generation batch lives in `_HISTORY`, keyed by the batch's
`DecodeState` (weakly, so buffers vanish with the batch and nothing leaks between batches or calls)
and by the owner (each cap and each monitor keeps its own).
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float

from lm.generate import decode_state

_HISTORY: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()

WindowState = tuple[Float[torch.Tensor, "b w"], Bool[torch.Tensor, "b w"]]


def empty_window(batch: int, window: int, device) -> WindowState:
    return (torch.zeros(batch, window, dtype=torch.float32, device=device),
            torch.zeros(batch, window, dtype=torch.bool, device=device))


def window_mean(p: Float[torch.Tensor, "b s"], valid: Bool[torch.Tensor, "b s"], state: WindowState, window: int
                ) -> tuple[Float[torch.Tensor, "b s"], Bool[torch.Tensor, "b s"], WindowState]:
    """(mean over each token's last `window` valid tokens, has any, the state for the next tokens)."""
    hp, hv = state
    s, w = p.shape[1], window
    vals = torch.cat([hp, torch.where(valid, p.float(), 0.0)], dim=1)
    keep = torch.cat([hv, valid], dim=1)
    cs = F.pad(vals.cumsum(1), (1, 0))
    cn = F.pad(keep.float().cumsum(1), (1, 0))
    end = torch.arange(w + 1, w + s + 1, device=p.device)  # window of token j: combined (j, j + w]
    sums, counts = cs[:, end] - cs[:, end - w], cn[:, end] - cn[:, end - w]
    return sums / counts.clamp(min=1), counts > 0, (vals[:, -w:], keep[:, -w:])


def hysteresis(p: Float[torch.Tensor, "b s"], valid: Bool[torch.Tensor, "b s"], on: Bool[torch.Tensor, " b"],
               engage, release, mode: str) -> tuple[Bool[torch.Tensor, "b s"], Bool[torch.Tensor, " b"]]:
    """A per-row switch over a run of tokens: on from the first token past `engage` (below it for a
    floor, above for a ceiling) until a token is back at `release`; carried across forwards by `on`.

    Vectorised: each token's state is that of the last event (engage or release) at or before it,
    the carried state counting as the event before the first token; invalid tokens are no event."""
    if mode == "floor":
        up, down = p < engage, p >= release
    else:
        up, down = p > engage, p <= release
    event = torch.where(valid & up, 1, torch.where(valid & down, -1, 0))
    event = torch.cat([torch.where(on, 1, -1)[:, None], event], dim=1)
    idx = torch.arange(event.shape[1], device=p.device).expand_as(event)
    last = torch.where(event != 0, idx, 0).cummax(dim=1).values
    state = event.gather(1, last) > 0
    return state[:, 1:], state[:, -1]


def text_tokens(b: int, s: int, device) -> Bool[torch.Tensor, "b s"]:
    """Which tokens of the current forward count as text: not left padding, not a row's first token."""
    st = decode_state()
    start = st.offset if st is not None else 0
    first = st.first_token if st is not None and st.first_token is not None else None
    pos = torch.arange(start, start + s, device=device)
    first = torch.zeros(b, dtype=torch.long, device=device) if first is None else first.to(device)
    return pos[None, :] > first[:, None]


def carry(owner, batch: int, device, init: Callable[[int, object], tuple], run: Callable[[tuple], tuple]):
    """Call `run(state) -> (out, new_state)` with `owner`'s state from the previous forward of this
    generation batch (fresh at the prefill and outside `generate`), and keep the new state."""
    st = decode_state()
    store = _HISTORY.setdefault(st, {}) if st is not None else None
    state = store.get(owner) if store is not None and st.offset > 0 else None
    out, state = run(state if state is not None else init(batch, device))
    if store is not None:
        store[owner] = state
    return out


class WindowMean:
    """Callable `proj [b, s] -> (mean over the last W valid tokens [b, s], has_any [b, s])` under hooks."""

    def __init__(self, window: int):
        self.window = window

    def __call__(self, p: Float[torch.Tensor, "b s"]) -> tuple[Float[torch.Tensor, "b s"], Bool[torch.Tensor, "b s"]]:
        b, s = p.shape
        valid = text_tokens(b, s, p.device)

        def run(state):
            mean, has, state = window_mean(p, valid, state, self.window)
            return (mean, has), state
        return carry(self, b, p.device, lambda n, dev: empty_window(n, self.window, dev), run)
