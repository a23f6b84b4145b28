"""`python scripts/run_notebooks.py ARGS` is `steerlens notebooks ARGS`: flags and examples in
steerlens/commands/notebooks.py
(`steerlens notebooks --help`). `main(argv)` runs it in-process and returns its result."""

from steerlens.cli import run_command, script_entry
from steerlens.commands.notebooks import run_notebook as run  # noqa: F401  (tests call run)


def main(argv: list[str] | None = None):
    return run_command("notebooks", argv)


if __name__ == "__main__":
    raise SystemExit(script_entry("notebooks"))
