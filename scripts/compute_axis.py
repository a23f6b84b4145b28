"""`python scripts/compute_axis.py ARGS` is `steerlens axis ARGS`: flags and examples in
steerlens/commands/axis.py
(`steerlens axis --help`). `main(argv)` runs it in-process and returns its result."""

from steerlens.cli import run_command, script_entry


def main(argv: list[str] | None = None):
    return run_command("axis", argv)


if __name__ == "__main__":
    raise SystemExit(script_entry("axis"))
