"""`python scripts/feature_dashboards.py ARGS` is `steerlens dashboards ARGS`: flags and examples in
steerlens/commands/dashboards.py
(`steerlens dashboards --help`). `main(argv)` runs it in-process and returns its result."""

from steerlens.cli import run_command, script_entry


def main(argv: list[str] | None = None):
    return run_command("dashboards", argv)


if __name__ == "__main__":
    raise SystemExit(script_entry("dashboards"))
