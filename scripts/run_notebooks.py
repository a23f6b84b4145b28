"""Execute notebooks in place so their committed outputs are fresh (full settings by default).

    python scripts/run_notebooks.py                       # every notebook under notebooks/
    python scripts/run_notebooks.py notebooks/golden_gate.ipynb --small

`--small` sets STEERLENS_NOTEBOOK_SMALL=1 (what the tests use) and writes to --out instead of in place.
"""

import argparse
import os
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from lm.io import atomic_path

ROOT = Path(__file__).resolve().parent.parent


def run(path: Path, small: bool = False, timeout: int = 3600, out: Path | None = None) -> Path:
    """Execute one notebook from its own directory; write it (atomically) to `out` or in place."""
    nb = nbformat.read(path, as_version=4)
    os.environ["STEERLENS_NOTEBOOK_SMALL"] = "1" if small else "0"
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    dest = out or path
    with atomic_path(dest) as tmp:
        nbformat.write(nb, str(tmp))
    return dest


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--out", type=Path, help="directory for executed copies (default: in place; required with --small)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = ap.parse_args(argv)
    if args.small and args.out is None:
        raise SystemExit("--small runs would overwrite the committed full-settings outputs; give --out DIR.")
    for path in args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb")):
        t = time.time()
        dest = run(path, args.small, args.timeout, args.out / path.name if args.out else None)
        print(f"{path} -> {dest} ({time.time() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
