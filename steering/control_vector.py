"""llama.cpp / repeng control vectors (GGUF) from raw `Add`s, and back.

The file (read by llama.cpp's `common_control_vector_load_one`, written by its cvector-generator and
by repeng's `ControlVector.export_gguf`) is a GGUF with `general.architecture` "controlvector",
`controlvector.model_hint` (the model's GGUF architecture, e.g. "llama"),
`controlvector.layer_count` (llama.cpp writes n_layers - 1, the blocks it can steer) and one 1-D F32
tensor `direction.N` of length d_model per steered layer. llama.cpp adds scale x direction.N to the
output of block N (0-based: right after the block's last residual add, at every position, prompt
included), which is TransformerLens `blocks.N.hook_resid_post`; it rejects N = 0, so block 0 cannot
be steered, and sums directions given twice. repeng's layer N is the same block (the output of
`model.layers[N]`). So `Add(hook, v, alpha)` is written as direction.N = alpha x v, and
`--control-vector-scaled FILE s` runs it at s x alpha; reading gives `Add(hook, direction, scale)`.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float

from lm.io import atomic_path, check_target
from steering.intervention import Intervention, Steering, check_finite
from steering.vectors import Add

ARCH = "controlvector"
HINT_KEY, COUNT_KEY = f"{ARCH}.model_hint", f"{ARCH}.layer_count"
_HOOK = re.compile(r"blocks\.(\d+)\.hook_resid_post")
_DIRECTION = re.compile(r"direction\.(\d+)")


def _leaves(x: Intervention) -> list[Intervention]:
    return [leaf for y in x.interventions for leaf in _leaves(y)] if isinstance(x, Steering) else [x]


def cvec_layer(hook: str) -> int:
    """The block N a control vector's direction.N steers, from `blocks.N.hook_resid_post`."""
    m = _HOOK.fullmatch(hook) if isinstance(hook, str) else None
    if m is None:
        raise ValueError(f"llama.cpp control vectors add to a block's output, blocks.N.hook_resid_post; {hook!r} "
                         "is another hook (for blocks.N.hook_resid_pre use blocks.{N-1}.hook_resid_post).")
    return int(m.group(1))


def control_directions(steering: Intervention) -> dict[int, Float[torch.Tensor, " d"]]:
    """{block N: alpha x vector summed over the Adds at that block} of an `Add` or `Steering` of Adds."""
    if not isinstance(steering, Intervention):
        raise TypeError(f"Expected an Add or a Steering of Adds, got {type(steering).__name__}.")
    out: dict[int, torch.Tensor] = {}
    for x in _leaves(steering):
        if not isinstance(x, Add):
            raise ValueError(f"A control vector holds only raw adds; {type(x).__name__} cannot be written as one "
                             "(export its effect as an Add, e.g. the feature's decoder row).")
        if x.positions != "all":
            raise ValueError(f"The Add at {x.hook} acts on positions={x.positions!r}, but llama.cpp adds a control "
                             "vector at every position (prompt included): only positions='all' can be exported.")
        n = cvec_layer(x.hook)
        if n == 0:
            raise ValueError("llama.cpp cannot steer block 0 (it rejects direction.0): move the Add to "
                             "blocks.1.hook_resid_post or later.")
        delta = x.alpha * x.vector.double()
        if out and len(delta) != len(next(iter(out.values()))):
            raise ValueError(f"The Adds have vectors of different sizes ({len(delta)} at {x.hook}); one model, one d_model.")
        out[n] = out[n] + delta if n in out else delta
    if not out:
        raise ValueError("Nothing to export: the Steering holds no Add.")
    return {n: v.float() for n, v in sorted(out.items())}


def model_hint(model) -> str:
    """The GGUF architecture name of `model`: its HF `model_type` ("llama" for SmolLM2), else its
    architecture class without the head ("LlamaForCausalLM" -> "llama")."""
    hf = getattr(getattr(model, "original_model", None), "config", None)
    if getattr(hf, "model_type", None):
        return str(hf.model_type)
    arch = getattr(model.cfg, "original_architecture", None) or getattr(model.cfg, "architecture", None) or "unknown"
    return re.sub(r"For(CausalLM|ConditionalGeneration)$", "", str(arch)).lower()


def write_control_vector(steering: Intervention, path: str | Path, model_hint: str, n_layers: int,
                         overwrite: bool = False) -> Path:
    """Write an `Add` (or `Steering` of Adds at blocks.N.hook_resid_post) as a llama.cpp control
    vector for a model with `n_layers` blocks; refuses an existing `path` unless `overwrite`."""
    import gguf

    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 2:
        raise ValueError(f"n_layers must be the model's block count (an int >= 2), got {n_layers!r}.")
    if not isinstance(model_hint, str) or not model_hint:
        raise ValueError("model_hint must name the model's architecture, e.g. 'llama'.")
    dirs = control_directions(steering)
    beyond = [n for n in dirs if n >= n_layers]
    if beyond:
        raise ValueError(f"Block(s) {beyond} do not exist in a model with {n_layers} blocks (0..{n_layers - 1}).")
    path = check_target(path, overwrite)
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(str(tmp), ARCH)
        w.add_string(HINT_KEY, model_hint)
        w.add_int32(COUNT_KEY, n_layers - 1)  # as llama.cpp's cvector-generator: the steerable blocks 1..n-1
        for n, v in dirs.items():
            w.add_tensor(f"direction.{n}", v.numpy().astype(np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path


def _field(reader, key: str):
    f = reader.get_field(key)
    return None if f is None else f.contents()


def _read_directions(reader, path: Path) -> dict[int, np.ndarray]:
    import gguf

    dirs = {}
    for t in reader.tensors:
        m = _DIRECTION.fullmatch(t.name)
        if m is None:
            raise ValueError(f"{path}: tensor {t.name!r} is not a control-vector direction (direction.N).")
        if int(m.group(1)) == 0:
            raise ValueError(f"{path}: direction.0 is invalid (llama.cpp cannot steer block 0).")
        if t.tensor_type != gguf.GGMLQuantizationType.F32 or len(t.shape) != 1:
            raise ValueError(f"{path}: {t.name} must be a 1-D F32 tensor, got {t.tensor_type.name} {list(t.shape)}.")
        dirs[int(m.group(1))] = np.array(t.data, dtype=np.float32).reshape(-1)
    if not dirs:
        raise ValueError(f"{path} holds no direction.N tensors.")
    if len({len(v) for v in dirs.values()}) != 1:
        raise ValueError(f"{path}: directions of different lengths {sorted({len(v) for v in dirs.values()})}.")
    return dict(sorted(dirs.items()))


def _check_model(dirs: dict, count, path: Path, model) -> None:
    d, n = len(next(iter(dirs.values()))), model.cfg.n_layers
    if d != model.cfg.d_model:
        raise ValueError(f"{path} is a control vector for d_model={d}; the model has d_model={model.cfg.d_model}.")
    if max(dirs) >= n:
        raise ValueError(f"{path} steers block {max(dirs)}; the model has {n} blocks (0..{n - 1}).")
    if count is not None and count not in (n - 1, len(dirs)):
        raise ValueError(f"{path} is a control vector for a model with {count + 1} layers "
                         f"(controlvector.layer_count={count}); the model has {n} layers.")


def read_control_vector(path: str | Path, model=None, scale: float = 1.0) -> Steering:
    """A llama.cpp / repeng control vector as a `Steering` of `Add(blocks.N.hook_resid_post,
    direction.N, alpha=scale)`, one per direction, checked against `model` when given."""
    import gguf

    path = Path(path)
    scale = check_finite(scale, "scale")
    if not path.is_file():
        raise FileNotFoundError(f"No control vector at {path}.")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, struct.error) as e:
        raise ValueError(f"{path} is not a GGUF file ({e}).") from None
    arch = _field(reader, "general.architecture")
    if arch != ARCH:
        raise ValueError(f"{path} is a GGUF of architecture {arch!r}, not a control vector ({ARCH!r}).")
    dirs = _read_directions(reader, path)
    count = _field(reader, COUNT_KEY)
    if model is not None:
        _check_model(dirs, None if count is None else int(count), path, model)
    return Steering([Add(f"blocks.{n}.hook_resid_post", torch.from_numpy(v.copy()), alpha=scale)
                     for n, v in dirs.items()])
