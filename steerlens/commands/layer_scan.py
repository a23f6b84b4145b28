"""Which residual-stream layer should an SAE read? A held-out scan of every block's output.

Per layer, difference-of-means directions for the shipped concept sets and for role-play vs.
default-Assistant prompts, each fit on one half of the data and scored (AUROC, d') on the other
(`axis.layer_scan` explains both signals and the two summaries). Writes <out>/layer_scan.json and
layer_scan.png; prints the JSON's summary last.

    steerlens layer-scan --out saes/pretrained/smollm2-default
    steerlens layer-scan --model tiny --n-questions 1 --out /tmp/scan
"""

from __future__ import annotations

import json

from steerlens.commands.common import add_model_args, own_args, split_list


def add_arguments(ap) -> None:
    add_model_args(ap)
    ap.add_argument("--concepts", default="golden_gate_bridge,sycophantic_praise", help="comma-separated concept names")
    ap.add_argument("--n-questions", "--questions", dest="questions", type=int, default=4,
                    help="extraction questions per persona prompt")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default="runs/layer_scan")


def run(args) -> dict:
    from axis.layer_scan import LayerScanConfig, scan_layers
    from lm.model import load_model

    cfg = LayerScanConfig(split_list(args.concepts), args.questions, args.batch_size)
    summary = scan_layers(load_model(args.model, device=args.device), cfg, args.out, extra=own_args(args))
    print(json.dumps(summary))
    return summary
