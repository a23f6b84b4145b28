"""The one W&B set-up of SAE training, steering comparisons and capping: offline, quiet, torn down.

W&B runs offline unless the user set `WANDB_MODE` (or a caller passes `mode=`): runs land in
`<dir>/wandb/offline-run-*` and `wandb sync` uploads them later, so nothing needs a server.
`start_run` opens a run with quiet settings (no console capture, git, code, system stats or
requirements) and `finish_run` closes it and tears the W&B service down, so every file is on disk
and the next run (a later test) starts from its own environment. `read_offline_run` reads what an
offline run logged, for tests and reports.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

MODES = ("offline", "online", "disabled")


def wandb_module(quiet: bool = True):
    """`wandb`, imported with WANDB_MODE=offline unless the user chose a mode (and WANDB_SILENT if quiet)."""
    os.environ.setdefault("WANDB_MODE", "offline")
    if quiet:
        os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    return wandb


def start_run(*, mode: str | None = None, quiet: bool = True, **init):
    """`wandb.init(**init)` offline by default; a run already open in this process is finished first."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode={mode!r}: use one of {MODES} (offline needs no server).")
    wandb = wandb_module(quiet)
    if quiet:
        init["settings"] = wandb.Settings(silent=True, console="off", disable_git=True, save_code=False,
                                          x_disable_stats=True, x_disable_meta=True, x_save_requirements=False)
    return wandb.init(mode=mode, reinit="finish_previous", **init)


def finish_run(run=None, teardown: bool = True) -> None:
    """Finish `run` (default: the open one, if any), then wait until W&B has written its files."""
    import wandb

    run = run if run is not None else wandb.run
    if run is not None:
        run.finish()
    if teardown:
        wandb.teardown()  # wandb-core closes run logs asynchronously; this waits until they are on disk


def read_offline_run(run_dir: str | Path) -> dict:
    """Config, final summary and history rows of a run, read from its `run-*.wandb` transaction log.

    Offline runs keep everything in that log (a LevelDB-style record log of protobuf `Record`s)
    and W&B 0.31 ships no Python reader for it; this lets tests and reports check what was logged.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(run_dir).glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"No run-*.wandb log in {run_dir}; pass a wandb/offline-run-* directory.")
    run = {"name": None, "group": None, "config": {}, "summary": {}, "history": []}
    for raw in _records(files[0].read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run["name"], run["group"] = rec.run.display_name, rec.run.run_group
        if kind in ("run", "config"):
            cfg = rec.run.config if kind == "run" else rec.config
            run["config"].update({_key(u): json.loads(u.value_json) for u in cfg.update})
        elif kind == "summary":
            run["summary"].update({_key(u): json.loads(u.value_json) for u in rec.summary.update})
        elif kind == "history":
            run["history"].append({_key(i): json.loads(i.value_json) for i in rec.history.item})
    return run


def _records(data: bytes, block: int = 32768) -> list[bytes]:
    """The record payloads of a LevelDB-style log: 32 KiB blocks of (crc, length, kind) chunks."""
    pos, chunks, buf = 7, [], b""  # 7-byte ':W&B' header
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too short for a record header: padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        piece, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        buf = piece if kind in (1, 2) else buf + piece  # full / first / middle / last
        if kind in (1, 4):
            chunks.append(buf)
    return chunks


def _key(item) -> str:
    return ".".join(item.nested_key) if item.nested_key else item.key
