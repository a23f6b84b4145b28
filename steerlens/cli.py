"""`steerlens COMMAND ...`: one command with a subcommand per job (`steerlens --help` lists them).

Bad input (a library input error, see `steerlens.errors`, or a bad flag) ends in one line on stderr,
`steerlens: error: <message>`, and exit code 2; `steerlens --debug COMMAND ...` prints the traceback
first. Only the chosen command's module is imported, so `steerlens --help` stays fast.
scripts/X.py call `run_command` (errors propagate to their callers, as they always did).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from steerlens.commands import COMMANDS
from steerlens.errors import UsageError, is_input_error, one_line

PROG = "steerlens"
DESCRIPTION = "SAE feature steering and the Assistant Axis on TransformerLens and SAELens: one subcommand per job."
EPILOG = ("`steerlens COMMAND --help` shows a command's flags and examples. Bad input ends in one line "
          "`steerlens: error: ...` (exit code 2); `steerlens --debug COMMAND ...` shows the traceback.")


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors raise UsageError (one line, exit code 2) instead of printing the usage."""

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def new_parser(prog: str, description: str | None = None) -> ArgumentParser:
    return ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_debug_flag(ap: argparse.ArgumentParser) -> None:
    """--debug after the command too (the top-level flag is the documented one)."""
    ap.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback on error")


def command_module(name: str):
    return importlib.import_module(COMMANDS[name][0])


def build_parser(chosen: str | None) -> tuple[ArgumentParser, ArgumentParser | None]:
    """The top-level parser, with the flags of the `chosen` command only; (parser, chosen's subparser)."""
    ap = ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                        formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=20))
    ap.add_argument("--debug", action="store_true", help="show the full traceback when a command fails")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    chosen_parser = None
    for name, (_, summary) in COMMANDS.items():
        if name != chosen:
            sub.add_parser(name, help=summary, description=summary)
            continue
        module = command_module(name)
        chosen_parser = sub.add_parser(name, help=summary, description=module.__doc__,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(chosen_parser)
        add_debug_flag(chosen_parser)
    return ap, chosen_parser


def chosen_command(argv: list[str]) -> str | None:
    """The first word that is not a flag (the top-level flags take no values)."""
    return next((a for a in argv if not a.startswith("-")), None)


def fail(e: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(e)
    print(f"{PROG}: error: {one_line(e)}", file=sys.stderr, flush=True)
    return 2


def main(argv: list[str] | None = None) -> int:
    """The `steerlens` console entry point; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = False
    try:
        ap, sub = build_parser(chosen_command(argv))
        args = ap.parse_args(argv)
        debug = args.debug
        if args.command is None:
            raise UsageError("no command given; `steerlens --help` lists the commands")
        module = command_module(args.command)
        if hasattr(module, "check"):
            module.check(args, sub)
        module.run(args)
        return 0
    except SystemExit as e:  # --help / --version exit 0; UsageError and SystemExit("message") are errors
        if not isinstance(e, UsageError) and (e.code is None or isinstance(e.code, int)):
            return e.code or 0
        return fail(e, debug)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not is_input_error(e):
            raise
        return fail(e, debug)


def run_command(name: str, argv: list[str] | None = None, **kw):
    """Parse `argv` as `steerlens NAME` would and run it; returns what the command returns, errors raise.
    What scripts/X.py `main(argv)` is (their tests call it in-process)."""
    module = command_module(name)
    ap = new_parser(f"{PROG} {name}", module.__doc__)
    module.add_arguments(ap)
    add_debug_flag(ap)
    args = ap.parse_args(argv)
    if hasattr(module, "check"):
        module.check(args, ap)
    return module.run(args, **kw)


def script_entry(name: str) -> int:
    """`python scripts/X.py ARGS` as `steerlens NAME ARGS` (same one-line errors and exit codes)."""
    return main([name, *sys.argv[1:]])
