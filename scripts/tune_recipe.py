"""`python scripts/tune_recipe.py ARGS` is `steerlens recipe ARGS`: flags and examples in
steerlens/commands/recipe.py
(`steerlens recipe --help`). `main(argv)` runs it in-process and returns its result."""

from steerlens.cli import run_command, script_entry


def main(argv: list[str] | None = None, model=None):
    return run_command("recipe", argv, model=model)


if __name__ == "__main__":
    raise SystemExit(script_entry("recipe"))
