"""Where a run happens: the ranks torchrun started (or one process), the process group over
them (per restart attempt, with a timeout), the check that every rank was started with the
same flags, and the check that every rank still holds the same weights.

torchrun restarts a failed group (--max_restarts) with new workers. By default it shares its
rendezvous store with them (TORCHELASTIC_USE_AGENT_STORE), and the new workers' process
group then reads keys the previous attempt left there: with gloo, "connectFullMesh failed
... Connection refused" or a hang, in most restarts tried by hand. torch's own
switch, TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in torchrun's environment, gives each attempt
a fresh store on a port the agents agree on through the rendezvous, on one node or many:
`make train` and the README's SLURM script set it. Started without it on one node, the
group is built on a per-attempt prefix of the shared store (the one agent's restart count
names the attempt); on several nodes the agents' restart counts differ (only the failed
node's agent counts a restart), so a run that may restart is refused with the fix named.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from train.config import ConfigError, Derived, TrainConfig, to_dict

# Flags that may differ between ranks: nodes may mount the shards at different paths.
PER_NODE_FLAGS = ("data_dir",)


class ReplicaError(Exception):
    """The ranks' weights differ: they took different steps."""


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment, or a single process."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def attempt_store(timeout: timedelta) -> dist.Store | None:
    """The store of this restart attempt's process group, when torchrun shares its own with
    the workers and may restart them; None: the default (env://) is safe."""
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if int(env.get("TORCHELASTIC_MAX_RESTARTS", 0)) == 0:
        return None
    if int(env.get("GROUP_WORLD_SIZE", 1)) > 1:
        raise ConfigError(
            "torchrun --max_restarts over several nodes shares its rendezvous store with the "
            "workers, and a restarted group would read the keys of the attempt before: set "
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in torchrun's environment (make train does)"
        )
    client = dist.TCPStore(
        env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, timeout=timeout
    )
    return dist.PrefixStore(f"train/attempt_{env['TORCHELASTIC_RESTART_COUNT']}/", client)


def start_process_group(d: Derived, timeout_minutes: float) -> None:
    """NCCL over the GPUs (each rank on its own), gloo on the CPU; nothing for one process.
    A collective that waits longer than timeout_minutes for a peer raises."""
    if d.world_size == 1:
        return
    if d.device.type == "cuda":
        torch.cuda.set_device(d.device)
    backend = "nccl" if d.device.type == "cuda" else "gloo"
    timeout = timedelta(minutes=timeout_minutes)
    store = attempt_store(timeout)
    if store is None:
        dist.init_process_group(backend, timeout=timeout)
    else:
        dist.init_process_group(
            backend, store=store, rank=d.rank, world_size=d.world_size, timeout=timeout
        )


def check_same_flags(cfg: TrainConfig, d: Derived) -> None:
    """Refuse a run whose ranks were started with different flags (a typo on one node)."""
    if d.world_size == 1:
        return
    mine = {k: v for k, v in to_dict(cfg).items() if k not in PER_NODE_FLAGS}
    everyone: list = [None] * d.world_size
    dist.all_gather_object(everyone, mine)
    differences = [
        f"rank {rank}: --{k} {theirs.get(k)} (rank 0: {everyone[0].get(k)})"
        for rank, theirs in enumerate(everyone)
        for k in sorted(set(theirs) | set(everyone[0]))
        if theirs.get(k) != everyone[0].get(k)
    ]
    if differences:
        raise ConfigError(
            "the ranks were started with different flags: " + "; ".join(differences[:5])
        )


def end_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# What gloo says when a peer does not answer (stopped, hung) or is gone (killed, node lost).
PEER_FAILURES = {
    "Timed out": "a peer did not answer in time",
    # the same timeout, as gloo reports it where DDP broadcasts the BN buffers in forward
    "Application timeout caused pair closure": "a peer did not answer in time",
    "Connection closed by peer": "a peer's connection closed (it died)",
    "Connection reset by peer": "a peer's connection was reset (it died)",
}


def peer_failure(error: BaseException) -> str | None:
    """What happened, when error is a collective's failure caused by another rank."""
    text = str(error)
    found = [what for key, what in PEER_FAILURES.items() if key in text]
    if isinstance(error, dist.DistError) and not found:
        found = [f"a collective failed ({text.splitlines()[0] if text else type(error).__name__})"]
    return found[0] if found else None


def peer_failure_line(error: BaseException, d_rank: int, timeout_minutes: float) -> str | None:
    """The one line a rank prints when a peer's failure ended its run (None: not that)."""
    what = peer_failure(error)
    if what is None:
        return None
    return (
        f"train: error: rank {d_rank}: {what} (--dist_timeout_minutes {timeout_minutes:g}); "
        "under torchrun --max_restarts the group restarts and resumes from last.pt, else rerun "
        "the same command"
    )


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
