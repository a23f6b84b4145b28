"""Run a TransformerBridge's residual-stream hook points over a plain HF model that shares its weights.

Why: the bridge wraps ~2000 modules (eager attention, Python RMSNorm), which costs ~20 ms per
decoding step on this CPU, a quarter of SmolLM2's step time. Generation and harvesting only need
hooks on the residual stream, so we run the stock HF model (SDPA attention, same weight tensors)
and, for every bridge HookPoint that has hooks attached, call that very HookPoint at the matching
place. Hooks are still added the TransformerLens way (`with model.hooks(...)`), there is one hook
mechanism, and the bridge stays the model users see. Any other active hook point falls back to the
bridge's own forward, so nothing is silently skipped.

The routes assume a decoder layout (`model.layers[i]` taking the residual as its first input, with
`self_attn` and `mlp` submodules), verified against the bridge for the HF `model_type`s in
`FAST_ARCHITECTURES`. Any other architecture (GPT-2, say) has no fast path: every run uses the
bridge's own forward, hooks included, only slower.

Each bridge's FastPath lives in a registry keyed weakly by the bridge (nothing is attached to it);
the FastPath holds the bridge weakly too, so dropping the model frees both.
"""

from __future__ import annotations

import contextlib
import copy
import weakref

import torch
from torch import nn


class StopForward(Exception):
    """Raised after the last needed layer so a harvest skips the rest of the network."""


def _hook_active(hp: nn.Module) -> bool:
    return bool(hp._forward_hooks) or bool(hp._forward_pre_hooks)


def _out_tensor(output):
    return output[0] if isinstance(output, tuple) else output


def _with_out(output, tensor):
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


FAST_ARCHITECTURES = frozenset({"llama", "qwen2"})  # HF model_types whose layout the routes are tested on


def _aliased_hf(src) -> nn.Module:
    """A stock HF model (SDPA attention) whose parameters and buffers are the bridge's own tensors."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(src.config)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(config)
    state = {k.replace("._original_component", ""): v for k, v in src.state_dict().items()}
    want = set(hf.state_dict())
    missing = want - set(state)
    if missing - {"lm_head.weight"}:
        raise RuntimeError(f"fast path cannot map bridge weights: missing {sorted(missing)[:5]}")
    hf.load_state_dict({k: v for k, v in state.items() if k in want}, strict=False, assign=True)
    if "lm_head.weight" in missing or getattr(config, "tie_word_embeddings", False):
        hf.lm_head.weight = hf.get_input_embeddings().weight
    buffers = {k.replace("._original_component", ""): v for k, v in src.named_buffers()}
    for name, buf in list(hf.named_buffers()):  # non-persistent ones (rotary inv_freq) aren't in state_dict
        if buf.is_meta:
            owner, _, attr = name.rpartition(".")
            hf.get_submodule(owner).register_buffer(attr, buffers[name].clone(), persistent=False)
    return hf.eval()


class FastPath:
    """A stock HF causal LM aliasing the bridge's parameters, with routed hook points (`hf` is None,
    and nothing routes, for an architecture outside FAST_ARCHITECTURES)."""

    def __init__(self, bridge):
        self._bridge = weakref.ref(bridge)  # a strong one would keep the registry's key alive
        src = bridge.original_model
        self._anchor = src.get_input_embeddings()
        self.model_type = getattr(src.config, "model_type", None)
        self.hf, self.layers, self.routes = None, None, {}
        if self.model_type in FAST_ARCHITECTURES:
            self.hf = _aliased_hf(src)
            self.layers = self._find_layers(self.hf, bridge.cfg.n_layers)
            self.routes = self._routes()

    @property
    def bridge(self):
        return self._bridge()

    @staticmethod
    def _find_layers(hf, n_layers: int) -> nn.ModuleList:
        for module in hf.modules():
            if isinstance(module, nn.ModuleList) and len(module) == n_layers:
                return module
        raise RuntimeError("fast path: no decoder layer list found")

    def _routes(self) -> dict[int, tuple[str, nn.Module, nn.Module, str]]:
        """id(bridge HookPoint) -> (name, bridge HookPoint, fast module, 'pre'|'post'|'post0')."""
        b, routes = self.bridge, {}

        def add(name, hp, module, kind):
            routes[id(hp)] = (name, hp, module, kind)

        for i, (blk, layer) in enumerate(zip(b.blocks, self.layers)):
            add(f"blocks.{i}.hook_resid_pre", blk.hook_in, layer, "pre")
            add(f"blocks.{i}.hook_resid_post", blk.hook_out, layer, "post")
            if hasattr(layer, "self_attn"):
                add(f"blocks.{i}.hook_attn_out", blk.attn.hook_out, layer.self_attn, "post0")
            if hasattr(layer, "mlp"):
                add(f"blocks.{i}.hook_mlp_out", blk.mlp.hook_out, layer.mlp, "post")
        add("hook_embed", b.embed.hook_out, self.hf.get_input_embeddings(), "post")
        return routes

    def stale(self) -> bool:
        """True when the bridge's weights moved (`.to(...)`, reloaded): rebuild the fast path."""
        if self.hf is None:
            return False
        mine, theirs = self.hf.get_input_embeddings().weight, self._anchor.weight
        return mine.data_ptr() != theirs.data_ptr() or mine.device != theirs.device

    def can_route(self, names: list[str]) -> bool:
        return self.hf is not None and all(id(self.bridge.hook_dict[n]) in self.routes for n in names)

    def active_hook_points(self) -> list[nn.Module]:
        seen, active = set(), []
        for hp in self.bridge.hook_dict.values():
            if id(hp) not in seen and _hook_active(hp):
                seen.add(id(hp))
                active.append(hp)
        return active

    @contextlib.contextmanager
    def routing(self, stop_after_layer: int | None = None):
        """Yield the HF model wired to the bridge's active hook points, or None if one can't be routed."""
        active = self.active_hook_points()
        if self.hf is None or any(id(hp) not in self.routes for hp in active):
            yield None
            return
        handles = []
        try:
            for hp in active:
                _, hook_point, module, kind = self.routes[id(hp)]
                handles.append(_attach(module, hook_point, kind))
            if stop_after_layer is not None:
                def stop(module, args, output):
                    raise StopForward
                handles.append(self.layers[stop_after_layer].register_forward_hook(stop))
            yield self.hf
        finally:
            for h in handles:
                h.remove()


def _attach(module: nn.Module, hook_point: nn.Module, kind: str):
    if kind == "pre":
        def pre(mod, args, kwargs):
            if args:
                return (hook_point(args[0]), *args[1:]), kwargs
            kwargs["hidden_states"] = hook_point(kwargs["hidden_states"])
            return args, kwargs
        return module.register_forward_pre_hook(pre, with_kwargs=True)

    def post(mod, args, output):
        return _with_out(output, hook_point(_out_tensor(output)))
    return module.register_forward_hook(post)


_FAST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # bridge -> its FastPath


def fast_path(bridge) -> FastPath:
    """The bridge's FastPath, built on first use and rebuilt if its weights were replaced."""
    fp = _FAST.get(bridge)
    if fp is None or fp.stale():
        fp = _FAST[bridge] = FastPath(bridge)
    return fp
