"""Train SAEs through SAELens on the activations of any `lm.load_model` model: resumable, data-parallel.

Two data paths, one output format:
- "cached" (default): each rank harvests its data shards once with `lm.harvest` (cached on disk),
  then SAELens's `MultiSAETrainer` trains every SAE (one per hook x width) in lockstep over seeded
  epochs (`saes.data`). The batch at step s is a pure function of the config, so `resume` continues
  a killed run exactly, and torchrun ranks split each batch between them (`saes.ddp`). Epochs over
  cached activations suit a CPU, where the LM forward is the bottleneck.
- "stream": SAELens's `LanguageModelSAETrainingRunner` (one SAE) or `MultiSAETrainingRunner`
  (several from one LM pass) runs the LM for every training token through its mixing buffer: for
  long single-GPU runs. Its checkpoints restore weights, optimiser and dataset position but not
  the mixing buffer's contents, so after a resume the data order differs from an unbroken run.
Checkpoints and the activation cache live in `<out>/.work/` and are removed once the SAEs are out.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import torch

from lm.harvest import check_hook_names, forward_batch
from lm.io import read_json, write_json
from lm.tracking import finish_run, start_run, wandb_module
from saes import ddp
from saes.config import TrainConfig, config_diff
from saes.data import ShardedBatches, harvest_shards, norm_stats, split_rows
from saes.chat_eval import ChatEvalConfig, chat_conversations, evaluate_chats, quality_bar
from saes.eval import evaluate_sae, plot_density
from saes.access import load_sae
from saes.io import holds_sae, save_sae

WORK = ".work"
STATE = "steerlens_state.json"  # written last into a cached-mode checkpoint: marks it complete
RUNNER_STATE = "runner_cfg.json"  # SAELens runners write this last into their checkpoints
WANDB_PROJECT = "steerlens-saes"


def hook_widths(model, hooks: list[str]) -> dict[str, int]:
    """Width of the activation at each hook, from a 2-token forward."""
    check_hook_names(model, hooks)
    ids = torch.full((1, 2), model.tokenizer.eos_token_id or 0)
    return {h: a.shape[-1] for h, a in forward_batch(model, ids, hooks).items()}


def sae_specs(cfg: TrainConfig, d_ins: dict[str, int], device: str) -> dict[str, tuple[str, object]]:
    """{name: (hook, SAELens TrainingSAEConfig)}, one per hook x width."""
    from sae_lens.registry import get_sae_training_class

    _, cfg_cls = get_sae_training_class(cfg.architecture)
    extra = {"topk": dict(k=int(cfg.k)), "batchtopk": dict(k=float(cfg.k)),
             "standard": dict(l1_coefficient=cfg.sparsity_coefficient),
             "jumprelu": dict(l0_coefficient=cfg.sparsity_coefficient)}[cfg.architecture]
    specs = {}
    for hook in cfg.hooks:
        d_in = d_ins[hook]
        if cfg.d_in is not None and cfg.d_in != d_in:
            raise ValueError(f"d_in={cfg.d_in} does not match {hook}, whose width is {d_in}; "
                             "drop d_in (it is read from the hook) or choose a hook of that width.")
        for width in cfg.widths(d_in):
            if "k" in extra and extra["k"] > width:
                raise ValueError(f"k={cfg.k} exceeds the SAE width {width} at {hook}; lower k or widen the SAE.")
            specs[f"{hook}-{width}"] = (hook, cfg_cls(d_in=d_in, d_sae=width, device=device,
                                                      normalize_activations=cfg.normalize_activations, **extra))
    return specs


def _set_metadata(sae, cfg: TrainConfig, hook: str) -> None:
    m = sae.cfg.metadata
    m.hook_name, m.model_name, m.model_class_name = hook, cfg.model, "TransformerBridge"
    m.dataset_path, m.context_size, m.prepend_bos = cfg.data, cfg.context_size, False
    m.seqpos_slice = (1, None) if cfg.exclude_first else (None,)


def _logger(cfg: TrainConfig, on: bool, run_id: str | None):
    from sae_lens import LoggingConfig

    return LoggingConfig(log_to_wandb=on, log_weights_to_wandb=False, wandb_project=WANDB_PROJECT,
                         wandb_id=run_id, run_name=run_id, wandb_log_frequency=cfg.log_every)


def latest_checkpoint(work: Path, marker: str) -> Path | None:
    """Newest complete checkpoint (directory named by its sample count, holding `marker`)."""
    found = [p.parent for p in (work / "checkpoints").rglob(marker) if p.parent.name.isdigit()]
    return max(found, key=lambda p: int(p.name), default=None)


def _check_out(out: Path, cfg: TrainConfig, resume: bool | str | Path, overwrite: bool):
    """Check the output dir (writes nothing); returns (checkpoint to resume or None, W&B run id)."""
    work = out / WORK
    if holds_sae(out) and not overwrite:
        raise FileExistsError(f"{out} already holds an SAE; pass --overwrite to replace it or choose another --out.")
    if resume:
        if isinstance(resume, (str, Path)):
            if cfg.data_mode != "cached":
                raise ValueError("resuming from an explicit checkpoint path needs data_mode='cached'; "
                                 "for stream runs pass --resume alone.")
            ckpt = Path(resume)
            if not (ckpt / STATE).is_file():
                raise FileNotFoundError(f"{ckpt} is not a complete checkpoint of ours (no {STATE}).")
            stored, run_id = read_json(ckpt / STATE)["config"], None
        else:
            if not (work / "run.json").is_file():
                raise FileNotFoundError(f"Nothing to resume in {out}: no {WORK}/run.json. Start without --resume.")
            run = read_json(work / "run.json")
            stored, run_id = run["config"], run.get("wandb_id")
            ckpt = latest_checkpoint(work, STATE if cfg.data_mode == "cached" else RUNNER_STATE)
        diff = config_diff(stored, cfg.to_dict())
        if diff:
            raise ValueError("The checkpoint was written under another config; differing keys "
                             f"(checkpoint, now): {diff}. Resume with the same recipe and overrides, "
                             "or start afresh with --overwrite.")
        return ckpt, run_id
    if (work / "run.json").is_file() and not overwrite:
        raise FileExistsError(f"{out} holds an interrupted run ({work}); pass --resume to continue it "
                              "or --overwrite to start over.")
    return None, None


def _start_run(work: Path, cfg: TrainConfig, rank: int) -> str:
    """A fresh work dir holding the run's config and W&B id (what --resume checks against)."""
    run_id = f"{work.parent.name}-{uuid.uuid4().hex[:8]}"
    if rank == 0:
        shutil.rmtree(work, ignore_errors=True)
        write_json(work / "run.json", {"config": cfg.to_dict(), "wandb_id": run_id})
    ddp.barrier()
    return run_id


def _train_cached(cfg, specs, model, train_rows, work, ckpt, rank, world, device, wandb_on, run_id, progress):
    from sae_lens.config import SAETrainerConfig
    from sae_lens.registry import get_sae_training_class
    from sae_lens.training.multi_sae_trainer import MultiSAETrainer

    acts = harvest_shards(model, cfg, train_rows, [j for j in range(cfg.data_shards) if j % world == rank],
                          work / "activations", progress and rank == 0)
    lb, steps = cfg.batch_size // world, cfg.steps  # per-rank batch
    tcfg = SAETrainerConfig(
        total_training_samples=steps * lb, train_batch_size_samples=lb, lr=cfg.lr, lr_end=cfg.lr / 10,
        lr_warm_up_steps=cfg.lr_warm_up_steps, lr_decay_steps=cfg.lr_decay_steps, device=device,
        dead_feature_window=cfg.dead_feature_window, logger=_logger(cfg, wandb_on, run_id),
        checkpoint_path=str(work / "checkpoints") if rank == 0 else None)
    torch.manual_seed(cfg.seed)
    saes = {}
    for name, (hook, scfg) in specs.items():
        saes[name] = get_sae_training_class(cfg.architecture)[0](scfg)
        _set_metadata(saes[name], cfg, hook)
    batches = ShardedBatches(acts, cfg.data_shards, cfg.batch_size, cfg.seed, device=device)

    def on_checkpoint(checkpoint_path):
        if checkpoint_path is None:  # ranks > 0
            return
        write_json(checkpoint_path / STATE, {"step": trainer.n_training_samples // lb,
                                             "config": cfg.to_dict(), "world_size": world})
        done = sorted((p for p in checkpoint_path.parent.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        for old in done[:-2]:  # keep the two newest
            shutil.rmtree(old, ignore_errors=True)

    trainer = MultiSAETrainer(tcfg, saes, {n: h for n, (h, _) in specs.items()}, batches,
                              save_checkpoint_fn=on_checkpoint)
    if world > 1:
        for sae in saes.values():
            ddp.wrap(sae, device)
    step = 0
    if ckpt is not None:
        trainer.load_checkpoint(ckpt)
        step = read_json(ckpt / STATE)["step"]
        # SAELens checkpoints before counting the step it just took; count it, as an unbroken run does
        trainer.n_training_steps = step
        for t in trainer.trainers.values():
            t.n_training_steps = step
    else:  # the global mean norm, so every rank (and any world size) scales alike
        for name, (hook, scfg) in specs.items():
            if scfg.normalize_activations == "expected_average_only_in":
                total, count = ddp.all_sum(norm_stats(acts, hook)).tolist()
                trainer.trainers[name].activation_scaler.scaling_factor = scfg.d_in ** 0.5 / (total / count)
    batches.step = step
    every = cfg.checkpoint_every
    trainer.checkpoint_thresholds = [(c - 1) * lb for c in range(every * (step // every + 1), steps, every)]
    trainer.fit()
    return saes, {n: t.log_feature_sparsity for n, t in trainer.trainers.items()}


def _train_stream(cfg, specs, model, train_rows, work, ckpt, device, wandb_on, run_id):
    import datasets
    from safetensors.torch import load_file
    from sae_lens import (LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner,
                          MultiSAETrainingRunner, MultiSAETrainingRunnerConfig)

    ds = datasets.Dataset.from_dict({"input_ids": train_rows.tolist()})
    steps = cfg.steps
    common = dict(
        model_name=cfg.model, model_class_name="TransformerBridge", dataset_path=cfg.data,
        context_size=cfg.context_size, prepend_bos=False,
        seqpos_slice=(1, None) if cfg.exclude_first else (None,),
        training_tokens=steps * cfg.batch_size, train_batch_size_tokens=cfg.batch_size,
        store_batch_size_prompts=cfg.harvest_batch_size,
        n_batches_in_buffer=max(32, 4 * -(-cfg.batch_size // cfg.tokens_per_row)),
        n_batches_for_norm_estimate=max(1, min(1000, steps, 32_768 // cfg.batch_size)),
        lr=cfg.lr, lr_end=cfg.lr / 10, lr_warm_up_steps=cfg.lr_warm_up_steps, lr_decay_steps=cfg.lr_decay_steps,
        dead_feature_window=cfg.dead_feature_window, device=device, seed=cfg.seed,
        n_checkpoints=(steps - 1) // cfg.checkpoint_every, checkpoint_path=str(work / "checkpoints"),
        output_path=str(work / "final"), resume_from_checkpoint=str(ckpt) if ckpt else None,
        logger=_logger(cfg, wandb_on, run_id))
    if len(specs) == 1:
        ((name, (hook, scfg)),) = specs.items()
        rcfg = LanguageModelSAERunnerConfig(sae=scfg, hook_name=hook, is_dataset_tokenized=True, **common)
        saes = {name: LanguageModelSAETrainingRunner(rcfg, override_model=model, override_dataset=ds).run()}
        dirs = {name: work / "final"}
    else:
        rcfg = MultiSAETrainingRunnerConfig(saes={n: c for n, (_, c) in specs.items()},
                                            hook_names={n: h for n, (h, _) in specs.items()}, **common)
        saes = MultiSAETrainingRunner(rcfg, override_model=model, override_dataset=ds).run()
        dirs = {n: work / "final" / n for n in saes}
    for name, sae in saes.items():
        _set_metadata(sae, cfg, specs[name][0])
    return saes, {n: load_file(str(d / "sparsity.safetensors"))["sparsity"] for n, d in dirs.items()}


def _start_wandb(cfg: TrainConfig, run_id: str):
    """`wandb` (offline unless WANDB_MODE says otherwise); in cached mode the run is opened here, in
    stream mode SAELens's runner opens it."""
    wandb = wandb_module(quiet=False)
    if cfg.data_mode == "cached":
        start_run(project=WANDB_PROJECT, id=run_id, name=run_id, config=cfg.to_dict(), resume="allow", quiet=False)
    return wandb


def _log_final(wandb, run_id: str, name: str, metrics: dict) -> None:
    if wandb.run is None:  # stream mode: the runner closed its run; reopen it for the results
        start_run(project=WANDB_PROJECT, id=run_id, name=run_id, resume="allow", quiet=False)
    wandb.log({f"{name}/final/{k}": v for k, v in _flat(metrics).items()})


def train_sae(cfg: TrainConfig, out: str | Path, *, resume: bool | str | Path = False, overwrite: bool = False,
              log_to_wandb: bool = True, evaluate: bool = True, model=None, progress: bool = True) -> dict[str, Path]:
    """Train, save (SAELens format + train_config.json + metrics.json + density.png) and evaluate: on
    the held-out rows, on up to 64 held-out chats from position 0 (`metrics["chats"]`) and against
    the quality bar (`metrics["quality_bar"]`).

    Returns {sae name: directory}; one SAE goes to `out` itself, several to `out/<hook>-<width>`.
    Under torchrun every rank calls this; rank 0 writes and returns the paths, the others {}.
    """
    cfg.validate()
    out = Path(out)
    work = out / WORK
    from lm.model import default_device, load_model, model_hash

    rank, world, device = ddp.setup(cfg.device or default_device())
    try:
        if cfg.data_shards % world:
            raise ValueError(f"The world size {world} must divide data_shards={cfg.data_shards}.")
        if world > 1 and cfg.data_mode != "cached":
            raise ValueError("torchrun (DDP) training needs data_mode='cached'.")
        if cfg.data_mode == "cached" and cfg.normalize_activations not in ("none", "expected_average_only_in"):
            raise ValueError("data_mode='cached' supports normalize_activations 'none' or 'expected_average_only_in'.")
        ckpt, run_id = _check_out(out, cfg, resume, overwrite)
        ddp.barrier()  # every rank checks before rank 0 starts writing the work dir
        model = model if model is not None else load_model(cfg.model, device=device)
        specs = sae_specs(cfg, hook_widths(model, cfg.hooks), device)
        eval_rows, train_rows = split_rows(cfg, model.tokenizer)
        if not resume:
            run_id = _start_run(work, cfg, rank)
        wandb = _start_wandb(cfg, run_id) if log_to_wandb and rank == 0 else None
        t0 = time.time()
        if cfg.data_mode == "cached":
            saes, sparsity = _train_cached(cfg, specs, model, train_rows, work, ckpt, rank, world, device,
                                           wandb is not None, run_id, progress)
        else:
            saes, sparsity = _train_stream(cfg, specs, model, train_rows, work, ckpt, device, wandb is not None, run_id)
        seconds = time.time() - t0
    finally:
        ddp.teardown()
    if rank != 0:
        return {}
    paths = {}
    chats = _heldout_chats(cfg, model.tokenizer) if evaluate else None
    for name, sae in saes.items():
        hook, dest = specs[name][0], out if len(saes) == 1 else out / name
        save_sae(sae, dest, sparsity[name], {"train_config.json": {
            **cfg.to_dict(), "sae_name": name, "hook": hook, "model_source": model_hash(model), "world_size": world}})
        metrics = _final_metrics(cfg, sae, name, hook, dest, model, eval_rows, chats, world, seconds, device, progress)
        write_json(dest / "metrics.json", metrics)
        paths[name] = dest
        if wandb is not None:
            _log_final(wandb, run_id, name, metrics)
    if wandb is not None:
        finish_run()
    shutil.rmtree(work, ignore_errors=True)
    return paths


def _final_metrics(cfg: TrainConfig, sae, name: str, hook: str, dest: Path, model, eval_rows, chats,
                   world: int, seconds: float, device: str, progress: bool) -> dict:
    """The metrics.json of one saved SAE: its training section and, when `chats` (from `_heldout_chats`)
    is given, the evaluation of the copy saved at `dest` on the held-out rows (drawing its density.png),
    on the chats, and against the quality bar."""
    metrics = {"training": {"steps": cfg.steps, "tokens": cfg.steps * cfg.batch_size, "seconds": seconds,
                            "world_size": world, "l0_last_window": sae.cfg.metadata.l0,
                            "dead_latents_last_window": sae.cfg.metadata.num_dead_features}}
    if chats is None:
        return metrics
    saved = load_sae(dest, device)
    ev = evaluate_sae(saved, model, eval_rows, hook, progress=progress)
    plot_density(ev, dest / "density.png", title=name)
    ev.pop("feature_density")
    metrics = {**ev, **metrics}
    seqs, source = chats
    metrics["chats"] = ({**evaluate_chats(saved, model, seqs, hook, progress=progress), "source": source}
                        if seqs else {"skipped": source})
    metrics["quality_bar"] = quality_bar(metrics)
    return metrics


def _heldout_chats(cfg: TrainConfig, tokenizer) -> tuple[list, str]:
    """(held-out whole chats, where from) for the final evaluation; ([], why) when there are none
    (the run's SAEs are saved either way)."""
    try:
        return chat_conversations(cfg, cfg.data, tokenizer, ChatEvalConfig.n_chats)
    except ValueError as e:
        return [], f"no chats evaluated: {e}"


def _flat(d: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[prefix + k] = v
    return out
