"""`python scripts/eval_sae.py ARGS` is `steerlens eval ARGS`: flags and examples in
steerlens/commands/eval.py
(`steerlens eval --help`). `main(argv)` runs it in-process and returns its result."""

from steerlens.cli import run_command, script_entry


def main(argv: list[str] | None = None):
    return run_command("eval", argv)


if __name__ == "__main__":
    raise SystemExit(script_entry("eval"))
