"""`python scripts/choose_layer.py ARGS` is `steerlens layer-scan ARGS`: flags and examples in
steerlens/commands/layer_scan.py
(`steerlens layer-scan --help`). `main(argv)` runs it in-process and returns its result."""

from steerlens.cli import run_command, script_entry


def main(argv: list[str] | None = None):
    return run_command("layer-scan", argv)


if __name__ == "__main__":
    raise SystemExit(script_entry("layer-scan"))
