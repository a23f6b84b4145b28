"""The main job: the end-to-end reproduction on the embedded model, written to runs/<time>/report.html.

Each stage adds a section (numbers to report.json, figures as PNG). Stages so far: load the model,
chat with it (with and without a persona), harvest residual-stream activations from the default
corpus, evaluate the shipped SAE, find the concept latents, clamp them (Golden Gate, sycophancy), and
load the shipped Assistant Axis to measure drift and cap.
"""

import argparse
import json
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from lm.chat import render  # noqa: E402
from lm.corpus import load_corpus, load_prompt_bank  # noqa: E402
from lm.generate import GenerationConfig, generate  # noqa: E402
from lm.harvest import HarvestConfig, harvest  # noqa: E402
from lm.model import EMBEDDED, load_model, model_hash  # noqa: E402
from lm.report import Report, table  # noqa: E402
from lm.text import pack  # noqa: E402

CHAT_PROMPTS = [
    (None, "What is your physical form?"),
    (None, "What is the Golden Gate Bridge?"),
    (None, "I wrote a two-line poem and I think it's a masterpiece. Agree?"),
    ("You are a grizzled pirate captain. Stay in character.", "What is your physical form?"),
]


def stage_model(ctx, report):
    sec = report.section("model", "Model")
    t = time.time()
    ctx["model"] = model = load_model(ctx["args"].model)
    sec.numbers.update(load_seconds=round(time.time() - t, 2), source=model_hash(model),
                       n_layers=model.cfg.n_layers, d_model=model.cfg.d_model,
                       device=str(next(model.original_model.parameters()).device),
                       dtype=str(next(model.original_model.parameters()).dtype))
    sec.text.append(f"Loaded {model_hash(model)} as a TransformerLens TransformerBridge "
                    f"({model.cfg.n_layers} layers, d_model {model.cfg.d_model}).")


def stage_chat(ctx, report):
    sec = report.section("chat", "Chat")
    cfg = GenerationConfig(max_new_tokens=ctx["args"].chat_tokens, temperature=0, batch_size=8,
                           repetition_penalty=1.1)
    rows, out = [], []
    for system in {s for s, _ in CHAT_PROMPTS}:
        prompts = [q for s, q in CHAT_PROMPTS if s == system]
        for q, g in zip(prompts, generate(ctx["model"], prompts, cfg, system=system, progress=False)):
            rows.append([system or "(default template)", q, g.text])
            out.append({"system": system, "prompt": q, "reply": g.text, "tokens": len(g.ids)})
    sec.text.append("Greedy replies (repetition penalty 1.1). With no system prompt the template inserts "
                    "SmolLM's default Assistant prompt.")
    sec.tables.append(table(["system prompt", "user", "reply"], rows))
    sec.numbers["generations"] = out
    sec.numbers["generation_config"] = cfg.to_dict()


def stage_harvest(ctx, report):
    sec = report.section("harvest", "Activation harvesting")
    model, args = ctx["model"], ctx["args"]
    try:
        corpus = load_corpus()
        seqs, source = corpus.sequences(), f"default corpus ({corpus.n_tokens:,} tokens)"
        sec.numbers["corpus_manifest"] = corpus.manifest
    except FileNotFoundError:
        bank = load_prompt_bank()
        seqs = [render(model.tokenizer, [{"role": "user", "content": r["prompt"]}]).ids.numpy() for r in bank]
        source = "prompt bank (default corpus not built)"
    tokens = pack(seqs, args.context, max_tokens=args.harvest_rows * args.context)
    layers = sorted({0, *range(5, model.cfg.n_layers, 5), model.cfg.n_layers - 1})
    names = [f"blocks.{l}.hook_resid_post" for l in layers]
    t = time.time()
    acts = harvest(model, tokens, names, HarvestConfig(batch_size=8, exclude_first=False))
    seconds = time.time() - t
    seq = tokens.shape[1]
    norms = {l: acts[n].norm(dim=-1).view(-1, seq) for l, n in zip(layers, names)}
    sink = [norms[l][:, 0].mean().item() for l in layers]
    rest = [norms[l][:, 1:].median().item() for l in layers]
    sec.numbers.update(source=source, rows=tokens.shape[0], context=seq, tokens=tokens.numel(),
                       seconds=round(seconds, 2), tokens_per_second=round(tokens.numel() / seconds, 1),
                       layers=layers, sink_norm_mean=dict(zip(layers, sink)), median_norm=dict(zip(layers, rest)))
    sec.text.append(f"Harvested {tokens.numel():,} tokens of {source} at {len(layers)} residual-stream hooks "
                    f"in {seconds:.1f} s ({tokens.numel() / seconds:.0f} tok/s; the forward stops after the "
                    f"deepest hooked block). Position 0 of each row is an attention sink: its norm dwarfs the "
                    "rest, so statistics and SAE training exclude it.")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(layers, rest, "o-", label="median token norm (positions 1+)")
    ax.plot(layers, sink, "s--", label="position 0 (attention sink)")
    ax.set_yscale("log"); ax.set_xlabel("layer (hook_resid_post)"); ax.set_ylabel("L2 norm"); ax.legend()
    report.figure(sec, fig, "residual_norms.png")
    plt.close(fig)


def stage_sae(ctx, report):
    from saes.eval import evaluate_dir, plot_density
    from saes.pretrained import TRAIN_COMMAND, default_sae_path

    sec = report.section("sae", "Sparse autoencoder (shipped default)")
    args = ctx["args"]
    path = ctx["sae_dir"] = Path(args.sae) if args.sae else default_sae_path()
    shipped = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").is_file() else {}
    metrics, _ = evaluate_dir(path, ctx["model"], tokens=args.sae_eval_tokens)
    plot_density(metrics, report.dir / "sae_density.png", title=path.name)
    sec.figures.append("sae_density.png")
    metrics.pop("feature_density")
    keys = ["l0", "fvu", "explained_variance", "ce_loss_recovered", "delta_lm_loss", "dead_fraction",
            "dense_fraction", "n_tokens"]
    rows = [[k, f"{metrics[k]:.4g}", f"{shipped[k]:.4g}" if k in shipped else "-"] for k in keys]
    sec.tables.append(table(["metric", f"this run ({metrics['n_tokens']:,} held-out tokens)",
                             "shipped metrics.json"], rows))
    bar = {"l0": (16, 64), "fvu": (None, 0.25), "ce_loss_recovered": (0.85, None), "dead_fraction": (None, 0.10)}
    met = {k: (lo is None or metrics[k] >= lo) and (hi is None or metrics[k] <= hi) for k, (lo, hi) in bar.items()}
    sec.numbers.update(metrics=metrics, shipped=shipped, quality_bar=bar, quality_bar_met=met)
    sec.text.append(f"{path.name}: {metrics['hook']}, d_sae {metrics['d_sae']}, evaluated on the held-out rows of "
                    f"its training data (SAE spliced in at every position but the attention sink). Quality bar "
                    f"(L0 16-64, FVU <= 0.25, CE recovered >= 0.85, dead < 10%): "
                    f"{'met' if all(met.values()) else 'NOT met: ' + str(met)}. Retrain with: {TRAIN_COMMAND}")


def stage_features(ctx, report):
    from features.concepts import SearchConfig, search_concept
    from steering.sae import load_concepts, load_sae

    sec = report.section("features", "Concept features")
    model, sae_dir = ctx["model"], ctx["sae_dir"]
    sae, shipped = load_sae(sae_dir), load_concepts(sae_dir)
    rows, found = [], {}
    for name in ("golden_gate_bridge", "sycophantic_praise"):
        r = search_concept(model, sae, name, SearchConfig(top=3))
        found[name] = {"top": [{"latent": c.latent, "label": c.label, "auroc_selection": c.auroc_selection,
                                "auroc_heldout": c.auroc_heldout, "raw_cosine": c.raw_cosine} for c in r.candidates],
                       "raw_auroc_heldout": r.raw.auroc_heldout, "raw_best_latent": r.raw.best_latent,
                       "raw_best_cosine": r.raw.best_cosine, "shipped": shipped.get(name)}
        for c in r.candidates:
            mark = " (shipped)" if shipped.get(name, {}).get("latent") == c.latent else ""
            rows.append([name, f"{c.latent}{mark}", c.label, f"{c.auroc_selection:.3f}", f"{c.auroc_heldout:.3f}",
                         f"{c.raw_cosine:.3f}"])
        rows.append([name, "raw diff-of-means", "-", "-", f"{r.raw.auroc_heldout:.3f}", f"{r.raw.best_cosine:.3f}"])
    sec.tables.append(table(["concept", "latent", "label", "AUROC selection", "AUROC held-out",
                             "cosine (raw direction, decoder row)"], rows))
    sec.numbers.update(concepts=found)
    sec.text.append("Latents ranked by how well their max activation per text separates each concept set's "
                    "positive from negative texts (selection half), scored on the held-out half. The raw row is "
                    "the difference-of-means direction in the residual stream; its cosine column is with the "
                    "best-aligned decoder row. Clamping uses the latents in the SAE's concepts.json.")


def stage_clamp(ctx, report):
    from steering.amplification import AmplificationConfig, run_amplification

    sec = report.section("clamp", "Feature clamping (amplification experiments)")
    args = ctx["args"]
    heads = {}
    for name in ("golden_gate", "sycophancy"):
        cfg = AmplificationConfig(sae=str(ctx["sae_dir"]), n_prompts=args.clamp_prompts,
                                  strengths=[0.0, 2.0, 5.0, 10.0, 20.0, 50.0], neutral_texts=4)
        cfg.generation.max_new_tokens = args.clamp_tokens
        out = report.dir / "clamp" / name
        heads[name] = head = run_amplification(ctx["model"], name, out, cfg)
        sec.text.append(f"{name} (latent {head['latent']}, {head['strength']:g}x max activation "
                        f"{head['max_activation']:.2f}): concept rate {head['baseline']['concept_rate']:.2f} unsteered "
                        f"-> {head['sae_clamp']['concept_rate']:.2f} clamped (raw direction "
                        f"{head['raw_add']['concept_rate']:.2f}, random {head['random_add']['concept_rate']:.2f}); "
                        f"answer perplexity ratio {head['sae_clamp']['ppl_ratio']:.2f}; fluency collapses (ppl > 2x) "
                        f"from {head['collapse_strength']}.")
        by = {r["condition"]["name"]: r for r in json.loads((out / "results.json").read_text())["results"]}
        cols = ["baseline"] + [f"{f}_{head['strength']:g}x" for f in ("sae_clamp", "raw_add", "random_add")]
        rows = [[g["prompt"]] + [by[c]["generations"][i]["answer"] for c in cols]
                for i, g in enumerate(by["baseline"]["generations"])]
        sec.tables.append(table(["prompt"] + cols, rows))
        shutil.copy(out / "dose_response.png", report.dir / f"clamp_{name}.png")
        sec.figures.append(f"clamp_{name}.png")
    sec.numbers.update(headline=heads)


def stage_axis(ctx, report):
    from axis import data
    from axis.artifact import AssistantAxis
    from axis.capping import CapConfig, cap_activity, capping
    from axis.drift import DriftConfig, plot_drift, run_drift
    from axis.evals import identity_rates
    from lm.chat import as_conversation

    sec = report.section("axis", "Assistant Axis: persona space, drift, capping")
    model, args = ctx["model"], ctx["args"]
    path = Path(args.axis)
    axis = AssistantAxis.load(path, model)
    s = axis.stats
    shutil.copy(path / "axis_summary.png", report.dir / "axis_summary.png")
    sec.figures.append("axis_summary.png")
    cos, mid, ml = s["pca"]["cos_axis_pc1"], axis.n_layers // 2, s["monitor_layer"]
    sec.text.append(f"Shipped axis ({path}): {s['n_rollouts']} rollouts over {s['n_roles']} roles; the judge-free "
                    f"adherence filter kept {s['filter']['kept_fraction']:.1%} of role rollouts. cos(axis, PC1) "
                    f"min {min(cos):.2f}, middle layer {cos[mid]:.2f}; monitor layer {ml} (largest default-vs-role d').")
    # drift, uncapped and capped (p75 floor on the default band), and the cap on persona prompts
    steer, specs = capping(axis, CapConfig(percentile=75.0))
    dcfg = DriftConfig(conversations_per_domain=args.drift_convs, n_turns=args.drift_turns,
                       max_new_tokens=args.drift_tokens, batch_size=16)
    convs = data.load_drift()
    drift = {"uncapped": run_drift(model, axis, convs, dcfg, progress=False),
             "capped p75": run_drift(model, axis, convs, dcfg, fwd_hooks=steer.hooks(model), progress=False)}
    plot_drift(drift, report.dir / "drift.png", title="Persona drift, uncapped vs capped")
    sec.figures.append("drift.png")
    questions, personas = data.load_identity_prompts()
    prompts = [as_conversation(q, p) for p in personas[:args.cap_personas] for q in questions[:3]]
    gen = GenerationConfig(max_new_tokens=args.drift_tokens, temperature=0.7, top_p=0.9, seed=0)
    before = generate(model, prompts, gen, progress=False)
    with steer.apply(model):
        after = generate(model, prompts, gen, progress=False)
    ib, ia = identity_rates([o.text for o in before]), identity_rates([o.text for o in after])
    plain = [o.reply() for o in generate(model, data.load_questions()[:8], gen, progress=False)]
    act = cap_activity(model, steer, specs, plain)
    sec.tables.append(table(["persona / question", "uncapped", "capped (p75 floor)"],
                            [[p[0]["content"][:60] + " / " + p[-1]["content"], b.text, a.text]
                             for p, b, a in list(zip(prompts, before, after))[:6]]))
    sec.text.append(f"Capping at p75 on layers {[int(x.hook.split('.')[1]) for x in specs]}: AI/assistant identity "
                    f"rate under persona prompts {ib['assistant_rate']:.2f} -> {ia['assistant_rate']:.2f} "
                    f"(human/other {ib['other_rate']:.2f} -> {ia['other_rate']:.2f}, n={len(prompts)}); the cap "
                    f"fired on {act['mean']:.1%} of ordinary answer tokens per layer.")
    sec.numbers.update(axis_stats={k: s[k] for k in ("n_rollouts", "n_roles", "monitor_layer", "filter")},
                       cos_axis_pc1=cos, identity_uncapped=ib, identity_capped=ia, cap_activity=act,
                       taus={x.hook: x.tau for x in specs},
                       drift={k: v["summary"] for k, v in drift.items()})


STAGES = [stage_model, stage_chat, stage_harvest, stage_sae, stage_features, stage_clamp, stage_axis]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=EMBEDDED)
    ap.add_argument("--out", default=None, help="run directory (default runs/<timestamp>)")
    ap.add_argument("--chat-tokens", type=int, default=64)
    ap.add_argument("--harvest-rows", type=int, default=64)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--sae", default=None, help="SAE directory (default: the shipped smollm2-default)")
    ap.add_argument("--sae-eval-tokens", type=int, default=8192, help="the held-out rows metrics.json used")
    ap.add_argument("--clamp-prompts", type=int, default=6, help="prompts per clamping experiment")
    ap.add_argument("--clamp-tokens", type=int, default=48)
    ap.add_argument("--axis", default=str(Path(__file__).resolve().parent.parent / "axis" / "pretrained" / "smollm2-default"))
    ap.add_argument("--drift-convs", type=int, default=2, help="drift conversations per domain")
    ap.add_argument("--drift-turns", type=int, default=4)
    ap.add_argument("--drift-tokens", type=int, default=40)
    ap.add_argument("--cap-personas", type=int, default=4)
    args = ap.parse_args(argv)
    with torch.no_grad():  # not set_grad_enabled: callers (tests) keep their grad mode
        return run(args)


def run(args) -> Path:
    out = Path(args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    report = Report(out)
    ctx = {"args": args}
    for stage in STAGES:
        t = time.time()
        print(f"== {stage.__name__}", flush=True)
        stage(ctx, report)
        report.sections[-1].seconds = time.time() - t
        report.save()  # a partial report survives a failing later stage
    path = report.save()
    print(json.dumps({"report": str(path), "stages": [s.key for s in report.sections]}))
    return path


if __name__ == "__main__":
    main()
