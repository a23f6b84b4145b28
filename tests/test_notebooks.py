"""Every notebook executes end to end with small settings (STEERLENS_NOTEBOOK_SMALL=1)."""

from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_exist():
    assert {p.name for p in NOTEBOOKS} >= {"golden_gate.ipynb", "sycophancy.ipynb", "assistant_axis.ipynb"}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    from scripts.run_notebooks import run

    monkeypatch.setenv("STEERLENS_NOTEBOOK_SMALL", "1")
    out = run(path, small=True, timeout=900, out=tmp_path / path.name)
    nb = nbformat.read(out, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code), "a cell did not run"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert any(o.output_type in ("display_data", "execute_result") for c in code for o in c.outputs)


def test_committed_notebooks_have_outputs():
    """The committed notebooks carry the outputs of a full-settings run."""
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.outputs for c in code), f"{path.name}: run scripts/run_notebooks.py {path} and commit"
        assert not any("small settings" in o.get("text", "") for c in code for o in c.outputs), path.name
