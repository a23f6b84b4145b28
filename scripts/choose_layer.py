"""Which residual-stream layer should the default SAE read? A held-out scan of every block's output.

Per layer, difference-of-means directions for the shipped concept sets and for role-play vs.
default-Assistant prompts, each fit on one half of the data and scored (AUROC, d') on the other
(`axis.layer_scan` explains both signals and the two summaries). Writes <out>/layer_scan.json and
layer_scan.png; prints the JSON's summary last.

    python scripts/choose_layer.py --out saes/pretrained/smollm2-default
"""

from __future__ import annotations

import argparse
import json

from lm.model import EMBEDDED, load_model

from axis.layer_scan import LayerScanConfig, scan_layers


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=EMBEDDED)
    ap.add_argument("--concepts", default="golden_gate_bridge,sycophantic_praise")
    ap.add_argument("--questions", type=int, default=4, help="extraction questions per persona prompt")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default="runs/layer_scan")
    args = ap.parse_args(argv)
    cfg = LayerScanConfig([c for c in args.concepts.split(",") if c], args.questions, args.batch_size)
    summary = scan_layers(load_model(args.model), cfg, args.out, extra=vars(args))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
