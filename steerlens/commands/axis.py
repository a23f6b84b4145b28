"""Compute the Assistant Axis for a model: rollouts, response-token activations, filter, axis, PCA.

Defaults are CPU-sized (4 roles per category x 2 system prompts x 8 questions, 48 new tokens:
~430 rollouts, ~10 min on 2 cores for SmolLM2). `--full` is the whole bank (124 roles x 3 prompts
x 48 questions, 128 new tokens): run it on a GPU. Rollouts and activations are cached in --out, so
an interrupted run resumes and a bigger run reuses a smaller one's rollouts. `--export DIR` copies
the artifact (no caches; transcripts only with --export-transcripts) e.g. to
axis/pretrained/smollm2-default (`steerlens export axis` writes other tools' formats).

    steerlens axis --out runs/axis/smollm2
    steerlens axis --full --device cuda --gen-batch-size 256 \
        --sae saes/pretrained/smollm2-default --out runs/axis/smollm2-full --export axis/pretrained/smollm2-default
    steerlens axis --full --n-questions 16 --max-new-tokens 48 --backend llama.cpp \
        --sae saes/pretrained/smollm2-default --out runs/axis/smollm2-full   # the shipped axis, on CPU
    steerlens axis --model tiny --roles-per-category 1 --n-questions 2 --max-new-tokens 8
    steerlens axis --full --n-questions 16 --max-new-tokens 48 --backend llama.cpp --engine-check-only \
        --out runs/axis/engine-check   # does llama.cpp sample as we do? (64 spread specs, both engines)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from axis.build import AxisConfig

from steerlens.commands.common import add_model_args
from steerlens.errors import UsageError

EXPORT = ["axis.safetensors", "axis.json", "config.json", "sae_axis.safetensors", "sae_axis.json",
          "axis_summary.png", "axis_summary.json"]


def add_arguments(ap) -> None:
    add_model_args(ap, default=AxisConfig.model)
    ap.add_argument("--out", default=None, help="run directory (default runs/axis/<model>)")
    ap.add_argument("--full", action="store_true", help="every role, prompt and question; 128 new tokens")
    ap.add_argument("--roles-per-category", type=int, default=None,
                    help=f"default {AxisConfig.roles_per_category}; every role with --full")
    ap.add_argument("--roles", nargs="+", default=None, help="explicit role names")
    ap.add_argument("--prompts-per-role", type=int, default=None,
                    help=f"default {AxisConfig.prompts_per_role}; all with --full")
    ap.add_argument("--n-questions", type=int, default=None, help=f"default {AxisConfig.n_questions}; all with --full")
    ap.add_argument("--backend", default=AxisConfig.backend,
                    help="rollout engine: hf, llama.cpp (starts llama-server; `make llama-cpp`) or a server URL")
    ap.add_argument("--engine-check-only", action="store_true",
                    help="only sample the engine check (--engine-check specs by hf and --backend; no axis), "
                         "write OUT/engine_check.json")
    ap.add_argument("--engine-check", type=int, default=AxisConfig.engine_check,
                    help=f"specs the engine check samples with both engines (default {AxisConfig.engine_check}; 0: skip)")
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--temperature", type=float, default=AxisConfig.temperature)
    ap.add_argument("--top-p", type=float, default=AxisConfig.top_p)
    ap.add_argument("--seed", type=int, default=AxisConfig.seed)
    ap.add_argument("--gen-batch-size", type=int, default=AxisConfig.gen_batch_size)
    ap.add_argument("--harvest-batch-size", type=int, default=AxisConfig.harvest_batch_size)
    ap.add_argument("--filter", default=AxisConfig.adherence_filter, choices=["assistant_lexicon", "none"])
    ap.add_argument("--drop-empty-roles", action="store_true", help="drop roles the filter empties instead of failing")
    ap.add_argument("--model-name", default=None, help="fills '{model_name}' in the default prompts")
    ap.add_argument("--sae", default=None, help="SAELens SAE directory: also compute the SAE-basis axis")
    ap.add_argument("--band-sae", nargs="+", default=[], metavar="DIR",
                    help="more SAEs (e.g. one per capping-band layer): their feature axes go to sae_band/<hook>/")
    ap.add_argument("--feature-stats", default=None, help="features analysis dir with latent labels")
    ap.add_argument("--export", default=None, help="copy the artifact here (e.g. axis/pretrained/smollm2-default)")
    ap.add_argument("--export-transcripts", action="store_true")


def export(run_dir: Path, dest: Path, transcripts: bool) -> None:
    """Copy the artifact (no caches) from a run directory to `dest`, with the rollouts' metadata."""
    from axis.sae_basis import BAND_DIR
    from lm.io import read_json, write_json

    dest.mkdir(parents=True, exist_ok=True)
    for f in EXPORT:
        if (run_dir / f).is_file():
            shutil.copy2(run_dir / f, dest / f)
    if (run_dir / BAND_DIR).is_dir():
        shutil.copytree(run_dir / BAND_DIR, dest / BAND_DIR, dirs_exist_ok=True)
    rows = read_json(run_dir / "transcripts.json")
    write_json(dest / "rollouts_meta.json", [{k: v for k, v in r.items() if k != "text"} for r in rows])
    if transcripts:
        shutil.copy2(run_dir / "transcripts.json", dest / "transcripts.json")


def check(args, ap) -> None:
    """Before the model loads: an engine check needs an engine to compare with ours."""
    if args.engine_check_only and args.backend == "hf":
        raise UsageError("--engine-check-only compares --backend with our sampler; give --backend llama.cpp or a URL.")
    if args.engine_check < 0:
        raise UsageError(f"--engine-check {args.engine_check}: give a number of specs >= 0.")


def axis_config(args) -> AxisConfig:
    full = args.full

    def pick(value, default):  # a given flag wins; --full means all, else the config's default
        return value if value is not None else (None if full else default)

    return AxisConfig(
        model=args.model, model_name=args.model_name,
        roles_per_category=pick(args.roles_per_category, AxisConfig.roles_per_category), roles=args.roles,
        prompts_per_role=pick(args.prompts_per_role, AxisConfig.prompts_per_role),
        n_questions=pick(args.n_questions, AxisConfig.n_questions), backend=args.backend,
        max_new_tokens=args.max_new_tokens or (128 if full else AxisConfig.max_new_tokens),
        temperature=args.temperature, top_p=args.top_p, seed=args.seed, gen_batch_size=args.gen_batch_size,
        harvest_batch_size=args.harvest_batch_size, adherence_filter=args.filter,
        drop_empty_roles=args.drop_empty_roles, engine_check=args.engine_check, sae=args.sae, band_saes=args.band_sae, feature_stats=args.feature_stats)


def summary(ax, out: Path) -> dict:
    """The numbers worth a glance: rollouts kept, PC1 agreement, filter effect, monitor AUROC, SAE recon."""
    s, mid = ax.stats, ax.n_layers // 2
    result = {"out": str(out), "n_rollouts": s["n_rollouts"], "n_roles": s["n_roles"],
              "kept_fraction": round(s["filter"]["kept_fraction"], 3), "monitor_layer": s["monitor_layer"],
              "cos_axis_pc1_min": round(min(s["pca"]["cos_axis_pc1"]), 3),
              "cos_axis_pc1_mid": round(s["pca"]["cos_axis_pc1"][mid], 3),
              "cos_filtered_unfiltered_min": round(min(s["filter"]["cos_axis_filtered_vs_unfiltered"]), 3),
              "auroc_monitor": round(s["separation"]["auroc"][s["monitor_layer"]], 3), "seconds": s["seconds"]}

    def recon_top20(fa):
        return dict(zip(fa.stats["recon_k"], fa.stats["recon_cos"])).get(20)

    if ax.feature is not None:
        result["sae_recon_cos_top20"] = recon_top20(ax.feature)
    for fa in ax.feature_band:
        result[f"sae_band_L{fa.layer}"] = {"recon_cos_top20": recon_top20(fa),
                                          "auroc": round(fa.stats["separation"]["auroc"], 3)}
    return result


def engine_check_only(model, cfg: AxisConfig, out: Path) -> dict:
    """The engine check alone (axis.build.check_engine), with its config, to OUT/engine_check.json."""
    from axis.build import check_engine
    from lm.io import write_json

    result = {"config": cfg.to_dict(), "check": check_engine(model, cfg)}
    write_json(out / "engine_check.json", result)
    print(json.dumps(result["check"]))
    return result


def run(args) -> dict:
    from axis.build import build_axis
    from lm.model import load_model

    cfg = axis_config(args)
    out = Path(args.out or f"runs/axis/{Path(str(args.model)).name}")
    model = load_model(args.model, device=args.device)
    if args.engine_check_only:
        return engine_check_only(model, cfg, out)
    ax = build_axis(model, cfg, out)
    if args.export:
        export(out, Path(args.export), args.export_transcripts)
    result = summary(ax, out)
    print(json.dumps(result))
    return result
