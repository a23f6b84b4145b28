"""Steered decoding as one compiled step: a static KV cache, the interventions as tensors, sampling inside.

Why: HF `generate` spends 15-40% of a step on its own bookkeeping and the model call pays ~27 ms of
per-op overhead at batch 1 on this CPU. Here a decoding step is a pure function of tensors (token,
position, caches, edit parameters, edit state, sampling state) that `torch.compile` turns into
programs per *structure*: which edits sit at which hook points with which static settings. The layers
run SEGMENT at a time, one compiled call per segment (weights are inputs, so segments with the same
edits share a program), then one call for the head and the draw. Strengths, directions, tau and
feature ids are inputs, so a sweep over them reuses the compiled step. Prefill runs the same
functions eagerly.

Edits reach this module as `Kernel`s: a module-level function plus its tensors (see `lm.kernel`),
the same function the TransformerLens hook of that intervention calls, so eager and compiled paths
share one implementation of every edit. The layer math follows HF's Llama/Qwen2 (RMSNorm in float32,
rotate-half RoPE at per-row positions counted from each row's first real token, as HF's `generate`
does with left padding).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int

from lm.int8 import Int8, linear
from lm.layout import DecodeModel, LayerWeights, aligned
from lm.sampling import Sampler
from lm.sources import cache_root


def rms_norm(x: Float[torch.Tensor, "... d"], w: Float[torch.Tensor, " d"], eps: float) -> Float[torch.Tensor, "... d"]:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(x.dtype)


def rope(x: Float[torch.Tensor, "b h s dh"], cos: Float[torch.Tensor, "b s dh"], sin: Float[torch.Tensor, "b s dh"]):
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rot * sin[:, None]


def rope_tables(inv_freq: Float[torch.Tensor, " half"], rope_pos: Int[torch.Tensor, "b s"], dtype: torch.dtype):
    freqs = rope_pos[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


SITES = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")
ORDER = ("hook_embed", *SITES)  # where the forward meets each site within its layer


def site_of(hook: str) -> tuple[int, str] | None:
    """(layer, site) of a hook name the decode step can edit at; layer -1 for hook_embed; None otherwise."""
    if hook == "hook_embed":
        return -1, hook
    parts = hook.split(".")
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2] in SITES:
        return int(parts[1]), parts[2]
    return None


@dataclass
class LayerEdits:
    """One layer's kernels by site, their masks and states: a small value the compiled layer step takes
    as input, so every layer without edits shares one program."""
    sites: tuple  # ((site, number of kernels there), ...) in the order the forward meets them
    kernels: tuple
    masks: tuple
    states: tuple
    ids: tuple  # each kernel's index in Edits

    def apply(self, site: str, x, qpos, valid, states: list):
        """Run the kernels at `site` on x, each on the positions its mask selects."""
        j0 = 0
        for name, n in self.sites:
            if name == site:
                for j in range(j0, j0 + n):
                    y, states[j] = self.kernels[j](x, states[j], valid)
                    x = torch.where(self.masks[j][qpos][None, :, None], y, x)
                return x
            j0 += n
        return x


NO_EDITS = LayerEdits((), (), (), (), ())


@dataclass
class Edits:
    """The kernels of one generation, grouped once per layer (layer -1: hook_embed), and their state."""
    states: list[tuple]  # per kernel, in hook order
    layers: dict[int, LayerEdits]  # layers with edits; states there are refreshed by `layer`

    @classmethod
    def build(cls, kernels, prompt_len: int, total: int, batch: int, device) -> "Edits":
        # the compiled step copies a misaligned input on every call (an SAE's W_enc read from
        # safetensors sits 56 bytes off: 10.6 MB a step), so the kernels get aligned tensors once per
        # generation (a no-op for tensors already aligned)
        kernels = [replace(k, params=tuple(aligned(p) for p in k.params)) for k in kernels]
        masks = [k.where(prompt_len, total).to(device) for k in kernels]
        by_layer: dict[int, list[tuple[int, int, str]]] = {}
        for i, k in enumerate(kernels):
            layer, site = site_of(k.hook)
            by_layer.setdefault(layer, []).append((ORDER.index(site), i, site))
        layers = {}
        for layer, items in by_layer.items():
            ids = tuple(i for _, i, _ in sorted(items))  # by site, hook order within a site
            sites = tuple((site, sum(1 for _, _, s in items if s == site)) for site in ORDER
                          if any(s == site for _, _, s in items))
            layers[layer] = LayerEdits(sites, tuple(kernels[i] for i in ids), tuple(masks[i] for i in ids), (), ids)
        return cls([k.init_state(batch, device) for k in kernels], layers)

    def layer(self, layer: int) -> LayerEdits:
        le = self.layers.get(layer)
        return NO_EDITS if le is None else replace(le, states=tuple(self.states[i] for i in le.ids))

    def update(self, le: LayerEdits, states: tuple) -> None:
        for i, st in zip(le.ids, states):
            self.states[i] = st


def attention_mask(qpos: Int[torch.Tensor, " s"], first: Int[torch.Tensor, " b"], total: int
                   ) -> Bool[torch.Tensor, "b 1 s total"]:
    """Causal over real tokens; a padding query sees itself only (no all-masked rows, hence no NaN)."""
    j = torch.arange(total, device=qpos.device)
    causal = j[None, None, :] <= qpos[None, :, None]
    real = (j[None, None, :] >= first[:, None, None]) | (j[None, None, :] == qpos[None, :, None])
    return (causal & real)[:, None]


def attend(q: Float[torch.Tensor, "b h s dh"], k: Float[torch.Tensor, "b kv t dh"], v: Float[torch.Tensor, "b kv t dh"],
           mask: Bool[torch.Tensor, "b 1 s t"]) -> Float[torch.Tensor, "b h s dh"]:
    """Grouped-query attention as two batched matmuls (each kv head serves h / kv query heads, as HF's
    repeat_kv): for one query token CPU SDPA's flash kernel costs ~2 ms a layer at batch 32, this ~0.3."""
    b, h, s, dh = q.shape
    kv = k.shape[1]
    g = h // kv
    scores = ((q * dh ** -0.5).reshape(b, kv, g * s, dh) @ k.transpose(-1, -2)).view(b, kv, g, s, -1)
    probs = scores.masked_fill(~mask[:, :, None], -math.inf).softmax(-1)
    return (probs.view(b, kv, g * s, -1) @ v).view(b, h, s, dh)


def layer_step(x: Float[torch.Tensor, "b s d"], w: LayerWeights, kc, vc, qpos: Int[torch.Tensor, " s"], cos, sin, mask,
               valid: Bool[torch.Tensor, "b s"], edits: LayerEdits, n_heads: int, n_kv: int, d_head: int, eps: float,
               upto: int | None = None):
    """One decoder layer with its edits at hook_resid_pre / attn_out / mlp_out / resid_post; writes the
    keys and values of positions `qpos` into the static caches kc, vc (attending to the first `upto`
    positions only when given: the prefill needs no more)."""
    b, s, _ = x.shape
    states = list(edits.states)
    x = edits.apply("hook_resid_pre", x, qpos, valid, states)
    qkv = linear(rms_norm(x, w.ln1, eps), w.wqkv, w.bqkv)
    q, k, v = qkv.split((n_heads * d_head, n_kv * d_head, n_kv * d_head), dim=-1)
    q = rope(q.view(b, s, n_heads, d_head).transpose(1, 2), cos, sin)
    kc.index_copy_(2, qpos, rope(k.view(b, s, n_kv, d_head).transpose(1, 2), cos, sin))
    vc.index_copy_(2, qpos, v.view(b, s, n_kv, d_head).transpose(1, 2))
    att = attend(q, kc, vc, mask) if upto is None else attend(q, kc[:, :, :upto], vc[:, :, :upto], mask)
    a = linear(att.transpose(1, 2).reshape(b, s, n_heads * d_head), w.wo)
    x = x + edits.apply("hook_attn_out", a, qpos, valid, states)
    gate, up = linear(rms_norm(x, w.ln2, eps), w.wgu).chunk(2, dim=-1)
    m = linear(F.silu(gate) * up, w.wdown)
    x = x + edits.apply("hook_mlp_out", m, qpos, valid, states)
    return edits.apply("hook_resid_post", x, qpos, valid, states), tuple(states)


def head_step(x: Float[torch.Tensor, "b d"], norm, lm_head, eps: float, sampler: "Sampler", seen, allow_eos):
    """Final norm, unembedding and the next-token draw."""
    logits = linear(rms_norm(x, norm, eps), lm_head)
    nxt, short = sampler(logits, seen, allow_eos)
    return nxt, short, logits


def layers_step(x: Float[torch.Tensor, "b s d"], ws: tuple, kcs: tuple, vcs: tuple, qpos: Int[torch.Tensor, " s"],
                cos, sin, mask, valid: Bool[torch.Tensor, "b s"], les: tuple, n_heads: int, n_kv: int, d_head: int,
                eps: float, upto: int | None = None):
    """Consecutive layers (a segment) in one call: compiled, a segment is one program, so the per-call
    overhead (~0.15 ms a layer at batch 1 here) is paid once per segment instead of once per layer."""
    states = []
    for w, kc, vc, le in zip(ws, kcs, vcs, les):
        x, st = layer_step(x, w, kc, vc, qpos, cos, sin, mask, valid, le, n_heads, n_kv, d_head, eps, upto)
        states.append(st)
    return x, tuple(states)


SEGMENT = 10  # layers per compiled call; a step at batch 1: 1 -> 25.5 ms, 6 -> 22.2, 10 -> 20.5 (17 s to compile), 30 -> 19.5 (71 s)


def forward(dm: DecodeModel, ids: Int[torch.Tensor, "b s"], qpos: Int[torch.Tensor, " s"], first: Int[torch.Tensor, " b"],
            caches: list[tuple[torch.Tensor, torch.Tensor]], edits: Edits, segment_fn=layers_step, upto: int | None = None,
            segment: int = SEGMENT) -> Float[torch.Tensor, "b s d"]:
    """The residual stream after the last layer; writes keys and values at `qpos` into the static caches.
    Layers run `segment` at a time through `segment_fn` (compiled: one program per segment structure,
    shared by every segment with the same edits and length)."""
    total = upto or caches[0][0].shape[2]
    x = F.embedding(ids, dm.embed)
    valid = qpos[None, :] > first[:, None]  # real text: no left padding, no attention sink
    le = edits.layer(-1)
    states = list(le.states)
    x = le.apply("hook_embed", x, qpos, valid, states)
    edits.update(le, tuple(states))
    cos, sin = rope_tables(dm.inv_freq, (qpos[None, :] - first[:, None]).clamp(min=0), x.dtype)
    mask = attention_mask(qpos, first, total)
    for i in range(0, len(dm.layers), segment):
        js = range(i, min(i + segment, len(dm.layers)))
        les = tuple(edits.layer(j) for j in js)
        x, states = segment_fn(x, tuple(dm.layers[j] for j in js), tuple(caches[j][0] for j in js),
                               tuple(caches[j][1] for j in js), qpos, cos, sin, mask, valid, les,
                               dm.n_heads, dm.n_kv, dm.d_head, dm.eps, upto)
        for le, st in zip(les, states):
            edits.update(le, st)
    return x


def batch_bucket(b: int) -> int:
    """Batch sizes the step is compiled for (rows past `b` are copies, discarded)."""
    return 1 << (b - 1).bit_length() if b <= 32 else -(-b // 32) * 32


def length_bucket(n: int, limit: int) -> int:
    """Static cache lengths: multiples of 64, at most the context (every step attends over the whole
    bucket: at batch 32 a 256-long one costs ~0.4 ms a layer more than a 64-long one here)."""
    return min(-(-n // 64) * 64, limit)


_STEP: dict[str, tuple] = {}  # device type -> the compiled (layers_step, head_step)
COMPILES: dict[tuple, float] = {}  # structure key -> seconds its first (compiling) call took


def compiled_steps(device_type: str) -> tuple:
    """(layers_step, head_step) compiled: one program per segment structure, shared by every segment with
    the same edits (weights are inputs), so a 30-layer model compiles like one segment of SEGMENT layers."""
    if device_type not in _STEP:
        # inductor's compiled kernels persist beside our other caches, so later processes start warm
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "inductor"))
        # CUDA graphs on GPU; on CPU a C++ wrapper around the kernels (less Python per call)
        kw = dict(mode="reduce-overhead") if device_type == "cuda" else dict(options={"cpp_wrapper": True})
        _STEP[device_type] = tuple(torch.compile(f, fullgraph=True, dynamic=False, **kw)
                                   for f in (layers_step, head_step))
    return _STEP[device_type]


def empty_caches(dm: DecodeModel, batch: int, total: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Zeroed static key and value caches, one pair per layer."""
    shape = (batch, dm.n_kv, total, dm.d_head)
    return [(torch.zeros(shape, dtype=dm.embed.dtype, device=device),
             torch.zeros(shape, dtype=dm.embed.dtype, device=device)) for _ in dm.layers]


@torch.no_grad()
def teacher_forced_logits(dm: DecodeModel, ids: Int[torch.Tensor, "b s"], attention_mask: Int[torch.Tensor, "b s"]
                          ) -> Float[torch.Tensor, "b s vocab"]:
    """Next-token logits at every position of left-padded `ids`, unsteered (eager, for comparisons)."""
    b, s = ids.shape
    x = forward(dm, ids, torch.arange(s, device=ids.device), (attention_mask == 0).sum(1),
                empty_caches(dm, b, s, ids.device), Edits.build([], s, s, b, ids.device), upto=s)
    return linear(rms_norm(x, dm.norm, dm.eps), dm.lm_head)


def padded_batch(ids: Int[torch.Tensor, "n s"], attention_mask: Int[torch.Tensor, "n s"]):
    """Rows up to the batch bucket (copies of the last row, discarded afterwards)."""
    extra = batch_bucket(ids.shape[0]) - ids.shape[0]
    if extra:
        ids = torch.cat([ids, ids[-1:].expand(extra, -1)])
        attention_mask = torch.cat([attention_mask, attention_mask[-1:].expand(extra, -1)])
    return ids, attention_mask


def make_sampler(vocab: int, stops: list[int], temperature: float, top_p: float, penalty: float, device) -> Sampler:
    eos = torch.zeros(vocab, dtype=torch.bool, device=device)
    eos[torch.tensor(stops, device=device)] = True
    f32 = dict(dtype=torch.float32, device=device)
    return Sampler(temperature <= 0, torch.tensor(max(temperature, 1e-6), **f32), torch.tensor(top_p, **f32),
                   torch.tensor(penalty, **f32), penalty != 1.0, eos)


@torch.no_grad()
def sample(dm: DecodeModel, ids: Int[torch.Tensor, "b s"], attention_mask: Int[torch.Tensor, "b s"], kernels: list,
           *, max_new_tokens: int, min_new_tokens: int, temperature: float, top_p: float, repetition_penalty: float,
           stops: list[int], pad_id: int, context: int, compiled: bool = True, trace: list | None = None,
           segment: int = SEGMENT) -> Int[torch.Tensor, "b n"]:
    """Generated tokens per row (pad after a row's stop token), like HF `generate` without the prompt.

    Prefill runs eagerly; each later token is one call of the layer and head steps, compiled unless
    `compiled=False`. `trace`, a list, receives each step's raw logits (tests compare them with eager)."""
    n0, s = ids.shape
    dev, dtype = ids.device, dm.embed.dtype
    ids, attention_mask = padded_batch(ids, attention_mask)
    b, total = ids.shape[0], length_bucket(s + max_new_tokens, context)
    first = (attention_mask == 0).sum(1)
    caches = empty_caches(dm, b, total, dev)
    edits = Edits.build(kernels, s, total, b, dev)
    sampler = make_sampler(dm.embed.shape[0], stops, temperature, top_p, repetition_penalty, dev)
    seen = torch.zeros(b, dm.embed.shape[0], dtype=torch.bool, device=dev)
    if sampler.use_penalty:
        seen.scatter_(1, ids, True)  # HF penalises every token of input_ids, left padding included
    segment_fn, head_fn = compiled_steps(dev.type) if compiled else (layers_step, head_step)
    key = (tuple(k.key() for k in kernels), segment, b, total, dtype, dev.type, sampler.greedy, sampler.use_penalty,
           len(dm.layers), tuple(dm.embed.shape), isinstance(dm.lm_head, Int8))
    out = torch.full((b, max_new_tokens), pad_id, dtype=torch.long, device=dev)
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    stop_ids = sampler.eos.nonzero().squeeze(1)
    n = 0
    with torch._dynamo.config.patch(recompile_limit=256, accumulated_recompile_limit=4096):
        for i in range(max_new_tokens):
            allow = torch.tensor(i >= min_new_tokens, device=dev)
            if i == 0:
                x = forward(dm, ids, torch.arange(s, device=dev), first, caches, edits, upto=s)
                nxt, short, logits = head_step(x[:, -1], dm.norm, dm.lm_head, dm.eps, sampler, seen, allow)
            else:
                t = time.perf_counter()
                x = forward(dm, nxt[:, None], torch.tensor([s + i - 1], device=dev), first, caches, edits, segment_fn,
                            segment=segment)
                nxt, short, logits = head_fn(x[:, -1], dm.norm, dm.lm_head, dm.eps, sampler, seen, allow)
                if compiled and i == 1 and key not in COMPILES:
                    COMPILES[key] = time.perf_counter() - t
                nxt = nxt.clone()  # CUDA graphs reuse their output buffers
            if trace is not None:
                trace.append(logits[:n0].float().clone())
            if short.any():
                nxt = sampler.redraw(nxt, short, logits, seen, allow)
            out[:, i] = nxt = torch.where(done, pad_id, nxt)
            n = i + 1
            if sampler.use_penalty:
                seen.scatter_(1, nxt[:, None], True)
            done |= torch.isin(nxt, stop_ids)
            if bool(done[:n0].all()):
                break
    return out[:n0, :n]
