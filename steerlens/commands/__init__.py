"""The subcommands: name -> (module, one-line summary). A module is imported only when its command runs
(or its --help is asked for), so `steerlens --help` answers without loading torch.

Each module has a docstring (its --help text, with examples), `add_arguments(parser)`, `run(args, **kw)`
and optionally `check(args, parser)` (post-parse validation that needs the parser's defaults).
"""

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("steerlens.commands.train", "train SAEs from a recipe (SAELens format, W&B, resumable, DDP)"),
    "eval": ("steerlens.commands.eval", "evaluate an SAE on held-out tokens (L0, FVU, CE recovered, density)"),
    "find": ("steerlens.commands.find", "find the SAE latents for a concept (AUROC, labels, examples)"),
    "dashboards": ("steerlens.commands.dashboards", "feature statistics and static HTML dashboards for an SAE"),
    "clamp": ("steerlens.commands.clamp", "the amplification experiments: shipped recipe vs the paper's clamp, raw, prompting"),
    "recipe": ("steerlens.commands.recipe", "tune a feature-steering recipe on dev prompts; ship it with dev/test figures"),
    "compare": ("steerlens.commands.compare", "W&B-tracked comparison of steering conditions on the same prompts"),
    "axis": ("steerlens.commands.axis", "compute the Assistant Axis (rollouts, activations, filter, PCA)"),
    "convergence": ("steerlens.commands.convergence", "how many roles and questions the Assistant Axis needs (resampled run)"),
    "cap": ("steerlens.commands.cap", "evaluate activation capping on the Assistant Axis"),
    "export": ("steerlens.commands.export", "write a control vector (GGUF), Neuronpedia features or an axis"),
    "demo": ("steerlens.commands.demo", "the end-to-end reproduction on the embedded model -> report.html"),
    "corpus": ("steerlens.commands.corpus", "build (or resume) the default chat corpus"),
    "layer-scan": ("steerlens.commands.layer_scan", "score concept and persona separation at every layer"),
    "notebooks": ("steerlens.commands.notebooks", "execute the notebooks so their committed outputs are fresh"),
}

# what each old script wraps (scripts/<name>.py -> `steerlens <command>`)
SCRIPTS = {"train_sae": "train", "eval_sae": "eval", "find_features": "find", "feature_dashboards": "dashboards",
           "clamp": "clamp", "compare": "compare", "compute_axis": "axis", "cap": "cap", "demo": "demo",
           "build_corpus": "corpus", "choose_layer": "layer-scan", "run_notebooks": "notebooks",
           "tune_recipe": "recipe"}
