"""The main job: the end-to-end reproduction on the embedded model, written to runs/<time>/report.html.

Each stage adds a section (numbers to report.json, figures as PNG): load the model, chat with it
(with and without a persona), harvest residual-stream activations from the default corpus, evaluate
the shipped SAE, find the concept latents, clamp them (Golden Gate, sycophancy), and load the
shipped Assistant Axis to measure drift and cap (`axis.main_job`).

    steerlens demo
    steerlens demo --out runs/demo-small --chat-tokens 8 --clamp-prompts 1 --drift-convs 1
"""

from __future__ import annotations

import dataclasses

from axis.main_job import MainJobConfig


def add_arguments(ap) -> None:
    d = MainJobConfig()
    ap.add_argument("--model", default=d.model, help="model name, HF directory or 'tiny'")
    ap.add_argument("--out", default=d.out, help="run directory (default runs/<timestamp>)")
    ap.add_argument("--chat-tokens", type=int, default=d.chat_tokens)
    ap.add_argument("--harvest-rows", type=int, default=d.harvest_rows)
    ap.add_argument("--context-size", "--context", dest="context", type=int, default=d.context)
    ap.add_argument("--sae", default=d.sae, help="SAE directory (default: the shipped smollm2-default)")
    ap.add_argument("--sae-eval-tokens", type=int, default=d.sae_eval_tokens, help="the held-out rows metrics.json used")
    ap.add_argument("--sae-eval-chats", type=int, default=d.sae_eval_chats, help="held-out whole chats evaluated")
    ap.add_argument("--clamp-prompts", type=int, default=d.clamp_prompts, help="prompts per clamping experiment")
    ap.add_argument("--clamp-tokens", type=int, default=d.clamp_tokens)
    ap.add_argument("--axis", default=d.axis)
    ap.add_argument("--drift-convs", type=int, default=d.drift_convs, help="drift conversations per domain")
    ap.add_argument("--drift-turns", type=int, default=d.drift_turns)
    ap.add_argument("--drift-tokens", type=int, default=d.drift_tokens, help="also the cap evaluation's answer length")
    ap.add_argument("--cap-personas", type=int, default=d.cap_personas, help="x 3 identity questions")
    ap.add_argument("--cap-jailbreaks", type=int, default=d.cap_jailbreaks)
    ap.add_argument("--cap-mc", type=int, default=d.cap_mc, help="multiple-choice questions")
    ap.add_argument("--cap-answers", type=int, default=d.cap_answers, help="ordinary answers: NLL, cap activity")


def run(args, model=None):
    from axis.main_job import run_main_job

    cfg = MainJobConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(MainJobConfig)})
    return run_main_job(cfg, model=model)
