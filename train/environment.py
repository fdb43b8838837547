"""Where a run happens: the ranks torchrun started (or one process), the process group over
them, and the check that every rank still holds the same weights."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from train.config import Derived


class ReplicaError(Exception):
    """The ranks' weights differ: they took different steps."""


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment, or a single process."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def start_process_group(d: Derived) -> None:
    """NCCL over the GPUs (each rank on its own), gloo on the CPU; nothing for one process."""
    if d.world_size == 1:
        return
    if d.device.type == "cuda":
        torch.cuda.set_device(d.device)
    dist.init_process_group("nccl" if d.device.type == "cuda" else "gloo")


def end_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def replicas_identical(model: torch.nn.Module) -> bool:
    """Whether every rank holds the same weights: per-tensor float64 sums, min == max."""
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
    low, high = sums.clone(), sums.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.equal(low, high))


def check_replicas(model: torch.nn.Module, d: Derived, epoch: int) -> bool:
    """True when every rank holds the same weights after `epoch` (0-based); else ReplicaError."""
    if not replicas_identical(model):
        raise ReplicaError(
            f"the weights differ across the {d.world_size} ranks after epoch {epoch + 1}: the "
            "ranks took different steps (please report this, with config.json)"
        )
    return True
