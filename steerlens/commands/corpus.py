"""Build (or resume) the default chat corpus the SAEs train on (lm/data/default_corpus).

    steerlens corpus                                          # HF generate, batched (GPU: minutes)
    steerlens corpus --backend http://127.0.0.1:8089          # a llama.cpp llama-server

Chunks are written atomically; an interrupted build continues at the first missing chunk.
Every CorpusConfig field is a flag (--seed, --batch-size, --target-tokens, ...).
"""

from __future__ import annotations

import json

from lm.corpus import CORPUS_DIR, CorpusConfig

from steerlens.commands.common import add_config_flags, add_model_args, config_from


def add_arguments(ap) -> None:
    add_model_args(ap)
    ap.add_argument("--out", default=str(CORPUS_DIR))
    ap.add_argument("--work-dir", default=None, help="where resumable chunks go (default: <out>.work)")
    add_config_flags(ap, CorpusConfig)


def run(args):
    import dataclasses

    from lm.corpus import build_corpus
    from lm.model import load_model

    cfg = config_from(args, CorpusConfig)
    print(json.dumps(dataclasses.asdict(cfg), indent=2))
    corpus = build_corpus(load_model(args.model, device=args.device), args.out, cfg, args.work_dir)
    print(json.dumps(corpus.manifest))
    return corpus
