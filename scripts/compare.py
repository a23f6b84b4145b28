"""`python scripts/compare.py ARGS` is `steerlens compare ARGS`: flags and examples in
steerlens/commands/compare.py
(`steerlens compare --help`). `main(argv)` runs it in-process and returns its result."""

from steerlens.cli import run_command, script_entry


def main(argv: list[str] | None = None, model=None):
    return run_command("compare", argv, model=model)


if __name__ == "__main__":
    raise SystemExit(script_entry("compare"))
