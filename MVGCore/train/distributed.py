"""Where this process stands in the run: its rank, its device and the arithmetic it computes in.

One process trains alone; under torchrun every rank runs the same code and the few points where
ranks must agree (the step's loss, whether to stop, the RNG states a checkpoint keeps, the final
weight digests) go through the helpers here, which are no-ops for a single process.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from MVGCore.model import MVGModel
from MVGCore.train.config import TrainConfig


@dataclass
class Distributed:
    """This process's rank among ``world`` processes and its device; ``initialised_here`` when this
    run (not an embedding program) created the process group and so must destroy it."""

    rank: int
    world: int
    device: torch.device
    initialised_here: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def average(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` averaged over the ranks, in place (every rank gets the same number)."""
        if self.world > 1:
            dist.all_reduce(value)
            value /= self.world
        return value

    def any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any rank: a stop signal may reach only some of them."""
        flags = torch.tensor(float(flag), device=self.device)
        if self.world > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return bool(flags)

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every rank, in rank order (``[value]`` for a single process)."""
        if self.world == 1:
            return [value]
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, value)
        return gathered

    def wrap(self, model: MVGModel) -> torch.nn.Module:
        """The module the steps run: ``model`` itself, or under torchrun its DDP wrapper, which
        averages gradients across ranks."""
        if self.world == 1:
            return model
        config = model.config
        # Blocks after the last feature block get no gradient; DDP must be told to expect that.
        unused = max(config.feature_blocks) < config.depth - 1
        return torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=unused,
        )

    def close(self) -> None:
        """Leave the process group this run created (one it joined belongs to the caller)."""
        if self.initialised_here and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(deterministic: bool) -> Distributed:
    """Join the torchrun process group when launched by torchrun (NCCL on GPUs, gloo on CPUs)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world == 1:
        return Distributed(0, 1, torch.device("cuda" if cuda else "cpu"), False)
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device("cpu")
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    initialised_here = not dist.is_initialized()
    if initialised_here:
        dist.init_process_group("nccl" if cuda else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), device, initialised_here)


def amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The mixed-precision type of the forward passes: bfloat16 on GPUs by default, none on CPUs."""
    if config.amp == "bf16" or (config.amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    """Autocast to ``dtype`` on ``device``, or nothing when ``dtype`` is None (full precision)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
