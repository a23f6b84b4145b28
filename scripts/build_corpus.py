"""Build (or resume) the default chat corpus: `python scripts/build_corpus.py [--target-tokens N]`."""

import argparse
import dataclasses
import json

from lm.corpus import CORPUS_DIR, CorpusConfig, build_corpus
from lm.model import EMBEDDED, load_model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=EMBEDDED)
    ap.add_argument("--out", default=str(CORPUS_DIR))
    ap.add_argument("--work-dir", default=None, help="where resumable chunks go (default: <out>.work)")
    for f in dataclasses.fields(CorpusConfig):
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    args = ap.parse_args(argv)
    cfg = CorpusConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(CorpusConfig)})
    print(json.dumps(dataclasses.asdict(cfg), indent=2))
    corpus = build_corpus(load_model(args.model), args.out, cfg, args.work_dir)
    print(json.dumps(corpus.manifest))


if __name__ == "__main__":
    main()
