"""`python scripts/train_sae.py ARGS` is `steerlens train ARGS`: flags and examples in
steerlens/commands/train.py
(`steerlens train --help`). `main(argv)` runs it in-process and returns its result."""

from steerlens.cli import run_command, script_entry


def main(argv: list[str] | None = None):
    return run_command("train", argv)


if __name__ == "__main__":
    raise SystemExit(script_entry("train"))
