"""The HF model's weights laid out for the compiled decode step (`lm.decode`): q/k/v and gate/up fused
into one matrix each, every tensor 64-byte aligned, optionally weight-only int8. Built once per model
and kind."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn

from lm.int8 import Int8


@dataclass
class LayerWeights:
    ln1: torch.Tensor
    wqkv: torch.Tensor  # [(n_q + 2 n_kv) d_head, d_model]: q, k, v projections stacked
    bqkv: torch.Tensor | None
    wo: torch.Tensor
    ln2: torch.Tensor
    wgu: torch.Tensor  # [2 d_mlp, d_model]: gate and up stacked
    wdown: torch.Tensor


@dataclass
class DecodeModel:
    """The weights of an HF Llama-family model laid out for the decode step (q/k/v and gate/up fused)."""
    embed: torch.Tensor
    layers: list[LayerWeights]
    norm: torch.Tensor
    lm_head: torch.Tensor
    inv_freq: torch.Tensor
    n_heads: int
    n_kv: int
    d_head: int
    eps: float
    source: int = 0  # data_ptr of the HF embedding this was built from (a changed one means rebuild)

    def int8(self) -> "DecodeModel":
        """The same model with every matrix (not the embedding lookup) as weight-only int8."""
        def q(w):
            return Int8.of(w) if w.ndim == 2 else w
        layers = [LayerWeights(**{k: q(v) if v is not None else None for k, v in vars(lw).items()}) for lw in self.layers]
        return DecodeModel(**{**vars(self), "layers": layers, "lm_head": Int8.of(self.lm_head)})

    @classmethod
    def from_hf(cls, hf: nn.Module) -> "DecodeModel":
        cfg, base = hf.config, hf.model
        layers = []
        for layer in base.layers:
            a, m = layer.self_attn, layer.mlp
            biases = [p.bias for p in (a.q_proj, a.k_proj, a.v_proj)]
            layers.append(LayerWeights(
                ln1=aligned(layer.input_layernorm.weight),
                wqkv=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).contiguous(),
                bqkv=torch.cat(biases).detach() if all(b is not None for b in biases) else None,
                wo=aligned(a.o_proj.weight), ln2=aligned(layer.post_attention_layernorm.weight),
                wgu=torch.cat([m.gate_proj.weight, m.up_proj.weight]).contiguous(), wdown=aligned(m.down_proj.weight)))
        d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        embed = aligned(base.embed_tokens.weight)
        tied = hf.lm_head.weight.data_ptr() == base.embed_tokens.weight.data_ptr()
        return cls(embed=embed, layers=layers, norm=aligned(base.norm.weight),
                   lm_head=embed if tied else aligned(hf.lm_head.weight),
                   inv_freq=base.rotary_emb.inv_freq.float(), n_heads=cfg.num_attention_heads,
                   n_kv=cfg.num_key_value_heads, d_head=d_head, eps=cfg.rms_norm_eps,
                   source=base.embed_tokens.weight.data_ptr())


def aligned(w: torch.Tensor) -> torch.Tensor:
    """`w` detached, copied where its data is not 64-byte aligned: inductor copies a misaligned input
    on every call of a compiled program (the GGUF-loaded weights sit 56 bytes off)."""
    w = w.detach()
    return w if w.data_ptr() % 64 == 0 else w.clone()


_DECODE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # HF model -> {weights kind: DecodeModel}


WEIGHTS = ("float", "int8")


def decode_model(hf: nn.Module, weights: str = "float") -> DecodeModel:
    """The HF model's weights in decode layout (`weights="int8"`: weight-only int8), built once per
    model and kind, rebuilt if its embedding tensor changed."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}: use one of {WEIGHTS}.")
    got = _DECODE.setdefault(hf, {})
    if "float" not in got or got["float"].source != hf.get_input_embeddings().weight.data_ptr():
        got.clear()
        got["float"] = DecodeModel.from_hf(hf)
    if weights not in got:
        got[weights] = got["float"].int8()
    return got[weights]
