"""`python scripts/demo.py ARGS` is `steerlens demo ARGS`: flags and examples in
steerlens/commands/demo.py
(`steerlens demo --help`). `main(argv)` runs it in-process and returns its result."""

from steerlens.cli import run_command, script_entry


def main(argv: list[str] | None = None, model=None):
    return run_command("demo", argv, model=model)


if __name__ == "__main__":
    raise SystemExit(script_entry("demo"))
