"""`python scripts/build_corpus.py ARGS` is `steerlens corpus ARGS`: flags and examples in
steerlens/commands/corpus.py
(`steerlens corpus --help`). `main(argv)` runs it in-process and returns its result."""

from steerlens.cli import run_command, script_entry


def main(argv: list[str] | None = None):
    return run_command("corpus", argv)


if __name__ == "__main__":
    raise SystemExit(script_entry("corpus"))
