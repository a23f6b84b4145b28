"""`python scripts/clamp.py ARGS` is `steerlens clamp ARGS`: flags and examples in
steerlens/commands/clamp.py
(`steerlens clamp --help`). `main(argv)` runs it in-process and returns its result."""

from steerlens.cli import run_command, script_entry


def main(argv: list[str] | None = None, model=None):
    return run_command("clamp", argv, model=model)


if __name__ == "__main__":
    raise SystemExit(script_entry("clamp"))
