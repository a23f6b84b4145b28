"""Data-parallel SAE training: PyTorch DDP around SAELens's TrainingSAE (torchrun; gloo on CPU, NCCL on GPU).

SAELens has no DDP of its own. Its SAETrainer calls `sae.training_forward_pass(step_input=...)`,
so we route that call through a `DistributedDataParallel` module holding the SAE (the same seam
SAELens uses for `compile_sae`). DDP broadcasts rank 0's initial weights and averages gradients
during backward, before SAELens clips and steps; the SAE loss is a mean over the batch, so the
average over equal rank batches is the gradient of the global batch. Optimiser, schedulers and
sparsity statistics stay SAELens's. (EleutherAI's sparsify is DDP-native but TopK-only, with its own
trainer and checkpoint format; wrapping SAELens keeps one trainer for all four architectures.)
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def setup(device: str) -> tuple[int, int, str]:
    """(rank, world size, this rank's device); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if str(device).startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), world, device


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class _TrainingForward(nn.Module):
    def __init__(self, sae):
        super().__init__()
        self.sae = sae

    def forward(self, step_input):
        return type(self.sae).training_forward_pass(self.sae, step_input)


def wrap(sae, device: str) -> DistributedDataParallel:
    """Send `sae.training_forward_pass` through DDP (a plain instance attribute: no module cycle)."""
    ddp = DistributedDataParallel(_TrainingForward(sae),
                                  device_ids=[torch.device(device).index] if device.startswith("cuda") else None)
    sae.training_forward_pass = lambda step_input: ddp(step_input)
    return ddp


def all_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        t = t.clone()
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
    return t.cpu()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
