"""Flags several commands share, spelled the same everywhere (--model, --device, --sae, --out, --seed,
--batch-size, --no-wandb, --wandb, --wandb-project, --overwrite, --features), and their parsing."""

from __future__ import annotations

from lm.sources import EMBEDDED
from steerlens.errors import UsageError

CLI_KEYS = ("command", "debug", "target")  # namespace entries of the front end, not of the command


def add_model_args(ap, default: str | None = EMBEDDED, default_help: str | None = None) -> None:
    ap.add_argument("--model", default=default, help="model: 'smollm2-135m-instruct' (the embedded one), a HF "
                    f"directory, 'tiny' or a TransformerLens name (default: {default_help or default})")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")


def add_wandb_args(ap, default_mode: str | None = None, project: bool = True, old_names: bool = False) -> None:
    """--no-wandb everywhere; with a default mode also --wandb MODE. `old_names`: compare's earlier
    spellings --mode and --project still work."""
    from lm.tracking import MODES

    if default_mode is not None:
        names = ["--wandb", "--mode"] if old_names else ["--wandb"]
        ap.add_argument(*names, dest="wandb", choices=MODES, default=default_mode,
                        help=f"W&B mode (default {default_mode})")
        ap.add_argument("--no-wandb", dest="wandb", action="store_const", const="disabled", help="= --wandb disabled")
    else:
        ap.add_argument("--no-wandb", action="store_true", help="no W&B logging (default: offline unless configured)")
    if project:
        names = ["--wandb-project", "--project"] if old_names else ["--wandb-project"]
        ap.add_argument(*names, dest="wandb_project", default="steerlens", help="W&B project")


def add_overwrite_arg(ap, what: str = "the target") -> None:
    ap.add_argument("--overwrite", action="store_true", help=f"replace {what} if it exists (default: refuse)")


def parse_features(spec: list[str] | str | None) -> list[int] | None:
    """'0-9,42' or ['0-9', '42'] -> [0..9, 42]; None or empty -> None (every latent)."""
    if not spec:
        return None
    parts = [p for s in ([spec] if isinstance(spec, str) else spec) for p in s.split(",") if p.strip()]
    out = []
    for part in parts:
        a, _, b = part.strip().partition("-")
        try:
            out.extend(range(int(a), int(b) + 1) if b else [int(a)])
        except ValueError:
            raise UsageError(f"--features: {part!r} is not a latent id or range; write e.g. '7 12' or '0-99,512'")
    return out


def split_list(text: str) -> list[str]:
    """'a,b,,c' -> ['a', 'b', 'c'] (comma-separated flags)."""
    return [x.strip() for x in text.split(",") if x.strip()]


def own_args(args) -> dict:
    """The command's own flags as a dict (what it records beside its results)."""
    return {k: v for k, v in vars(args).items() if k not in CLI_KEYS}


def add_sweep_args(ap, strengths: str) -> None:
    """The flags `compare` uses: sweep, generation, scoring."""
    from steering.experiment import FAMILIES

    ap.add_argument("--strengths", default=strengths, help="comma-separated multiples of the max activation")
    ap.add_argument("--families", default=",".join(FAMILIES))
    add_eval_args(ap)


def add_eval_args(ap, max_new_tokens: int = 64, neutral_texts: int = 8) -> None:
    """The flags `clamp` and `compare` share: prompts, generation, scoring."""
    ap.add_argument("--n-prompts", type=int, default=None, help="first N prompts only (default all)")
    ap.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--repetition-penalty", type=float, default=1.1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--neutral-texts", type=int, default=neutral_texts)
    ap.add_argument("--neutral-max-tokens", type=int, default=96)


def sweep_settings(args):
    """(strengths, families, generation config) from the flags of `add_sweep_args`."""
    from lm.generate import GenerationConfig

    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                           batch_size=args.batch_size, repetition_penalty=args.repetition_penalty)
    try:
        strengths = [float(x) for x in split_list(args.strengths)]
    except ValueError:
        raise UsageError(f"--strengths: {args.strengths!r} is not a comma-separated list of numbers, e.g. 0,5,10")
    return strengths, split_list(args.families), gen


def parse_bool(text: str) -> bool:
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean; write true or false")


def add_config_flags(ap, cls) -> None:
    """One --flag per field of the config dataclass `cls` (booleans read true/false, not Python truth)."""
    import dataclasses

    for f in dataclasses.fields(cls):
        kind = parse_bool if type(f.default) is bool else type(f.default)
        ap.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default, metavar="V",
                        help=f"{f.name} (default {f.default})")


def config_from(args, cls):
    """The config dataclass `cls` built from the flags `add_config_flags` added."""
    import dataclasses

    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
