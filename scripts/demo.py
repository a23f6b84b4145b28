"""The main job: the end-to-end reproduction on the embedded model, written to runs/<time>/report.html.

Each stage adds a section (numbers to report.json, figures as PNG). Stages so far: load the model,
chat with it (with and without a persona), harvest residual-stream activations from the default
corpus. Later stages (SAE, features, clamping, axis, capping) append to STAGES.
"""

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from lm.chat import render  # noqa: E402
from lm.corpus import CORPUS_DIR, load_corpus, load_prompt_bank  # noqa: E402
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


STAGES = [stage_model, stage_chat, stage_harvest]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=EMBEDDED)
    ap.add_argument("--out", default=None, help="run directory (default runs/<timestamp>)")
    ap.add_argument("--chat-tokens", type=int, default=64)
    ap.add_argument("--harvest-rows", type=int, default=64)
    ap.add_argument("--context", type=int, default=128)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
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


if __name__ == "__main__":
    main()
