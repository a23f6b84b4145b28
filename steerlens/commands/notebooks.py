"""Execute notebooks in place so their committed outputs are fresh (full settings by default).

    steerlens notebooks                                   # every notebook under notebooks/
    steerlens notebooks notebooks/golden_gate.ipynb --small --out /tmp/nb

`--small` sets STEERLENS_NOTEBOOK_SMALL=1 (what the tests use) and writes to --out instead of in place.
Needs the dev extras (nbclient, nbformat, ipykernel: `pip install -e .[dev]`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from steerlens.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]


def add_arguments(ap) -> None:
    ap.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: every one under notebooks/)")
    ap.add_argument("--small", action="store_true", help="small settings (STEERLENS_NOTEBOOK_SMALL=1); needs --out")
    ap.add_argument("--out", type=Path, help="directory for executed copies (default: in place; required with --small)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per cell")


def run_notebook(path: Path, small: bool = False, timeout: int = 3600, out: Path | None = None) -> Path:
    """Execute one notebook from its own directory; write it (atomically) to `out` or in place."""
    import nbformat
    from nbclient import NotebookClient

    from lm.io import atomic_path

    nb = nbformat.read(path, as_version=4)
    os.environ["STEERLENS_NOTEBOOK_SMALL"] = "1" if small else "0"
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    dest = out or path
    with atomic_path(dest) as tmp:
        nbformat.write(nb, str(tmp))
    return dest


def run(args) -> list[Path]:
    if args.small and args.out is None:
        raise UsageError("--small runs would overwrite the committed full-settings outputs; give --out DIR.")
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    if not paths:
        raise UsageError(f"no notebooks under {ROOT / 'notebooks'}; give the notebook paths to run")
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise UsageError(f"no such notebook: {', '.join(missing)}")
    done = []
    for path in paths:
        t = time.time()
        dest = run_notebook(path, args.small, args.timeout, args.out / path.name if args.out else None)
        print(f"{path} -> {dest} ({time.time() - t:.0f} s)", flush=True)
        done.append(dest)
    return done
