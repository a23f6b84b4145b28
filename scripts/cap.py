"""Evaluate activation capping on the Assistant Axis without an external judge (W&B offline).

For the uncapped model and every cap setting (raw basis: each band x percentile; SAE basis: each
percentile) it measures, on the same prompts and seeds:
- identity: on held-out persona prompts x identity questions, the share of answers the assistant
  lexicon marks as an AI/assistant vs. a human or another being (axis/data/identity_patterns.json);
- persona jailbreaks: the refusal-or-redirect rate (the same file's refusal lexicon);
- capability: teacher-forced NLL on held-out default-Assistant answers (sampled once from the
  uncapped model), multiple-choice accuracy by log-prob scoring, KL(capped || clean) on neutral text
  (steering.metrics.NeutralKL, as in the steering comparisons);
- cap activity: the share of response tokens on which each cap fired, on ordinary assistant answers
  (should be small) and on the persona answers.
Then steering along the axis (Add at a middle layer, multiples of the mean residual norm) with the
identity rate vs. strength, and the drift plot redone with capping on.

    .venv/bin/python scripts/cap.py --axis axis/pretrained/smollm2-default --out runs/cap/smollm2
    .venv/bin/python scripts/cap.py --model tiny --axis runs/axis/tiny --small     # smoke test
    .venv/bin/python scripts/cap.py ... --parts steering --strengths -0.5 0 0.5   # redo one part, keep the rest
    .venv/bin/python scripts/cap.py ... --bands 15 --windows 32 --gains 4 8      # windowed caps (steering.window)
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch

from lm.chat import as_conversation
from lm.corpus import load_prompt_bank
from lm.generate import GenerationConfig, generate
from lm.io import read_json, write_json
from steering import Add
from steering.window import check_window

from axis import data
from axis.artifact import AssistantAxis
from axis.build import open_model
from axis.capping import CapConfig, cap_activity, capping, parse_band
from axis.drift import DriftConfig, monitor_layer, plot_drift, run_drift
from axis.evals import (NeutralKL, answers, identity_rates, mc_accuracy, mean_resid_norm, refusal_rate, response_nll,
                        text_nll)

PARTS = ("caps", "steering", "drift")
SMALL = dict(n_personas=2, n_identity_questions=2, n_plain=2, n_jailbreaks=3, n_mc=4, n_nll=3, n_neutral=2,
             max_new_tokens=8, strengths=[-1.0, 0.0, 1.0], n_steer_personas=1, drift_per_domain=1, drift_turns=2,
             drift_new_tokens=8)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model name, HF dir, or 'tiny'")
    ap.add_argument("--device", default=None)
    ap.add_argument("--axis", required=True, help="a saved axis directory (scripts/compute_axis.py)")
    ap.add_argument("--sae", default=None, help="SAE for the SAE-basis cap (default: the axis's own)")
    ap.add_argument("--no-sae", action="store_true", help="skip SAE-basis capping")
    ap.add_argument("--sae-bands", nargs="*", default=["auto"],
                    help="bands for SAE-basis caps through the axis's band SAEs (compute_axis.py --band-sae); "
                         "'auto' = the layers that have one, none = only the single SAE")
    ap.add_argument("--out", default="runs/cap/latest")
    ap.add_argument("--bands", nargs="+", default=["auto"], help="'auto', 'START-END' or 'L1,L2'; several = sweep")
    ap.add_argument("--percentiles", nargs="+", type=float, default=[75.0], help="several = sweep")
    ap.add_argument("--mode", default="floor", choices=["floor", "ceiling"])
    ap.add_argument("--windows", nargs="+", type=int, default=[0],
                    help="0 = each token's projection (the paper); W = mean over the last W tokens; several = sweep")
    ap.add_argument("--gains", nargs="+", type=float, default=[1.0],
                    help="push = gain x shortfall below tau (1 = the paper); several = sweep")
    ap.add_argument("--n-personas", type=int, default=12)
    ap.add_argument("--n-identity-questions", type=int, default=5)
    ap.add_argument("--n-plain", type=int, default=15, help="identity questions without persona (steering)")
    ap.add_argument("--n-jailbreaks", type=int, default=60)
    ap.add_argument("--n-mc", type=int, default=120)
    ap.add_argument("--n-nll", type=int, default=40)
    ap.add_argument("--n-neutral", type=int, default=16)
    ap.add_argument("--neutral-tokens", type=int, default=96)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steer-layer", type=int, default=None, help="default: the middle layer")
    ap.add_argument("--strengths", nargs="+", type=float, default=[-2, -1, -0.5, -0.25, 0, 0.25, 0.5, 1, 2],
                    help="multiples of the mean residual norm at the steering layer")
    ap.add_argument("--n-steer-personas", type=int, default=4)
    ap.add_argument("--drift-per-domain", type=int, default=3)
    ap.add_argument("--drift-turns", type=int, default=8)
    ap.add_argument("--drift-new-tokens", type=int, default=64)
    ap.add_argument("--drift-layer", type=int, default=None, help="default: the axis's monitor layer")
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS,
                    help="what to run; results of other parts already in --out are kept")
    ap.add_argument("--small", action="store_true", help="tiny settings for a smoke test")
    ap.add_argument("--no-wandb", action="store_true")
    ap.add_argument("--wandb-project", default="steerlens")
    args = ap.parse_args()
    if args.small:  # tiny settings, except where a flag was given explicitly
        for k, v in SMALL.items():
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, v)
    for p in args.percentiles:
        if not 0 <= p <= 100:
            ap.error(f"--percentiles: {p} is outside 0-100.")
    try:  # the rule CapConfig applies, checked before the model loads
        for w in args.windows:
            for g in args.gains:
                check_window(w, g)
    except ValueError as e:
        ap.error(f"--windows/--gains: {e}")
    return args


def heldout_answers(model, n: int, gen: GenerationConfig) -> list[list[dict]]:
    """Default-Assistant answers (no system prompt, uncapped) to prompt-bank prompts outside the axis bank."""
    bank = load_prompt_bank()
    step = max(1, len(bank) // max(n, 1))
    prompts = [bank[i]["prompt"] for i in range(0, len(bank), step)][:n]
    return [o.reply() for o in generate(model, prompts, gen, progress=False)]


def evaluate(model, name, hooks, sets, gen, args, steering=None, specs=None) -> dict:
    t0 = time.time()
    persona = answers(model, sets["persona"], gen, hooks)
    jail = answers(model, sets["jailbreak"], gen, hooks)
    row = {"condition": name, **{f"identity_{k}": v for k, v in identity_rates(persona).items() if k != "labels"},
           "identity_labels": identity_rates(persona)["labels"], "refusal_rate": refusal_rate(jail),
           "nll": response_nll(model, sets["heldout"], hooks), "mc": mc_accuracy(model, sets["mc"], hooks)["accuracy"]}
    kl = sets["kl"](hooks)
    row.update(kl=kl, kl_rel_to_clean_nll=kl / max(sets["neutral_nll"], 1e-9))
    if steering is not None:
        own = [c + [{"role": "assistant", "content": t}] for c, t in zip(sets["persona"], persona)]
        row["cap_active_ordinary"] = cap_activity(model, steering, specs, sets["heldout"])
        row["cap_active_persona"] = cap_activity(model, steering, specs, own)
    row["samples"] = {"persona": list(zip([c[0]["content"][:60] + " | " + c[-1]["content"] for c in sets["persona"][:4]],
                                          persona[:4])), "jailbreak": jail[:4]}
    row["seconds"] = round(time.time() - t0, 1)
    return row


def steering_sweep(model, axis, sets, gen, args) -> dict:
    layer = args.steer_layer if args.steer_layer is not None else axis.n_layers // 2
    (layer,) = axis.check_layers(layer)
    norm = mean_resid_norm(model, layer, sets["neutral"])
    hook = f"blocks.{layer}.hook_resid_post"
    rows = []
    for m in args.strengths:
        add = Add(hook, axis.unit(layer) * norm, alpha=float(m))
        hooks = add.hooks(model)
        plain = answers(model, sets["plain"], gen, hooks)
        persona = answers(model, sets["steer_persona"], gen, hooks)
        rows.append({"strength": m, "plain": identity_rates(plain), "persona": identity_rates(persona),
                     "samples": plain[:3] + persona[:2]})
    return {"layer": layer, "mean_resid_norm": norm, "rows": rows}


def plot_steering(sweep: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["strength"] for r in sweep["rows"]]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for key, style in (("plain", "-"), ("persona", "--")):
        ax.plot(x, [r[key]["assistant_rate"] for r in sweep["rows"]], style + "o", color="C0", ms=4,
                label=f"AI/assistant ({key} prompts)")
        ax.plot(x, [r[key]["other_rate"] for r in sweep["rows"]], style + "s", color="C3", ms=4,
                label=f"human/other ({key} prompts)")
    ax.set(xlabel=f"steering strength (x mean residual norm {sweep['mean_resid_norm']:.1f}, layer {sweep['layer']})",
           ylabel="fraction of answers", ylim=(-0.03, 1.03), title="Identity vs steering along the Assistant Axis")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def band_name(layers: list[int]) -> str:
    contiguous = layers == list(range(layers[0], layers[-1] + 1))
    return f"L{layers[0]}-{layers[-1]}" if contiguous and len(layers) > 1 else "L" + ",".join(map(str, layers))


def sae_bands(axis, args) -> list[list[int]]:
    """SAE-basis cap bands: 'auto' is every layer with a band SAE (compute_axis.py --band-sae), one band."""
    if args.no_sae:
        return []
    have = [fa.layer for fa in axis.feature_band]
    bands = []
    for b in args.sae_bands:
        if b == "auto":
            bands += [have] if have else []
        else:
            layers = parse_band(b, axis.n_layers)
            for l in layers:
                axis.feature_at(l)  # fails early, naming the missing SAE
            bands.append(layers)
    return bands


def evaluate_caps(model, axis, conditions, sets, gen, args, out: Path) -> dict:
    """Every cap condition on the same prompts and seeds, with capability relative to uncapped."""
    sets["heldout"] = heldout_answers(model, args.n_nll, gen)
    sets["kl"] = NeutralKL(model, sets["neutral"], args.neutral_tokens)  # clean log-probs computed once
    sets["neutral_nll"] = text_nll(model, sets["neutral"], max_tokens=args.neutral_tokens)
    rows, caps = [], {}
    for name, cc in conditions:
        steering = specs = None
        if cc is not None:
            steering, specs = capping(axis, cc, args.sae)
            caps[name] = {"config": cc.to_dict(), "taus": {s.hook: s.tau for s in specs}}
        hooks = steering.hooks(model) if steering is not None else []
        row = evaluate(model, name, hooks, sets, gen, args, steering, specs)
        rows.append(row)
        write_json(out / "conditions.partial.json", rows)  # a killed sweep keeps what it measured
        print(json.dumps({k: v for k, v in row.items() if k not in ("samples", "identity_labels")}))
    base = rows[0]
    for r in rows:
        r["nll_rel"] = r["nll"] / base["nll"] - 1
        r["mc_rel"] = (r["mc"] - base["mc"]) / max(base["mc"], 1e-9)
        r["identity_gain"] = r["identity_assistant_rate"] - base["identity_assistant_rate"]
        r["refusal_gain"] = r["refusal_rate"] - base["refusal_rate"]
        r["capability_within_2pct"] = abs(r["nll_rel"]) <= 0.02 and abs(r["mc_rel"]) <= 0.02 and r["kl_rel_to_clean_nll"] <= 0.02
    return {"conditions": rows, "caps": caps}


def drift_with_cap(model, axis, condition, gen, args, out: Path) -> dict:
    """The drift conversations uncapped and under one cap condition; plot and transcripts in `out`."""
    dl = args.drift_layer if args.drift_layer is not None else monitor_layer(axis)
    dcfg = DriftConfig(layers=[dl], conversations_per_domain=args.drift_per_domain, n_turns=args.drift_turns,
                       max_new_tokens=args.drift_new_tokens, temperature=gen.temperature, top_p=gen.top_p,
                       seed=gen.seed, batch_size=gen.batch_size)
    convs = data.load_drift()
    name, cc = condition
    steer, _ = capping(axis, cc, args.sae)
    drift = {"uncapped": run_drift(model, axis, convs, dcfg, progress=False),
             name: run_drift(model, axis, convs, dcfg, fwd_hooks=steer.hooks(model), progress=False)}
    plot_drift(drift, out / "drift_capped.png", title="Persona drift, uncapped vs capped")
    write_json(out / "drift_transcripts.json", {k: v["conversations"] for k, v in drift.items()})
    return {k: {"summary": v["summary"], "layers": v["layers"]} for k, v in drift.items()}


def main():
    with torch.no_grad():  # not set_grad_enabled: callers (tests) keep their grad mode
        run_cap(parse_args())


def run_cap(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = open_model(args.model, args.device)
    axis = AssistantAxis.load(args.axis, model)
    use_sae = not args.no_sae and axis.feature is not None
    if not args.no_sae and axis.feature is None:
        print("note: this axis has no SAE-basis axis (compute_axis.py --sae); skipping SAE-basis capping")
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                           seed=args.seed, batch_size=args.batch_size)
    questions, personas = data.load_identity_prompts()
    sets = {
        "persona": [as_conversation(q, p) for p in personas[:args.n_personas] for q in questions[:args.n_identity_questions]],
        "steer_persona": [as_conversation(q, p) for p in personas[:args.n_steer_personas]
                          for q in questions[:args.n_identity_questions]],
        "plain": [as_conversation(q) for q in questions[:args.n_plain]],
        "jailbreak": [as_conversation(j["user"], j["system"]) for j in data.load_jailbreaks()[:args.n_jailbreaks]],
        "mc": data.load_mc()[:args.n_mc],
        "neutral": data.load_neutral_text()[:args.n_neutral],
    }
    bands = [parse_band(b, axis.n_layers) for b in args.bands]
    shapes = [(w, g) for w in args.windows for g in args.gains]

    def named(kind, where, layers, p):
        return [(f"{kind} {where} p{p:g}" + (f" w{w}" if w else "") + (f" g{g:g}" if g != 1 else ""),
                 CapConfig(layers, p, args.mode, kind, w, g)) for w, g in shapes]
    conditions = [("uncapped", None)]
    conditions += [c for b in bands for p in args.percentiles for c in named("raw", band_name(b), b, p)]
    if use_sae:
        conditions += [c for p in args.percentiles for c in named("sae", axis.feature.hook_name, [], p)]
    for b in sae_bands(axis, args):
        conditions += [c for p in args.percentiles for c in named("sae", band_name(b), b, p)]

    # a run of some parts updates the others' results from an earlier run into the same --out
    file = out / "cap_results.json"
    result = read_json(file) if file.is_file() else {}
    result.update({"axis": str(args.axis), "model": args.model})
    result.setdefault("args_by_part", {}).update({part: vars(args) for part in args.parts})
    run = None
    if not args.no_wandb:
        import wandb

        os.environ.setdefault("WANDB_MODE", "offline")
        run = wandb.init(project=args.wandb_project, job_type="cap", dir=str(out), config=vars(args),
                         name=f"cap-{Path(args.axis).name}-{'+'.join(args.parts)}")

    if "caps" in args.parts:
        result.update(evaluate_caps(model, axis, conditions, sets, gen, args, out))
        write_json(file, result)

    if "steering" in args.parts:
        result["steering"] = steering_sweep(model, axis, sets, gen, args)
        plot_steering(result["steering"], out / "steering_identity.png")
        write_json(file, result)

    if "drift" in args.parts:
        result["drift"] = drift_with_cap(model, axis, conditions[1], gen, args, out)  # the first raw band
        write_json(file, result)

    rows = result.get("conditions", [])
    if run is not None:
        import wandb

        keys = ["condition", "identity_assistant_rate", "identity_other_rate", "refusal_rate", "nll", "nll_rel", "mc",
                "mc_rel", "kl", "kl_rel_to_clean_nll", "capability_within_2pct"]
        logged = {}
        if "caps" in args.parts:
            table = wandb.Table(columns=keys + ["cap_active_ordinary", "cap_active_persona"])
            for r in rows:
                table.add_data(*[r[k] for k in keys], (r.get("cap_active_ordinary") or {}).get("mean"),
                               (r.get("cap_active_persona") or {}).get("mean"))
            logged["conditions"] = table
            run.summary.update({f"{r['condition']}/{k}": r[k] for r in rows for k in keys[1:]})
        for part, png in (("steering", "steering_identity.png"), ("drift", "drift_capped.png")):
            if part in args.parts:
                logged[png[:-4]] = wandb.Image(str(out / png))
        run.log(logged)
        if "steering" in args.parts:
            for r in result["steering"]["rows"]:
                run.log({"steer/strength": r["strength"], "steer/plain_assistant_rate": r["plain"]["assistant_rate"],
                         "steer/persona_assistant_rate": r["persona"]["assistant_rate"]})
        run.finish()
    summary = {r["condition"]: {"identity": round(r["identity_assistant_rate"], 3), "refusal": round(r["refusal_rate"], 3),
                                "nll_rel": round(r["nll_rel"], 4), "mc_rel": round(r["mc_rel"], 4),
                                "kl": round(r["kl"], 5),
                                "active_ordinary": round((r.get("cap_active_ordinary") or {}).get("mean", 0.0), 4)}
               for r in rows}
    steer = {r["strength"]: {"plain": r["plain"]["assistant_rate"], "persona": r["persona"]["assistant_rate"]}
             for r in result.get("steering", {}).get("rows", [])}
    print(json.dumps({"out": str(out), "parts": args.parts, "results": summary, "steering_assistant_rate": steer}))


if __name__ == "__main__":
    main()
