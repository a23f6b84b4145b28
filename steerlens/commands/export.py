"""Write steerlens artifacts in other tools' formats. Each refuses an existing target unless --overwrite.

    steerlens export control-vector RECIPE.json OUT.gguf          # llama.cpp --control-vector(-scaled)
    steerlens export neuronpedia SAE_DIR OUT_DIR --features 1865 715
    steerlens export axis AXIS_DIR OUT_DIR --format assistant-axis   # or --format neuronpedia

control-vector: a steering recipe (`Steering.to_dict()` JSON of raw adds, e.g. a `steerlens compare`
condition's "steering") as a GGUF control vector: one `direction.N` per steered block N.
neuronpedia: feature and activation records Neuronpedia's importer reads, from a feature analysis
of --data. axis: the paper's release file or Neuronpedia's axis.yaml + axis.safetensors.
The path written is printed as JSON on the last line.
"""

from __future__ import annotations

import json
from pathlib import Path

from steerlens.commands.common import add_model_args, add_overwrite_arg, parse_features
from steerlens.errors import UsageError


def add_control_vector(sub) -> None:
    p = sub.add_parser("control-vector", help="a steering recipe (raw adds) -> llama.cpp GGUF control vector",
                       description="A steering recipe of raw adds -> a llama.cpp / repeng GGUF control vector.")
    p.add_argument("recipe", help="steering recipe JSON (Steering/Add .to_dict())")
    p.add_argument("out", help="the .gguf file to write")
    add_model_args(p)
    p.add_argument("--model-hint", default=None,
                   help="controlvector.model_hint (default: the --model's GGUF architecture, e.g. 'llama')")
    p.add_argument("--n-layers", type=int, default=None, help="the --model's block count (default: read from it)")
    add_overwrite_arg(p, "OUT")


def add_neuronpedia(sub) -> None:
    from features.neuronpedia import NeuronpediaConfig as C

    p = sub.add_parser("neuronpedia", help="SAE features -> Neuronpedia feature and activation records",
                       description="SAE features -> the directory Neuronpedia's importer reads "
                                   "(OUT_DIR/{modelId}/{sourceId}/...).")
    p.add_argument("sae", help="SAELens SAE directory (or sae_lens:RELEASE/SAE_ID)")
    p.add_argument("out", help="output directory")
    p.add_argument("--features", nargs="+", required=True, metavar="ID",
                   help="latent ids or ranges, e.g. '1865 715' or '0-99,512'")
    add_model_args(p)
    p.add_argument("--stats", default=None, help="a saved feature analysis of this SAE to reuse "
                   "(e.g. runs/dashboards/default/analysis); default: analyse --data now")
    p.add_argument("--data", default=C.data, help=f"text analysed without --stats (default {C.data!r})")
    p.add_argument("--max-tokens", type=int, default=C.max_tokens, help=f"of --data (default {C.max_tokens})")
    p.add_argument("--context-size", type=int, default=C.context_size)
    p.add_argument("--model-id", default=None, help="Neuronpedia model id (default: the SAE's model name)")
    p.add_argument("--source-set", default=C.source_set, help="the source id is LAYER-SOURCE_SET")
    p.add_argument("--creator-id", default=C.creator_id)
    add_overwrite_arg(p, "OUT")


def add_axis(sub) -> None:
    from axis.formats import FORMATS

    p = sub.add_parser("axis", help="an Assistant Axis -> the paper's release format or Neuronpedia's",
                       description="A saved Assistant Axis -> the paper's release format or Neuronpedia's axis files.")
    p.add_argument("axis", help="a saved axis directory (steerlens axis)")
    p.add_argument("out", help="output directory")
    p.add_argument("--format", required=True, choices=FORMATS, dest="fmt", help="the target format")
    p.add_argument("--layer", type=int, default=None, help="neuronpedia: the layer (default: the monitor layer)")
    add_overwrite_arg(p, "OUT")


def add_arguments(ap) -> None:
    from steerlens.cli import add_debug_flag

    sub = ap.add_subparsers(dest="target", metavar="FORMAT", title="formats")
    for add in (add_control_vector, add_neuronpedia, add_axis):
        add(sub)
    for p in sub.choices.values():
        add_debug_flag(p)


def model_facts(args) -> tuple[str, int]:
    """(model hint, block count) for a control vector; the model loads unless both are given."""
    if args.model_hint is not None and args.n_layers is not None:
        return args.model_hint, args.n_layers
    from lm.model import load_model
    from steering.control_vector import model_hint

    model = load_model(args.model, device=args.device)
    return args.model_hint or model_hint(model), args.n_layers or int(model.cfg.n_layers)


def to_control_vector(args) -> Path:
    import steering
    from steering.control_vector import write_control_vector

    recipe = steering.load(args.recipe)
    hint, n_layers = model_facts(args)
    return write_control_vector(recipe, args.out, model_hint=hint, n_layers=n_layers, overwrite=args.overwrite)


def to_neuronpedia(args) -> Path:
    from features.neuronpedia import export_features
    from lm.model import load_model
    from saes.access import load_sae

    features = parse_features(args.features)
    model = load_model(args.model, device=args.device)
    sae = load_sae(args.sae, device=str(next(model.original_model.parameters()).device))
    options = dict(data=args.data, max_tokens=args.max_tokens, context_size=args.context_size,
                   source_set=args.source_set, creator_id=args.creator_id, model_id=args.model_id, stats=args.stats)
    return export_features(model, sae, args.out, features, overwrite=args.overwrite, **options)


def to_axis_format(args) -> Path:
    from axis.formats import export_axis

    return export_axis(args.axis, args.out, args.fmt, overwrite=args.overwrite, layer=args.layer)


HANDLERS = {"control-vector": to_control_vector, "neuronpedia": to_neuronpedia, "axis": to_axis_format}


def run(args) -> Path:
    if args.target is None:
        raise UsageError(f"say what to export: one of {', '.join(HANDLERS)} (see `steerlens export --help`)")
    from lm.io import check_target

    check_target(args.out, args.overwrite)  # before any model loads
    path = HANDLERS[args.target](args)
    print(json.dumps({"wrote": str(path)}))
    return path
