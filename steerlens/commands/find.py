"""Find the SAE latents for a concept and report their held-out AUROC, labels and example activations.

    steerlens find --concept golden_gate_bridge
    steerlens find --concept my_concept.json --sae path/to/sae --top 5
    steerlens find --concept golden_gate_bridge --concept sycophantic_praise \
        --dashboards runs/dashboards/default --write-concepts      # pages + saes/.../concepts.json
    steerlens find --concept golden_gate_bridge --sae saes/pretrained/smollm2-late/blocks.20.hook_resid_post-4608 \
        --steer-eval       # + output scores and measured steering on dev prompts -> concepts.json

A concept is a shipped name (features/concepts/*.json) or a JSON file in the same format
(features/concepts/README.md). With --dashboards, one pass over --data computes feature stats
(cached in DIR/analysis), the candidates get dashboard pages and each concept a results page.
--write-concepts stores the best latent per concept in concepts.json beside the SAE, with its
maximum activation over --data (the unit relative clamping multiplies). --steer-eval ranks latents
three ways (input AUROC, Arad et al.'s output score, measured steering on dev prompts;
`steering.feature_selection`) and writes all three per short-listed latent, the steering latent and
the SAE's strength units (norms.json).
"""

from __future__ import annotations

import json
from pathlib import Path

from saes.access import DEFAULT_SAE

from steerlens.commands.common import add_model_args
from steerlens.errors import UsageError


def add_arguments(ap) -> None:
    ap.add_argument("--concept", action="append", required=True, help="shipped concept name or JSON file (repeatable)")
    ap.add_argument("--sae", default=str(DEFAULT_SAE), help="SAELens SAE directory")
    add_model_args(ap)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--wrap", choices=["chat", "plain"], default="chat", help="read texts as assistant replies or bare text")
    ap.add_argument("--read", choices=["keywords", "all"], default="keywords", help="raw direction read positions")
    ap.add_argument("--examples", type=int, default=3, help="print held-out examples for this many candidates")
    ap.add_argument("--dashboards", default=None, help="write dashboards and concept pages to this directory")
    ap.add_argument("--write-concepts", action="store_true", help="write concepts.json beside the SAE")
    ap.add_argument("--data", default="default", help="text source for dashboards and max activations")
    ap.add_argument("--max-tokens", type=int, default=None, help="cap on --data tokens (default: all)")
    ap.add_argument("--context-size", type=int, default=128)
    ap.add_argument("--out", default=None, help="also save each result as JSON + raw direction here")
    ap.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    ap.add_argument("--steer-eval", action="store_true",
                    help="also rank by output score and by measured steering on dev prompts; writes concepts.json")
    ap.add_argument("--steer-prompts", default=None,
                    help="dev prompt set for --steer-eval (default: unrelated_questions; dubious_claims for sycophancy)")
    ap.add_argument("--steer-strengths", default="0.5,1,2", help="x a_max, for --steer-eval")


def report(result, tokenizer, dashboards: Path | None, n_examples: int) -> None:
    """Print one concept's candidates, the raw direction's scores and held-out examples."""
    from features import format_example
    from features.dashboard import feature_page

    print(f"\nconcept {result.name}: {result.n_selection} selection / {result.n_heldout} held-out texts, "
          f"read as {result.wrap}, hook {result.hook}")
    print(f"{'rank':>4} {'latent':>7} {'AUROC sel':>9} {'AUROC held':>10} {'mean diff':>10} {'cos raw':>8}  label")
    for r, c in enumerate(result.candidates, 1):
        link = ""
        if dashboards is not None and feature_page(dashboards, c.latent).is_file():
            link = f"  {feature_page(dashboards, c.latent)}"
        print(f"{r:>4} {c.latent:>7} {c.auroc_selection:>9.3f} {c.auroc_heldout:>10.3f} {c.mean_diff:>10.4g} "
              f"{c.raw_cosine:>8.3f}  {c.label}{link}")
    raw = result.raw
    print(f"raw difference of means ({raw.read} tokens): held-out AUROC {raw.auroc_heldout:.3f}, "
          f"cosine with latent {result.best.latent}'s decoder {result.best.raw_cosine:.3f}, "
          f"best-aligned latent {raw.best_latent} (cosine {raw.best_cosine:.3f})")
    for c in result.candidates[:n_examples]:
        print(f"held-out examples for latent {c.latent} (+ positive, − negative text; [activation] after tokens "
              "at >= 20% of the text's max):")
        for ex in c.examples:
            print("  " + format_example(tokenizer, ex))


def summary(results) -> dict:
    return {r.name: {"latent": r.best.latent, "auroc_heldout": r.best.auroc_heldout,
                     "auroc_selection": r.best.auroc_selection, "label": r.best.label,
                     "raw_cosine": r.best.raw_cosine, "raw_auroc_heldout": r.raw.auroc_heldout} for r in results}


STEER_PROMPTS = {"sycophantic_praise": "dubious_claims"}


def steer_eval(args, model) -> dict:
    """Input AUROC, output score and measured steering per short-listed latent, into concepts.json."""
    from steering.feature_selection import SelectionConfig, concept_output_scores, select_latents, write_selection
    from steering.metrics import load_data

    from steerlens.commands.common import split_list

    try:
        strengths = [float(x) for x in split_list(args.steer_strengths)]
    except ValueError:
        raise UsageError(f"--steer-strengths: {args.steer_strengths!r} is not a list of numbers, e.g. 0.5,1,2")
    cfg = SelectionConfig(strengths=strengths, data=args.data)
    from features import load_concept

    table = {}
    scored = concept_output_scores(model, args.sae, args.concept, cfg)  # one pass for every concept
    for c in args.concept:
        name = load_concept(c)["name"]
        prompts = load_data(args.steer_prompts or STEER_PROMPTS.get(name, "unrelated_questions"))
        rec = select_latents(model, args.sae, c, prompts, cfg, scores_out=scored[name])
        table = write_selection(args.sae, c, rec)
        best = next(r for r in rec["candidates"] if r["latent"] == rec["steering_latent"])
        print(f"{name}: input latent {rec['latent']}, steering latent {rec['steering_latent']} "
              f"(S_out {best['output']['s_out']:.3f}, harmonic {best['steering']['harmonic']:.3f} at "
              f"{best['steering']['strength']:g} x a_max)")
    print(f"wrote {Path(args.sae) / 'concepts.json'}")
    return table


def run(args) -> list:
    from features import SearchConfig, dataset_tokens, search_concept, write_concepts_json
    from features.analysis import AnalysisConfig, analyze
    from features.dashboard import write_dashboards
    from lm.model import load_model
    from saes.access import load_sae

    model = load_model(args.model, device=args.device)
    if args.steer_eval:
        return steer_eval(args, model)
    sae = load_sae(args.sae, device=str(next(model.original_model.parameters()).device))
    dash = Path(args.dashboards) if args.dashboards else None
    stats = None
    if dash is not None:
        tokens = dataset_tokens(args.data, model.tokenizer, args.context_size, args.max_tokens)
        stats = analyze(model, sae, tokens, AnalysisConfig(), cache_dir=dash / "analysis")
    cfg = SearchConfig(wrap=args.wrap, read=args.read, top=args.top)
    results = [search_concept(model, sae, c, cfg, stats=stats, progress=True) for c in args.concept]
    if dash is not None:
        feats = sorted({c.latent for r in results for c in r.candidates})
        print(f"dashboards: {write_dashboards(stats, model.tokenizer, dash, features=feats, concepts=results)}")
    for r in results:
        report(r, model.tokenizer, dash, args.examples)
        if args.out:
            r.save(args.out)
    if args.write_concepts:
        data = stats if stats is not None else args.data
        name = args.data + (f" (first {args.max_tokens} tokens)" if args.max_tokens else "")
        table = write_concepts_json(args.sae, results, model, sae, data, args.context_size, args.max_tokens, name)
        print(f"\nwrote {Path(args.sae) / 'concepts.json'}: {json.dumps(table)}")
    if args.json:
        print(json.dumps(summary(results)))
    return results
