"""python -m train: set up (config, distributed, data, model, resume), then epoch after
epoch train, evaluate, checkpoint and log. Reads top to bottom."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from models import build_resnet
from train import checkpoint
from train.config import (
    DEFAULT_WARMUP_EPOCHS,
    ConfigError,
    Derived,
    TrainConfig,
    check,
    derive,
    parse_config,
    to_dict,
)
from train.data import ShardsError, load_manifest, make_loader
from train.logs import (
    Board,
    code_version,
    machine_facts,
    summarize,
    write_atomic,
    write_history,
    write_summary,
)
from train.loop import Interrupted, NonFiniteLoss, Run, evaluate, train_one_epoch

IMAGENET_TRAIN_IMAGES = 1_281_167
# Changing these on resume would load weights into another network.
ARCHITECTURE = ("depth", "variant", "sd", "sd_mode", "pL")


class ResumeError(Exception):
    pass


class ReplicaError(Exception):
    pass


def replicas_identical(model: torch.nn.Module) -> bool:
    """Whether every rank holds the same weights: per-tensor float64 sums, min == max."""
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
    low, high = sums.clone(), sums.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.equal(low, high))


def say(d: Derived | None, *lines: str) -> None:
    """Print on rank 0 only (tqdm-safe)."""
    if d is None or d.rank == 0:
        for line in lines:
            tqdm.write(line)


# ---------------------------------------------------------------------------- setup


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment, or a single process."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def dataset_facts(cfg: TrainConfig) -> dict:
    """num_classes and sample counts, from the manifest (or ImageNet's, for --synthetic)."""
    try:
        manifest = load_manifest(cfg.data_dir)
    except ShardsError:
        if not cfg.synthetic:
            raise
        return {"num_classes": 1000, "train": IMAGENET_TRAIN_IMAGES, "val": 0, "manifest": None}
    classes_txt = Path(cfg.data_dir) / "classes.txt"
    if classes_txt.is_file() and len(classes_txt.read_text().split()) != manifest["num_classes"]:
        raise ShardsError(
            f"{classes_txt} lists {len(classes_txt.read_text().split())} classes but the manifest "
            f"says {manifest['num_classes']}: the shards folder is inconsistent; rerun make shards"
        )
    return {
        "num_classes": manifest["num_classes"],
        "train": manifest["splits"]["train"]["num_samples"],
        "val": manifest["splits"]["val"]["num_samples"],
        "manifest": manifest,
    }


MIN_LAST_BATCH = 2


def batches_per_epoch(num_samples: int, world_size: int, micro_batch: int) -> tuple[int, bool]:
    """(batches each rank yields, whether every rank skips its last one), as DALI's padded
    sharding gives them: every rank pads its shard to ceil(N / ranks) samples. The last batch
    is skipped (by every rank, to keep DDP's all-reduces paired) when some rank's would hold
    fewer than MIN_LAST_BATCH samples: an empty batch cannot join the gradient all-reduce, and
    batch norm cannot train on one sample. The reshuffle changes which samples that is."""
    per_rank = math.ceil(num_samples / world_size)
    batches = math.ceil(per_rank / micro_batch)
    smallest_shard = num_samples // world_size
    return batches, smallest_shard - (batches - 1) * micro_batch < MIN_LAST_BATCH


def cache_shards(cfg: TrainConfig, d: Derived, manifest: dict) -> tuple[str, Path | None]:
    """Copy the shards to /dev/shm when they fit; (folder to read, copy to delete at exit)."""
    ram = Path("/dev/shm")
    files = ["manifest.json", "classes.txt"] + [
        name
        for info in manifest["splits"].values()
        for s in info["shards"]
        for name in (s["tar"], s["index"])
    ]
    size = sum(
        (Path(cfg.data_dir) / f).stat().st_size for f in files if (Path(cfg.data_dir) / f).exists()
    )
    if not ram.is_dir():
        say(d, f"--cache: no RAM disk at {ram}; reading {cfg.data_dir} directly")
        return cfg.data_dir, None
    free = shutil.disk_usage(ram).free
    if size * 1.05 > free:
        say(
            d,
            f"--cache: the shards need {size / 1e9:.1f} GB but {ram} has {free / 1e9:.1f} GB free; "
            f"reading {cfg.data_dir} directly",
        )
        return cfg.data_dir, None
    # The same name on every rank of a node (hash() is salted per process; sha1 is not).
    source_id = hashlib.sha1(str(Path(cfg.data_dir).resolve()).encode()).hexdigest()[:12]
    target = ram / f"imagenet-shards-{os.getuid()}-{source_id}"
    if d.world_size > 1:
        dist.barrier()  # every rank has measured the free space before any copying starts
    if d.local_rank == 0:
        target.mkdir(exist_ok=True)
        for name in tqdm(files, desc="cache", unit="file", disable=d.rank != 0):
            src, dst = Path(cfg.data_dir) / name, target / name
            if src.exists() and (not dst.exists() or dst.stat().st_size != src.stat().st_size):
                shutil.copyfile(src, dst)
    if d.world_size > 1:
        dist.barrier()
    say(d, f"--cache: {size / 1e9:.1f} GB of shards copied to {target}")
    return str(target), target if d.local_rank == 0 else None


def resolve_resume(cfg: TrainConfig, out: Path) -> Path | None:
    if cfg.resume == "none":
        return None
    if cfg.resume == "auto":
        last = out / "last.pt"
        return last if last.is_file() else None
    return Path(cfg.resume)


def check_resumable(ckpt: dict, cfg: TrainConfig, num_classes: int, path: Path) -> list[str]:
    """Refuse another architecture; return the other flags that changed (allowed)."""
    saved = ckpt["config"]
    clash = [
        f"--{k} {saved[k]} (now {getattr(cfg, k)})"
        for k in ARCHITECTURE
        if saved[k] != getattr(cfg, k)
    ]
    if ckpt["num_classes"] != num_classes:
        clash.append(f"{ckpt['num_classes']} classes (the shards have {num_classes})")
    if clash:
        raise ResumeError(
            f"{path} was trained with {', '.join(clash)}: use another --out, the same flags, "
            "or --resume none to start over"
        )
    ignore = {"resume", "out", "data_dir", "cache", "workers", "dali", "log_every"}
    return [k for k, v in saved.items() if k not in ignore and v != getattr(cfg, k, v)]


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv and linear weights (rank >= 2), not on BN weights or biases."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, d: Derived) -> torch.optim.SGD:
    """SGD with momentum in torch's fused kernel, on the CPU as on CUDA (one code path; it is
    the fastest on both), every momentum buffer created up front (see add_momentum_buffers)."""
    optimizer = torch.optim.SGD(
        param_groups(model, cfg.weight_decay),
        lr=d.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        fused=True,
    )
    add_momentum_buffers(optimizer)
    return optimizer


def add_momentum_buffers(optimizer: torch.optim.SGD) -> None:
    """A zero momentum buffer for every parameter that has none yet.

    In batch-mode stochastic depth a dropped block's parameters get no gradient, so SGD leaves
    them alone that step (no momentum or weight-decay update), and a block dropped at the
    first step gets its first gradient later than the others. The fused kernel treats its
    first step as all-or-nothing over a parameter group: a buffer missing after that step
    crashes it, and a first step that the GradScaler finds overflowed leaves every buffer
    uninitialized. With zero buffers from the start that first-step path never runs, and
    the result is the same: momentum x 0 + gradient is the gradient, which is what torch
    stores at a parameter's first step (dampening is 0)."""
    for group in optimizer.param_groups:
        if group["momentum"] == 0:
            continue
        for p in group["params"]:
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p)


def compile_blocks(model) -> None:
    """torch.compile block by block, in place: in batch mode the per-step skip decisions stay
    plain Python, and each block compiles a kept and a skipped variant."""
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for block in model.blocks():
        block.compile()


def synthetic_batches(d: Derived, n: int, image_size: int, num_classes: int, seed: int):
    """Random input of the right shape, type and layout on the device: the model alone."""
    g = torch.Generator(device=d.device).manual_seed(seed)
    dtype = torch.float16 if d.amp else torch.float32
    shape = (d.micro_batch, 3, image_size, image_size)
    images = torch.randn(shape, device=d.device, generator=g).to(dtype)
    images = images.contiguous(memory_format=torch.channels_last)  # as DALI's batches are
    labels = torch.randint(0, num_classes, (d.micro_batch,), device=d.device, generator=g)
    for _ in range(n):
        yield images, labels


def loader_kwargs(cfg: TrainConfig, d: Derived) -> dict:
    knobs = {k: getattr(cfg.dali, k) for k in cfg.dali.__dataclass_fields__}
    knobs["num_threads"] = cfg.workers  # --workers is the DALI thread count
    return {
        "batch_size": d.micro_batch,
        "image_size": cfg.image_size,
        "rank": d.rank,
        "world_size": d.world_size,
        "device": d.device,
        "seed": cfg.seed,
        "dtype": torch.float16 if d.amp else torch.float32,
        **knobs,
    }


def build_training(cfg: TrainConfig, d: Derived, num_classes: int):
    """(model, the module the training step calls, optimizer, scaler), before any resume."""
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_resnet(
        cfg.depth,
        variant=cfg.variant,
        sd_mode=d.sd_mode,
        final_survival=cfg.pL,
        num_classes=num_classes,
        sd_seed=cfg.seed,
    )
    model.checkpoint_activations = cfg.checkpoint_activations
    model.to(d.device)
    if d.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg, d)
    scaler = torch.amp.GradScaler(d.device.type, enabled=d.amp and d.amp_dtype == torch.float16)
    train_model = model
    if d.world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[d.device.index] if d.device.type == "cuda" else None,
            # batch mode skips whole blocks (the same ones on every rank): their parameters
            # get no gradient this step, which DDP must be told to expect
            find_unused_parameters=d.sd_mode == "batch",
            gradient_as_bucket_view=True,
        )
    if cfg.compile and d.sd_mode == "batch":
        compile_blocks(model)  # in place: DDP, if any, wraps the same module
    elif cfg.compile:
        train_model = torch.compile(train_model)
    return model, train_model, optimizer, scaler


def standalone_run(cfg: TrainConfig, d: Derived, num_classes: int, steps: int = 1) -> Run:
    """The trainer's model, optimizer and scaler in a Run for stepping with train_step outside
    the epoch loop (benchmarks, tests): no outputs, the learning rate stays at d.lr."""
    model, train_model, optimizer, scaler = build_training(cfg, d, num_classes)
    return Run(
        cfg=cfg,
        d=d,
        model=model,
        train_model=train_model,
        optimizer=optimizer,
        scaler=scaler,
        board=Board(Path("."), False, None),
        steps_per_epoch=steps,
        batches_per_epoch=steps,
        skip_last_batch=False,
        warmup_steps=0,
        total_steps=steps,
    )


# ---------------------------------------------------------------------------- the run


def write_config(
    out: Path,
    cfg,
    d: Derived,
    steps_per_epoch: int,
    parameters: int,
    num_classes: int,
    data_dir: str,
) -> None:
    """config.json: the config, what was derived from it, the code version and the machine."""
    derived = {
        "lr": d.lr,
        "warmup_epochs": d.warmup_epochs,
        "micro_batch": d.micro_batch,
        "world_size": d.world_size,
        "amp": d.amp,
        "amp_dtype": str(d.amp_dtype) if d.amp else "float32",
        "channels_last": d.channels_last,
        "device": str(d.device),
        "steps_per_epoch": steps_per_epoch,
        "parameters": parameters,
        "num_classes": num_classes,
        "data_dir_used": data_dir,
    }
    record = {
        "config": to_dict(cfg),
        "derived": derived,
        "code_version": code_version(),
        "machine": machine_facts(d.device, d.world_size),
    }
    write_atomic(out / "config.json", json.dumps(record, indent=1) + "\n")


def train(cfg: TrainConfig, d: Derived, facts: dict, data_dir: str) -> int:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    resume_path = resolve_resume(cfg, out)
    ckpt = checkpoint.load(resume_path) if resume_path else None
    if ckpt is not None:
        changed = check_resumable(ckpt, cfg, facts["num_classes"], resume_path)
        say(
            d,
            f"resuming from {resume_path}: epoch {ckpt['epoch'] + 1}, batch {ckpt['batches_done']}"
            + (f" (flags changed since: {', '.join(changed)})" if changed else ""),
        )

    model, train_model, optimizer, scaler = build_training(cfg, d, facts["num_classes"])
    history, best_top1, start_epoch, start_batch, totals, seconds_before = [], -1.0, 0, 0, None, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        add_momentum_buffers(optimizer)  # checkpoints of older versions may lack some
        scaler.load_state_dict(ckpt["scaler"])
        checkpoint.set_rng_state(ckpt["rng"], model)
        history, best_top1 = ckpt["history"], ckpt["best_top1"]
        start_epoch, start_batch = ckpt["epoch"], ckpt["batches_done"]
        totals, seconds_before = ckpt["totals"], ckpt["seconds"]

    n_batches, skip_last = batches_per_epoch(facts["train"], d.world_size, d.micro_batch)
    loader_batches = n_batches  # what DALI yields per epoch, before --max_steps_per_epoch
    if cfg.max_steps_per_epoch:
        n_batches, skip_last = min(n_batches, cfg.max_steps_per_epoch * cfg.accum), False
    steps_per_epoch = math.ceil((n_batches - int(skip_last)) / cfg.accum)
    run = Run(
        cfg=cfg,
        d=d,
        model=model,
        train_model=train_model,
        optimizer=optimizer,
        scaler=scaler,
        board=Board(
            out,
            d.rank == 0,
            start_epoch * steps_per_epoch + start_batch // cfg.accum if ckpt else None,
        ),
        steps_per_epoch=steps_per_epoch,
        batches_per_epoch=n_batches,
        skip_last_batch=skip_last,
        warmup_steps=round(d.warmup_epochs * steps_per_epoch),
        total_steps=cfg.epochs * steps_per_epoch,
    )
    install_stop_handlers(run)
    parameters = sum(p.numel() for p in model.parameters())
    if d.rank == 0:
        write_config(out, cfg, d, steps_per_epoch, parameters, facts["num_classes"], data_dir)
    say(
        d,
        f"ResNet-{cfg.depth} ({cfg.variant}), stochastic depth {d.sd_mode}"
        + (f" (pL {cfg.pL})" if cfg.sd else "")
        + f", {parameters:,} parameters; "
        f"{d.world_size} x {d.device.type}, batch {cfg.batch} ({d.micro_batch} per rank"
        + (f" x {cfg.accum} accum" if cfg.accum > 1 else "")
        + f"), lr {d.lr:g}, "
        + (f"AMP {str(d.amp_dtype).split('.')[-1]}" if d.amp else "float32")
        + f", {steps_per_epoch} steps/epoch",
    )
    if cfg.warmup_epochs is None and d.warmup_epochs < DEFAULT_WARMUP_EPOCHS:
        say(
            d,
            f"warmup: {d.warmup_epochs:g} epochs, a quarter of this {cfg.epochs}-epoch run (the "
            f"default {DEFAULT_WARMUP_EPOCHS:g} is for longer runs; --warmup_epochs sets it)",
        )

    val_loader = None
    if not cfg.synthetic:
        val_loader = make_loader(data_dir, "val", **loader_kwargs(cfg, d))
    started = time.time() - sum(r["epoch_seconds"] for r in history)
    with contextlib.closing(run.board):  # flushes TensorBoard whatever happens
        for epoch in range(start_epoch, cfg.epochs):
            if cfg.synthetic:
                batches = synthetic_batches(
                    d, n_batches, cfg.image_size, facts["num_classes"], cfg.seed + epoch
                )
            else:
                batches = make_loader(data_dir, "train", epoch=epoch, **loader_kwargs(cfg, d))
                if len(batches) != loader_batches:  # the step count every rank relies on
                    raise RuntimeError(
                        f"DALI yields {len(batches)} batches per epoch, the trainer planned "
                        f"{loader_batches}: please report this with config.json"
                    )
            try:
                row = train_one_epoch(
                    run,
                    batches,
                    epoch,
                    start_batch=start_batch,
                    totals=totals,
                    seconds_before=seconds_before,
                )
            except Interrupted as stop:
                if d.rank == 0:
                    save(
                        run,
                        out,
                        epoch,
                        stop.batches_done,
                        history,
                        best_top1,
                        stop.totals,
                        stop.seconds,
                        facts,
                    )
                say(
                    d,
                    f"stopped by a signal at epoch {epoch + 1}, batch {stop.batches_done}; saved "
                    f"{out / 'last.pt'}: rerun the same command to resume",
                )
                return 128 + signal.SIGTERM if run.stop_requested[0] == "SIGTERM" else 130
            del batches
            start_batch, totals, seconds_before = 0, None, 0.0
            evaluated = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
            if evaluated and val_loader is not None:
                row.update(evaluate(model, val_loader, d))
            if d.world_size > 1:
                row["replicas_identical"] = replicas_identical(model)
                if not row["replicas_identical"]:
                    raise ReplicaError(
                        f"the weights differ across the {d.world_size} ranks after epoch "
                        f"{epoch + 1}: the ranks took different steps (please report this, "
                        "with config.json)"
                    )
            row = {"epoch": epoch + 1, **row}
            history.append(row)
            improved = row.get("val_top1") is not None and row["val_top1"] > best_top1
            best_top1 = max(best_top1, row.get("val_top1") or -1.0)
            if d.rank == 0:
                save(run, out, epoch + 1, 0, history, best_top1, None, 0.0, facts, best=improved)
                write_history(out, history)
                write_summary(
                    out,
                    summarize(
                        history,
                        parameters=parameters,
                        total_seconds=time.time() - started,
                        config=to_dict(cfg),
                    ),
                )
                run.board.scalars(
                    {f"epoch/{k}": v for k, v in row.items() if k != "epoch"}, epoch + 1
                )
            say(d, epoch_line(row, cfg.epochs))
            if d.world_size > 1:
                dist.barrier()
        if d.rank == 0:
            summary = summarize(
                history,
                parameters=parameters,
                total_seconds=time.time() - started,
                config=to_dict(cfg),
            )
            run.board.hparams(
                {k: v for k, v in to_dict(cfg).items() if k not in ("dali",)},
                {
                    "hparam/best_top1": summary["best_top1"],
                    "hparam/final_top1": summary["final_top1"],
                },
            )
            say(
                d,
                f"done: best top-1 {fmt(summary['best_top1'])} at epoch {summary['best_epoch']}, "
                f"final top-1 {fmt(summary['final_top1'])}, top-5 {fmt(summary['final_top5'])}; "
                f"outputs in {out}",
            )
    return 0


def fmt(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def epoch_line(row: dict, epochs: int) -> str:
    val = (
        f"val loss {row['val_loss']:.4f} top-1 {fmt(row['val_top1'])} top-5 {fmt(row['val_top5'])}"
        if "val_top1" in row
        else "no val"
    )
    return (
        f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f} top-1 "
        f"{fmt(row['train_top1'])} | {val} | lr {row['lr']:.5f} | {row['epoch_seconds']:.1f} s, "
        f"{row['images_per_second']:.1f} img/s"
    )


def save(
    run: Run,
    out: Path,
    epoch: int,
    batches_done: int,
    history,
    best_top1,
    totals,
    seconds,
    facts,
    best: bool = False,
) -> None:
    """last.pt (and best.pt): everything a resumed run needs to continue exactly."""
    state = {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "epoch": epoch,  # epochs completed, or the epoch in progress when batches_done > 0
        "batches_done": batches_done,
        "totals": None if totals is None else totals.cpu(),
        "seconds": seconds,
        "history": history,
        "best_top1": best_top1,
        "rng": checkpoint.rng_state(run.model),
        "config": to_dict(run.cfg),
        "num_classes": facts["num_classes"],
        "code_version": code_version(),
    }
    checkpoint.save(out / "last.pt", state)
    if best:
        checkpoint.save(out / "best.pt", state)


def install_stop_handlers(run: Run) -> None:
    """SIGTERM (preemption) and SIGINT (Ctrl-C): finish the step, agree, save, exit."""

    def handler(signum, _frame):
        if run.stop_requested[0]:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        run.stop_requested[0] = signal.Signals(signum).name
        say(
            run.d,
            f"{signal.Signals(signum).name} received: saving a checkpoint at the next log point",
        )

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    rank, world_size, local_rank = dist_env()
    d = None
    cached = None
    try:
        try:
            facts, data_problems = dataset_facts(cfg), []
        except ShardsError as e:
            facts, data_problems = None, [str(e)]
        check(cfg, world_size, data_problems)  # every problem of flags and data at once
        d = derive(cfg, rank, world_size, local_rank)
        if world_size > 1:
            if d.device.type == "cuda":
                torch.cuda.set_device(d.device)
            dist.init_process_group("nccl" if d.device.type == "cuda" else "gloo")
        data_dir = cfg.data_dir
        if cfg.cache and facts["manifest"] is not None:
            data_dir, cached = cache_shards(cfg, d, facts["manifest"])
        return train(cfg, d, facts, data_dir)
    except (ConfigError, ShardsError, ResumeError) as e:
        if rank == 0:
            print(f"train: error: {e}", file=sys.stderr)
        return 2
    except (NonFiniteLoss, ReplicaError) as e:
        if rank == 0:
            print(f"train: error: {e}", file=sys.stderr)
        return 3
    finally:
        if cached is not None:
            shutil.rmtree(cached, ignore_errors=True)
        if dist.is_initialized():
            dist.destroy_process_group()
