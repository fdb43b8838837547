"""One training epoch and one evaluation: plain functions over a `Run`.

Metrics are accumulated on the device and read back only at log points (every
cfg.log_every steps) and at the end of the epoch: no GPU->CPU sync in the hot loop. A
non-finite loss is recorded on the device at the step it happens and reported at the next
log point, naming that step.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from train.config import Derived
from train.ema import update_average
from train.inputs import TrainData
from train.metrics import correct, hits
from train.mixing import mix_batch, random_erase
from train.order import Micro
from train.schedule import lr_of
from train.signals import Interrupted
from train.state import Run


class NonFiniteLoss(Exception):
    def __init__(self, epoch: int, step: int) -> None:
        super().__init__(
            f"the training loss became non-finite at epoch {epoch + 1}, step {step} (global); "
            "last.pt and best.pt hold the last good weights. Lower --lr, or try "
            "--amp_dtype bf16 / --no_mixed_precision"
        )
        self.epoch, self.step = epoch, step


# What the epoch loop calls to save last.pt mid-epoch: (optimizer steps done, every rank's
# totals, seconds of training in the epoch so far) -> None.
SavePosition = Callable[[int, torch.Tensor, float], None]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def agreed_actions(run: Run) -> tuple[bool, bool]:
    """(stop: any rank was asked to stop, save: rank 0's clock says a save is due), the same
    on every rank, so that all stop or save at the same step: one all-reduce."""
    save = run.d.rank == 0 and run.save_due()
    flags = torch.tensor([float(bool(run.stop_requested[0])), float(save)], device=run.d.device)
    if run.d.world_size > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    stop, save = flags.tolist()
    return bool(stop), bool(save)


def every_ranks_totals(totals: torch.Tensor, d: Derived) -> torch.Tensor:
    """Every rank's running totals, (world_size, 3) (what a checkpoint keeps: each rank
    resumes its own float32 sums, so the epoch's metrics come out bit for bit as if it had
    not stopped; a sum over the ranks would add in another order)."""
    if d.world_size == 1:
        return totals.clone()[None]
    rows = [torch.empty_like(totals) for _ in range(d.world_size)]
    dist.all_gather(rows, totals)
    return torch.stack(rows)


def resumed_totals(saved: torch.Tensor | None, d: Derived) -> torch.Tensor:
    """This rank's running totals at the start of an epoch: its own row of a checkpoint's;
    a checkpoint of another number of ranks: rank 0 carries their sum."""
    totals = torch.zeros(3, device=d.device)
    if saved is None:
        return totals
    saved = saved.to(d.device, torch.float32)
    if saved.shape[0] == d.world_size:
        return saved[d.rank].clone()
    return saved.sum(0) if d.rank == 0 else totals


def draw_seed(*key) -> int:
    """A seed from a key of numbers: a hash, the same in every version."""
    text = "draws/" + "/".join(map(str, key))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def seed_draws(run: Run, epoch: int, micro: Micro) -> None:
    """Seed the draws of one micro-batch, so that a resumed run draws what the uninterrupted
    one would, with no generator state to save. This rank's own (from --seed, the rank and
    the micro-batch's first sample in the epoch's order): the generator of mixup, CutMix and
    random erasing, and torch's default ones, which sample-mode drop path draws from. The
    optimizer step's (from --seed and the step alone): batch-mode stochastic depth's
    decisions, the same on every rank and micro-batch of the step, whatever the world size
    (DDP needs every rank to skip the same blocks)."""
    seed = draw_seed(run.cfg.seed, run.d.rank, epoch, micro.lo)
    run.draws.manual_seed(seed)
    torch.manual_seed(seed)
    run.model.sd_rng.seed(draw_seed(run.cfg.seed, "sd", epoch, micro.step))


def augmented(run: Run, images, labels):
    """The batch after the on-device augmentation: random erasing, then mixup or CutMix;
    (images, targets), the targets class probabilities when mixed, else the labels."""
    cfg = run.cfg
    if cfg.random_erase > 0:
        images = random_erase(images, cfg.random_erase, run.draws)
    if cfg.mixup > 0 or cfg.cutmix > 0:
        return mix_batch(images, labels, run.num_classes, cfg.mixup, cfg.cutmix, run.draws)
    return images, labels


def train_step(run: Run, images, labels, boundary: bool, step: int = 0, share: float = 1.0):
    """Forward and backward of one micro-batch, its mean loss weighted by `share` (its share
    of the step's samples, times the ranks DDP averages over); an optimizer step at the end
    of a step (`boundary`: global optimizer step `step`, for --ema_every). DDP all-reduces
    gradients only there. Returns (loss, logits), still on the device."""
    cfg, d, model = run.cfg, run.d, run.train_model
    sync = contextlib.nullcontext() if boundary or d.world_size == 1 else model.no_sync()
    inputs, targets = augmented(run, images, labels)
    with sync:
        with torch.autocast(d.device.type, dtype=d.amp_dtype, enabled=d.amp):
            logits = model(inputs)  # (B, num_classes)
            loss = F.cross_entropy(logits, targets, label_smoothing=cfg.label_smoothing)
        run.scaler.scale(loss * share).backward()
    if boundary:
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.optimizer.zero_grad(set_to_none=True)
        if run.ema is not None and run.ema.due(step):
            copy = run.cfg.ema_after_warmup and run.ema.copies(step, run.plan.warmup_steps)
            update_average(run.ema, copy)
    return loss, logits


def lr_of_step(run: Run, step: int) -> float:
    return lr_of(run.plan, run.d.lr, step)


def train_one_epoch(
    run: Run,
    data: TrainData,
    epoch: int,
    *,
    start_step: int = 0,
    totals: torch.Tensor | None = None,
    seconds_before: float = 0.0,
    save_position: SavePosition | None = None,
    record: Callable[[int, int], None] | None = None,
) -> dict:
    """Train one epoch from optimizer step `start_step` on; returns the epoch's train
    metrics. Resumed mid-epoch, `totals` are the saved ones (resumed_totals). At a log point
    where a save is due, save_position saves last.pt; `record` is told every step trained."""
    cfg, d, steps = run.cfg, run.d, run.plan.steps_per_epoch
    run.train_model.train()
    totals = resumed_totals(totals, d)  # (loss sum, correct, samples) of this rank, on the device
    bad_step = torch.full((), -1, dtype=torch.long, device=d.device)
    bar = epoch_bar(run, epoch, steps, start_step)
    start, seen, lr = time.perf_counter(), 0, 0.0
    if start_step:  # resumed: the LR of the last step taken, should no step be left to train
        lr = lr_of_step(run, epoch * steps + start_step - 1)
    first = None  # the micro-batch that opens the step in progress
    for images, labels, micro in data.epoch(epoch, start_step):
        step = epoch * steps + micro.step
        if first is None or first.step != micro.step:
            first, lr = micro, lr_of_step(run, step)
            set_lr(run.optimizer, lr)
        seed_draws(run, epoch, micro)
        # each micro-batch's mean loss weighs its share of the step's samples over every rank
        share = micro.size * d.world_size / data.step_samples(micro.step)
        loss, logits = train_step(run, images, labels, micro.last, step, share)
        with torch.no_grad():
            n = labels.shape[0]
            hits = correct(logits, labels).sum()
            # torch.full launches a fill on the device: no host-to-device copy, no sync
            samples = torch.full((), float(n), device=d.device)
            totals += torch.stack([loss.detach().float() * n, hits.float(), samples])
            bad_step = torch.where(torch.isfinite(loss) | (bad_step >= 0), bad_step, step)
        seen += n
        if not micro.last:
            continue
        if record is not None:
            record(epoch, micro.step)
        # A log point (the only host syncs, where a stop or a save may happen) ends an
        # optimizer step: a gradient half accumulated is never left behind by a stop.
        done = micro.step + 1
        if done % cfg.log_every == 0 or done == steps:
            rate = seen * d.world_size / (time.perf_counter() - start)  # about: ranks differ
            log_point(run, bar, (epoch, step, done), bad_step, loss, lr, rate)
            stop, save = agreed_actions(run)
            if stop or (save and done != steps and save_position is not None):
                every = every_ranks_totals(totals, d)
                seconds = seconds_before + time.perf_counter() - start
                if stop:
                    bar.close()
                    raise Interrupted(done, every, seconds)
                save_position(done, every, seconds)
    bar.close()
    if d.device.type == "cuda":
        torch.cuda.synchronize(d.device)
    return epoch_metrics(run, totals, lr, seconds_before + time.perf_counter() - start)


def epoch_bar(run: Run, epoch: int, steps: int, start_step: int) -> tqdm:
    return tqdm(
        total=steps,
        initial=start_step,
        desc=f"epoch {epoch + 1}/{run.cfg.epochs}",
        unit="step",
        disable=run.d.rank != 0,
        leave=False,
        dynamic_ncols=True,
    )


def log_point(run: Run, bar: tqdm, where: tuple[int, int, int], bad_step, loss, lr, rate):
    """At a log point (epoch, global step, batches done): stop on a non-finite loss, naming
    the step it first happened at; advance the progress bar; log loss and LR."""
    epoch, step, done = where
    if bad_step.item() >= 0:
        raise NonFiniteLoss(epoch, int(bad_step.item()))
    bar.update(done - bar.n)
    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.4f}", img_s=f"{rate:.1f}")
    run.board.scalars({"train/loss": loss.item(), "train/lr": lr}, step)


def epoch_metrics(run: Run, totals: torch.Tensor, lr: float, seconds: float) -> dict:
    """The epoch's train metrics, summed over the ranks."""
    if run.d.world_size > 1:
        dist.all_reduce(totals)
    loss_sum, correct, count = totals.tolist()
    return {
        "lr": lr,
        "train_loss": loss_sum / max(count, 1),
        "train_top1": correct / max(count, 1),
        "epoch_seconds": seconds,
        "images_per_second": count / max(seconds, 1e-9),
        "train_samples": int(count),
    }


def eval_logits(model: torch.nn.Module, images: torch.Tensor, d: Derived, tta: bool):
    """The eval-mode model's float32 logits (B, classes) of a batch, in the run's precision;
    with `tta` the mean of the image's and its mirror image's (evaluate's and predict's)."""
    with torch.autocast(d.device.type, dtype=d.amp_dtype, enabled=d.amp):
        logits = model(images).float()
        if tta:  # (B, 3, H, W): W is the last dimension
            logits = (logits + model(images.flip(3)).float()) / 2
    return logits


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable,
    d: Derived,
    record: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    tta: bool = False,
) -> dict:
    """Loss, top-1 and top-5 over every val sample, summed exactly over all ranks. With `tta`
    the logits are the mean of the image's and its mirror image's. `record`, if given, is
    called with each batch's float32 logits (B, classes) and labels (B,)."""
    model.eval()
    sums = torch.zeros(4, device=d.device)  # loss sum, top-1 hits, top-5 hits, samples
    for images, labels in batches:
        if labels.numel() == 0:  # a rank's last batch may be empty
            continue
        logits = eval_logits(model, images, d, tta)
        if record is not None:
            record(logits, labels)
        top5 = hits(logits, labels, 5)  # (B, 5)
        sums += torch.stack(
            [
                F.cross_entropy(logits, labels, reduction="sum"),
                top5[:, 0].sum().float(),
                top5.any(1).sum().float(),
                torch.tensor(float(labels.numel()), device=d.device),
            ]
        )
    if d.world_size > 1:
        dist.all_reduce(sums)
    loss_sum, top1, top5, count = sums.tolist()
    return {
        "val_loss": loss_sum / max(count, 1),
        "val_top1": top1 / max(count, 1),
        "val_top5": top5 / max(count, 1),
        "val_samples": int(count),
    }


def rank0_buffers_everywhere(model: torch.nn.Module, d: Derived) -> None:
    """Rank 0's BN running statistics on every rank. DDP broadcasts them at the start of each
    training forward, so after an epoch's last step every rank holds its own last batch's
    update; evaluated as they are, each rank's share of the val images would see another
    model than the one last.pt keeps (rank 0's), and a run resumed after that last step
    (with rank 0's statistics everywhere) would score differently. One broadcast per dtype."""
    if d.world_size == 1:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for buffer in model.buffers():
        by_dtype.setdefault(buffer.dtype, []).append(buffer)
    for buffers in by_dtype.values():
        flat = torch.cat([b.reshape(-1) for b in buffers])
        dist.broadcast(flat, src=0)
        for b, part in zip(buffers, flat.split([b.numel() for b in buffers]), strict=True):
            b.copy_(part.view_as(b))


def evaluate_live_and_average(run: Run, batches: Iterable) -> dict:
    """The live weights' val figures, and with --ema the averaged weights' beside them
    (keys ending in _ema); flip TTA with --tta. Every rank evaluates rank 0's model."""
    rank0_buffers_everywhere(run.model, run.d)
    figures = evaluate(run.model, batches, run.d, tta=run.cfg.tta)
    if run.ema is not None:
        rank0_buffers_everywhere(run.ema.model, run.d)
        averaged = evaluate(run.ema.model, batches, run.d, tta=run.cfg.tta)
        figures |= {f"{k}_ema": v for k, v in averaged.items() if k != "val_samples"}
    return figures
