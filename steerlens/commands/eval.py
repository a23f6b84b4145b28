"""Evaluate an SAE on held-out tokens: L0, FVU, explained variance, CE-loss recovered, delta LM loss,
dead/dense latent fractions; then on whole held-out chats from position 0 (FVU on all tokens and on
the ordinary ones, massive activations counted apart, CE recovered) and the quality bar; writes JSON
and a feature-density histogram PNG beside it.

    steerlens eval saes/pretrained/smollm2-default
    steerlens eval saes/pretrained/smollm2-default --update-metrics  # re-measure into its metrics.json
    steerlens eval /tmp/sae --data notes.txt --tokens 4096 --out /tmp/sae_eval.json
    steerlens eval saes/pretrained/smollm2-default --saebench       # + SAEBench core JSON beside it
    steerlens eval sae_lens:RELEASE/SAE_ID --model NAME --data SOURCE   # an SAELens registry SAE

With a `train_config.json` beside the SAE (ours), the model, data and held-out split are the ones
training held out; flags override them. The chats are the conversations of that data sharing no
token with a training row; without a train_config.json (or with other --data) the training data is
unknown, so they are the first --chats conversations of --data; --chats-from FILE.jsonl picks them
(taken as held out, unchecked); --chats 0 skips them. The metrics are printed as JSON on the last line.
"""

from __future__ import annotations

import json
from pathlib import Path

from steerlens.commands.common import add_model_args
from steerlens.errors import UsageError


def add_arguments(ap) -> None:
    from saes.chat_eval import ChatEvalConfig
    from saes.eval import EvalConfig

    ap.add_argument("sae", help="SAE directory (cfg.json + sae_weights.safetensors) or sae_lens:RELEASE/SAE_ID")
    add_model_args(ap, default=None, default_help="from train_config.json")
    ap.add_argument("--data", help="text source (default: from train_config.json, else 'default')")
    ap.add_argument("--hook", help="hook to splice at (default: the SAE's hook_name)")
    ap.add_argument("--tokens", type=int, help="held-out tokens to evaluate on")
    ap.add_argument("--context-size", type=int)
    ap.add_argument("--batch-size", type=int, default=EvalConfig.batch_size)
    ap.add_argument("--chats", type=int, default=ChatEvalConfig.n_chats,
                    help=f"held-out chats to evaluate from position 0 (default {ChatEvalConfig.n_chats}; 0: skip)")
    ap.add_argument("--chats-from", metavar="SOURCE", help="take the chats from this .jsonl/.txt/... instead")
    ap.add_argument("--massive-factor", type=float, default=ChatEvalConfig.massive_factor,
                    help="a chat token above this x the median norm is massive: counted, not spliced "
                         f"(default {ChatEvalConfig.massive_factor})")
    ap.add_argument("--chat-batch-size", type=int, default=ChatEvalConfig.batch_size)
    ap.add_argument("--out", help="metrics JSON path (default: <sae>/eval.json); the PNG goes beside it")
    ap.add_argument("--update-metrics", action="store_true",
                    help="merge the results into <sae>/metrics.json (atomically, keeping its training "
                         "section) and redraw <sae>/density.png, instead of writing eval.json")
    ap.add_argument("--saebench", nargs="?", const=True, default=None, metavar="PATH",
                    help="also write SAEBench-style core metrics (default path: saebench_core.json beside --out)")


def run(args) -> dict:
    from lm.io import read_json, write_json
    from lm.model import load_model
    from saes.chat_eval import ChatEvalConfig
    from saes.eval import evaluate_dir, plot_density

    sae_dir = Path(args.sae)
    registry = args.sae.startswith("sae_lens:")
    if registry and not args.out:
        raise UsageError("a registry SAE has no directory to write eval.json into; give --out PATH.json")
    if args.update_metrics and (registry or args.out):
        raise UsageError("--update-metrics writes <sae>/metrics.json of a local SAE directory; drop --out "
                         "(or --update-metrics)")
    if args.chats < 0:
        raise UsageError(f"--chats must be >= 0, got {args.chats}")
    out = sae_dir / "metrics.json" if args.update_metrics else Path(args.out) if args.out else sae_dir / "eval.json"
    saebench = out.with_name("saebench_core.json") if args.saebench is True else args.saebench
    model = load_model(args.model, device=args.device) if args.model else None
    chats = ChatEvalConfig(args.chats, args.massive_factor, args.chat_batch_size)
    metrics, _ = evaluate_dir(args.sae, model, args.data, args.tokens, args.hook, args.batch_size,
                              args.context_size, args.device, saebench=saebench, chats=chats,
                              chats_from=args.chats_from)
    png = out.with_name("density.png") if args.update_metrics else out.with_suffix(".png")
    plot_density(metrics, png, title=sae_dir.name)
    metrics.pop("feature_density")
    if args.update_metrics and out.is_file():
        metrics = {**read_json(out), **metrics}  # keeps "training" (and anything else it alone holds)
    write_json(out, metrics)
    print(json.dumps(metrics))
    return metrics
