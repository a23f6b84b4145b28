"""`python scripts/cap.py ARGS` is `steerlens cap ARGS`: flags and examples in
steerlens/commands/cap.py
(`steerlens cap --help`). `main(argv)` runs it in-process and returns its result."""

from steerlens.cli import run_command, script_entry


def main(argv: list[str] | None = None):
    return run_command("cap", argv)


if __name__ == "__main__":
    raise SystemExit(script_entry("cap"))
