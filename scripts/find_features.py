"""`python scripts/find_features.py ARGS` is `steerlens find ARGS`: flags and examples in
steerlens/commands/find.py
(`steerlens find --help`). `main(argv)` runs it in-process and returns its result."""

from steerlens.cli import run_command, script_entry


def main(argv: list[str] | None = None):
    return run_command("find", argv)


if __name__ == "__main__":
    raise SystemExit(script_entry("find"))
