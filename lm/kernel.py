"""An edit at one hook point as data: the single form both the TransformerLens hook and the compiled
decode step run.

An intervention (steering.Add, Clamp, Cap, ...) builds a `Kernel`: a module-level function and the
tensors it reads. Its hook (`steering.positions.edit_hook`) calls `kernel(x, ...)` eagerly; the
compiled decode step (`lm.decode`) traces the same function with the tensors as graph inputs, so a
change of strength, direction or tau is new data for the same program, while a change of function,
static settings or tensor shapes is a new *structure* (`Kernel.key`) and compiles once.

`fn(x, params, state, valid, *static) -> (x', state')`: `params` the kernel's tensors, `state` what
it carries from one decoding step to the next (the windowed cap's last W projections; () when none),
`valid[b, s]` the tokens that count as text (left padding and each row's first token excluded).
Which positions are edited is the kernel's `where(prompt_len, total)` mask, applied by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from jaxtyping import Bool, Float

EditFn = Callable[..., tuple[torch.Tensor, tuple]]


def no_state(batch: int, device) -> tuple:
    return ()


def everywhere(prompt_len: int, total: int) -> Bool[torch.Tensor, " total"]:
    return torch.ones(total, dtype=torch.bool)


@dataclass(eq=False)
class Kernel:
    hook: str  # TransformerLens hook name, e.g. "blocks.20.hook_resid_post"
    fn: EditFn  # module-level, so the compiled step sees the same function for every instance
    params: tuple[torch.Tensor, ...] = ()
    static: tuple = ()  # hashable settings baked into the compiled program (modes, window, k)
    where: Callable[[int, int], Bool[torch.Tensor, " total"]] = everywhere  # (prompt_len, total) -> positions
    init_state: Callable[[int, object], tuple] = no_state  # (batch, device) -> initial state

    def __call__(self, x: Float[torch.Tensor, "b s d"], state: tuple = (),
                 valid: Bool[torch.Tensor, "b s"] | None = None) -> tuple[Float[torch.Tensor, "b s d"], tuple]:
        return self.fn(x, self.params, state, valid, *self.static)

    @property
    def compilable(self) -> bool:
        """False when a static setting is a module (an SAE read through its own encode): eager only."""
        return not any(isinstance(v, torch.nn.Module) for v in self.static)

    def key(self) -> tuple:
        """The structure: what, where and of which shapes (values are data)."""
        shapes = tuple((tuple(p.shape), p.dtype, p.device.type) for p in self.params)
        return (self.hook, self.fn.__module__, self.fn.__qualname__, self.static, shapes)


def kernel_of(hook_fn) -> Kernel | None:
    """The Kernel behind a TransformerLens hook function built by `steering.positions.edit_hook`, if any."""
    return getattr(hook_fn, "kernel", None)
