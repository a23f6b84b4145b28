"""Atomic file writes and cross-process cache locks.

Writes go beside the target under a temp name and are renamed over it, so an interrupted run never
leaves a half-written cache, checkpoint or artifact behind. Caches are built under `file_lock`, so
two processes that need the same cache at once (two notebooks, torchrun ranks, a parallel test run)
build it once: the second waits, then finds it built.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process lock; the atomic renames still keep caches whole
    fcntl = None

_HELD = threading.local()  # lock files this thread holds (a nested lock on one of them is a no-op)


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temp path in the target's directory; on success it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; artifacts should read like any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")


def read_json(path: str | Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_tensors(path: str | Path, tensors: dict, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def check_target(path: str | Path, overwrite: bool = False) -> Path:
    """An export target that does not exist yet (or may be replaced): refuse rather than clobber."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another path or pass --overwrite to replace it.")
    return path


@contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False):
    """Yield a temp directory beside `path`; on success it becomes `path` (replacing it if `overwrite`)."""
    import shutil

    path = check_target(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        _install_dir(tmp, path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_TAKEN = (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR)  # rename(2): something is already at the target


def _install_dir(tmp: Path, path: Path, overwrite: bool, attempts: int = 20) -> None:
    """Rename `tmp` to `path`. Another process may install `path` meanwhile: without `overwrite`
    that is refused (nothing replaced); with it the last install wins (no `Directory not empty`)."""
    import shutil

    for _ in range(attempts):
        try:
            os.rename(tmp, path)  # replaces at most an empty directory
            return
        except OSError as e:
            if e.errno not in _TAKEN:
                raise
        if not overwrite:
            raise FileExistsError(f"{path} was created by another process while this one was writing it; "
                                  "nothing was replaced. Choose another path or pass --overwrite to replace it.")
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
        try:
            os.replace(path, old / path.name)
        except FileNotFoundError:
            pass  # another process moved it aside first: rename again
        finally:
            shutil.rmtree(old, ignore_errors=True)
    raise OSError(f"Could not install {path}: other processes kept replacing it ({attempts} tries).")


def lock_file(path: str | Path) -> Path:
    """The lock file that guards `path`: a hidden file beside it, removed when the lock is released."""
    path = Path(os.path.abspath(path))  # "runs/feat/." and "runs/feat" share one lock
    return path.parent / f".{path.name}.lock"


@contextmanager
def file_lock(path: str | Path):
    """Hold an exclusive lock (`fcntl.flock`) guarding `path` against every process on this machine.

    The kernel drops it when the block ends or the process dies, so a killed run leaves no stale
    lock (at most a harmless lock file, which the next holder reuses and removes). Nested use on the same path in one thread does not deadlock; a process that has to wait
    says on stderr what it waits for."""
    lock = lock_file(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    key = str(lock.resolve())
    held = _HELD.__dict__.setdefault("paths", set())
    if key in held or fcntl is None:
        yield lock
        return
    f = _acquire(lock, path)
    held.add(key)
    try:
        yield lock
    finally:
        held.discard(key)
        lock.unlink(missing_ok=True)  # while still held: a waiter on this file sees it gone and retries
        f.close()  # releases the lock


def _acquire(lock: Path, path) -> IO:
    """An open, flock-ed handle on the file now at `lock` (retrying if a holder removed it meanwhile)."""
    said = False
    while True:
        f = open(lock, "a")
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not said:
                    print(f"steerlens: waiting for another process to finish {path} (lock {lock})",
                          file=sys.stderr, flush=True)
                    said = True
                fcntl.flock(f, fcntl.LOCK_EX)
            st = os.fstat(f.fileno())
            try:
                now = os.stat(lock)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev):
                return f
        except BaseException:
            f.close()
            raise
        f.close()


def build_once(path: str | Path, write: Callable[[Path], None], marker: str) -> Path:
    """The cache directory `path`, built by `write(tmp)` once across processes.

    It counts as built when `path / marker` exists; otherwise, under `file_lock(path)`, the first
    process builds it atomically (a stale, unmarked directory is replaced) and the others wait and
    then use it."""
    path = Path(path)
    if (path / marker).exists():
        return path
    with file_lock(path):
        if not (path / marker).exists():
            with atomic_dir(path, overwrite=True) as tmp:
                write(tmp)
    return path
