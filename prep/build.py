"""Write the shards: plan, process shards in parallel, resume, manifest.

Each shard is one task for one worker process: it reads, inspects and (where needed)
re-encodes its images, writes `<name>.tar` and `<name>.idx` under temporary names and renames
them when complete, and the main process then records the shard in OUT/.prep/. A rerun after
a crash keeps every recorded shard and redoes the rest; since the plan is a pure function of
the input and the options, the result is byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import multiprocessing as mp
import os
import random
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from queue import Empty

from tqdm import tqdm

from prep.archives import INDEX_DIR, Reader
from prep.atomic import TEMPORARY_GLOB, remove_temporaries, temporary_name, write_atomic
from prep.class_names import CLASS_NAMES, names_text
from prep.errors import PrepError
from prep.images import inspect_image
from prep.layout import Sample, Scan
from prep.shardio import cls_digits, cls_text, index_text, write_tar
from prep.sources import NO_ARCHIVES, ArchivePaths, scan

FORMAT_VERSION = 1
SPLITS = ("train", "val")
TARGET_SHARD_BYTES = 1 << 30  # at most about 1 GB per shard by default
# Shards are the unit of parallel work. Default shard counts are rounded up to a multiple of
# 64, so that the last wave of shard tasks keeps 16, 32 or 64 workers busy, unless shards
# would then hold fewer than MIN_SHARD_IMAGES images (small sets stay in a few shards).
BALANCE_SHARDS = 64
MIN_SHARD_IMAGES = 256
SIZE_SAMPLE = 1000  # files whose size estimates the mean image size
STATE_DIR = ".prep"
PROGRESS_EVERY = 16  # images between progress messages from a worker


@dataclass(frozen=True)
class PrepOptions:
    """Everything that decides the shards' bytes (--workers and --strict do not)."""

    seed: int = 0  # seeds the global shuffle of the train samples
    shard_size: int | None = None  # images per shard; None: about 1 GB shards
    max_side: int | None = None  # downscale images whose longer side exceeds this
    quality: int = 95  # JPEG quality of re-encoded (repaired or downscaled) images


@dataclass(frozen=True)
class ShardTask:
    split: str
    name: str  # e.g. train-000000
    samples: list[Sample]
    root: str
    out: str
    quality: int
    max_side: int | None
    digits: int
    # The images' bytes, in the order of samples, where the workers cannot read them
    # themselves (the members of a compressed tar, read in one stream by the main process).
    payload: tuple[bytes, ...] | None = None


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}"


def shuffled(samples: list[Sample], seed: int) -> list[Sample]:
    """Global shuffle: DALI's reader only shuffles within a buffer, so shards must be mixed."""
    out = list(samples)
    random.Random(seed).shuffle(out)
    return out


def image_bytes(root: str, sample: Sample) -> int:
    return sample.where.size if sample.where else os.path.getsize(os.path.join(root, sample.path))


def mean_file_bytes(root: str, samples: list[Sample]) -> float:
    """Mean image size over up to SIZE_SAMPLE evenly spaced samples (a stat each for files)."""
    step = max(1, len(samples) // SIZE_SAMPLE)
    picked = samples[::step][:SIZE_SAMPLE]
    return sum(image_bytes(root, s) for s in picked) / len(picked)


def default_shard_size(num_images: int, mean_bytes: float) -> int:
    """Images per shard: at most about 1 GB per shard, shard count balanced over workers."""
    shards = math.ceil(num_images * mean_bytes / TARGET_SHARD_BYTES)
    shards = math.ceil(shards / BALANCE_SHARDS) * BALANCE_SHARDS
    shards = max(1, min(shards, num_images // MIN_SHARD_IMAGES))
    return math.ceil(num_images / shards)


def plan(scanned: Scan, options: PrepOptions) -> dict[str, list[list[Sample]]]:
    """The shards of each split: train shuffled with the seed, val in sorted order."""
    shards = {}
    for split in SPLITS:
        samples = scanned.splits[split]
        if split == "train":
            samples = shuffled(samples, options.seed)
        size = options.shard_size or default_shard_size(
            len(samples), mean_file_bytes(scanned.root, samples)
        )
        shards[split] = [samples[i : i + size] for i in range(0, len(samples), size)]
    return shards


def list_digest(samples: list[Sample]) -> str:
    sha = hashlib.sha256()
    for s in samples:
        sha.update(f"{s.path}\t{s.key}\t{s.label}\n".encode())
    return sha.hexdigest()


def fingerprint(scanned: Scan, options: PrepOptions, shards: dict) -> dict:
    """What makes two runs produce the same shards; a rerun must match it to resume."""
    return {
        "format_version": FORMAT_VERSION,
        "options": asdict(options),
        "classes": list(scanned.classes),
        "inputs": {
            split: {
                "images": len(scanned.splits[split]),
                "list_sha256": list_digest(scanned.splits[split]),
                "shard_size": len(shards[split][0]),
                "shards": len(shards[split]),
            }
            for split in SPLITS
        },
    }


# ---------------------------------------------------------------- worker side

_progress: mp.Queue | None = None


def _init_worker(progress: mp.Queue) -> None:
    global _progress
    _progress = progress


def _report(n: int) -> None:
    if _progress is not None and n:
        _progress.put(n)


def _shard_members(task: ShardTask, repaired: list, skipped: list, counts: dict):
    """(name, bytes) tar members of every good sample, in plan order; records the others."""
    pending = 0
    with Reader(task.root) as reader:
        given = task.payload
        for i, s in enumerate(task.samples):
            try:
                raw = given[i] if given is not None else reader.read(s.path, s.where)
            except OSError as e:
                result_status, data, reason = "skipped", b"", f"unreadable: {e.strerror or e}"
            else:
                r = inspect_image(raw, quality=task.quality, max_side=task.max_side)
                result_status, data, reason = r.status, r.data, r.reason
            counts[result_status] += 1
            entry = {"path": s.path, "key": s.key, "reason": reason}
            if result_status == "skipped":
                skipped.append(entry)
            else:
                if result_status == "repaired":
                    repaired.append(entry)
                yield f"{s.key}.jpg", data
                yield f"{s.key}.cls", cls_text(s.label, task.digits)
            pending += 1
            if pending == PROGRESS_EVERY:
                _report(pending)
                pending = 0
    _report(pending)


def process_shard(task: ShardTask) -> dict:
    """Write one shard's tar and index (temporary names, then renamed); return its record."""
    repaired: list[dict] = []
    skipped: list[dict] = []
    counts = {"stored": 0, "repaired": 0, "resized": 0, "skipped": 0}
    tar_path = os.path.join(task.out, f"{task.name}.tar")
    idx_path = os.path.join(task.out, f"{task.name}.idx")
    tmp = temporary_name(tar_path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            members, size, sha = write_tar(fd, _shard_members(task, repaired, skipped, counts))
            os.fsync(fd)
        finally:
            os.close(fd)
        num_samples = len(members) // 2
        if num_samples:
            write_atomic(idx_path, index_text(members).encode())
            os.replace(tmp, tar_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {
        "split": task.split,
        "name": task.name,
        "tar": f"{task.name}.tar",
        "index": f"{task.name}.idx",
        "num_samples": num_samples,
        "bytes": size,
        "sha256": sha,
        "counts": counts,
        "repaired": repaired,
        "skipped": skipped,
    }


# ---------------------------------------------------------------- main side


def record_path(out: Path, name: str, state: str = STATE_DIR) -> Path:
    return out / state / f"{name}.json"


def load_record(out: Path, name: str, state: str = STATE_DIR) -> dict | None:
    """A finished shard's record (kept in OUT/<state>/), if its files are still there as
    written."""
    try:
        record = json.loads(record_path(out, name, state).read_text())
    except (OSError, ValueError):
        return None
    if record["num_samples"] == 0:
        return record
    tar = out / record["tar"]
    if not (out / record["index"]).is_file() or not tar.is_file():
        return None
    return record if tar.stat().st_size == record["bytes"] else None


def our_files(out: Path) -> list[Path]:
    """What --overwrite removes: the train and val shards, and the evaluation splits that the
    manifest lists (`python -m prep eval_set`), which belong to the classes replaced."""
    patterns = ("train-*.tar", "train-*.idx", "val-*.tar", "val-*.idx", TEMPORARY_GLOB)
    found = {p for pattern in patterns for p in out.glob(pattern)}
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        for info in json.loads((out / "manifest.json").read_text())["splits"].values():
            found |= {out / s[k] for s in info["shards"] for k in ("tar", "index")}
    for state in out.glob(eval_state("*")):  # an unfinished eval_set NAME: .prep-NAME/
        name = state.name[len(eval_state("")) :]
        found |= {*out.glob(f"{name}-*.tar"), *out.glob(f"{name}-*.idx")}
    found |= {p for p in (out / "manifest.json", out / "classes.txt", out / CLASS_NAMES)}
    return sorted(p for p in found if p.exists())


def foreign_files(out: Path) -> bool:
    """OUT holds something other than the member lists of the archives."""
    return out.is_dir() and any(p.name != INDEX_DIR for p in out.iterdir())


def check_out_is_ours(out: Path, overwrite: bool) -> None:
    """Before the scan writes OUT/.sources: refuse a non-empty OUT that prep did not write."""
    ours = (out / STATE_DIR / "plan.json").is_file() or (out / "manifest.json").is_file()
    if foreign_files(out) and not ours and not overwrite:
        raise PrepError(
            f"refusing to write into {out}: it is not empty and holds no shards of ours; "
            "choose another folder, or pass --overwrite to replace its shards"
        )


def prepare_out(out: Path, fp: dict, overwrite: bool) -> str:
    """'fresh', 'resume' or 'complete'; refuses a non-empty OUT made with other options."""
    out.mkdir(parents=True, exist_ok=True)
    state = out / STATE_DIR / "plan.json"
    manifest = out / "manifest.json"
    previous = None
    with contextlib.suppress(OSError, ValueError):
        if state.is_file():
            previous = json.loads(state.read_text())
        elif manifest.is_file():
            previous = json.loads(manifest.read_text()).get("fingerprint")
    if previous == fp:
        return "complete" if not state.is_file() else "resume"
    if foreign_files(out) and not overwrite:
        if previous is None:
            why = "it is not empty and holds no shards of ours"
        else:
            changed = [k for k in ("options", "classes", "inputs") if previous.get(k) != fp.get(k)]
            why = f"it holds shards made from other {' and '.join(changed) or 'settings'}"
        raise PrepError(
            f"refusing to write into {out}: {why}; choose another folder, rerun with the "
            "options of the earlier run, or pass --overwrite to replace its shards"
        )
    for path in our_files(out):
        path.unlink()
    for state in [out / STATE_DIR, *out.glob(eval_state("*"))]:
        shutil.rmtree(state, ignore_errors=True)
    return "fresh"


def run_tasks(
    tasks: list[ShardTask], out: Path, workers: int, total: int, done: int,
    state: str = STATE_DIR,
) -> None:  # fmt: skip
    """Process tasks in worker processes, with one progress bar over all images; each
    finished shard's record goes to OUT/<state>/."""
    ctx = mp.get_context("spawn")
    progress = ctx.Queue()
    bar = tqdm(total=total, initial=done, unit="img", desc="shards", smoothing=0.05)
    with ProcessPoolExecutor(workers, ctx, initializer=_init_worker, initargs=(progress,)) as pool:
        # Largest shards first, so that the last wave is made of the small ones.
        ordered = sorted(tasks, key=lambda t: len(t.samples), reverse=True)
        pending: dict[Future, ShardTask] = {pool.submit(process_shard, t): t for t in ordered}
        try:
            while pending:
                finished, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                drain(progress, bar)
                for future in finished:
                    task = pending.pop(future)
                    try:
                        record = future.result()
                    except BrokenProcessPool:
                        raise PrepError(
                            f"a worker process died while writing {task.name} (killed, or out of "
                            "memory?); the finished shards are kept: rerun the same command"
                        ) from None
                    except OSError as e:
                        raise PrepError(
                            f"writing {out / task.name}.tar failed: {e.strerror or e}"
                            f"{f' ({e.filename})' if e.filename else ''}; the finished shards "
                            "are kept: fix the cause (free disk space?) and rerun the same command"
                        ) from None
                    write_atomic(record_path(out, task.name, state), json.dumps(record).encode())
        except BaseException:
            for future in pending:
                future.cancel()
            bar.close()
            raise
        drain(progress, bar)
    bar.close()


def drain(progress: mp.Queue, bar: tqdm) -> None:
    with contextlib.suppress(Empty):
        while True:
            bar.update(progress.get_nowait())


def summarize(records: list[dict]) -> dict[str, int]:
    totals = {"stored": 0, "repaired": 0, "resized": 0, "skipped": 0}
    for r in records:
        for k, v in r["counts"].items():
            totals[k] += v
    return totals


def split_entry(records: list[dict], shard_size: int) -> dict:
    """A split's entry in the manifest, from the records of its shards in order."""
    shards = [
        {k: r[k] for k in ("tar", "index", "num_samples", "bytes", "sha256")}
        for r in records
        if r["num_samples"]
    ]
    return {
        "num_samples": sum(s["num_samples"] for s in shards),
        "shard_size": shard_size,
        "shards": shards,
        "counts": summarize(records),
        "repaired": [e for r in records for e in r["repaired"]],
        "skipped": [e for r in records for e in r["skipped"]],
    }


def build_manifest(scanned: Scan, fp: dict, options: PrepOptions, records: list[dict]) -> dict:
    splits = {
        split: split_entry(
            [r for r in records if r["split"] == split], fp["inputs"][split]["shard_size"]
        )
        for split in SPLITS
    }
    source: dict = {"data_dir": scanned.root, "layout": scanned.layout}
    if scanned.archives:
        source["archives"] = [
            {"name": os.path.basename(a), "bytes": os.path.getsize(a)} for a in scanned.archives
        ]
    return {
        "format": "webdataset+dali-index",
        "format_version": FORMAT_VERSION,
        "source": source,
        "options": asdict(options),
        "num_classes": len(scanned.classes),
        "cls_digits": cls_digits(len(scanned.classes)),
        "classes": list(scanned.classes),
        "class_names": CLASS_NAMES,  # the classes' names, one a line (prep.class_names)
        "splits": splits,
        "ignored_files": scanned.ignored,
        "fingerprint": fp,
    }


def changed_shard(out: Path, shards: list[dict]) -> Path | None:
    """The first of a split's shards (manifest entries) that is missing or not at the size
    the manifest says; None when all are as written."""
    for shard in shards:
        tar = out / shard["tar"]
        if not tar.is_file() or tar.stat().st_size != shard["bytes"]:
            return tar
    return None


def check_complete(out: Path, manifest: dict) -> None:
    """A finished OUT: every shard still there at the size the manifest says."""
    for info in manifest["splits"].values():
        tar = changed_shard(out, info["shards"])
        if tar is not None:
            raise PrepError(
                f"{tar} is missing or changed since the run that wrote it; "
                "rerun with --overwrite to write the shards again"
            )


def pending_tasks(scanned: Scan, shards: dict, out: Path, options: PrepOptions):
    """(the shards still to write, the images in the finished ones)."""
    digits = cls_digits(len(scanned.classes))
    tasks, done_images = [], 0
    for split in SPLITS:
        for i, samples in enumerate(shards[split]):
            name = shard_name(split, i)
            if load_record(out, name) is not None:
                done_images += len(samples)
                continue
            tasks.append(
                ShardTask(split, name, samples, scanned.root, str(out), options.quality,
                          options.max_side, digits)
            )  # fmt: skip
    return tasks, done_images


def print_split(prefix: str, split: str, info: dict) -> None:
    """A split's counts (its manifest entry) and every image skipped."""
    c = info["counts"]
    print(
        f"{prefix}: {split}: {info['num_samples']} samples in {len(info['shards'])} shards: "
        f"stored {c['stored']}, repaired {c['repaired']}, resized {c['resized']}, "
        f"skipped {c['skipped']}"
    )
    for e in info["skipped"]:
        print(f"prep: skipped {e['path']}: {e['reason']}")


def strict_error(skipped: list[dict], unwritten: str) -> PrepError:
    """--strict's refusal, listing every undecodable image; `unwritten`: what is not written."""
    listing = "\n".join(f"  {e['path']}: {e['reason']}" for e in skipped)
    return PrepError(
        f"--strict: {len(skipped)} images cannot be decoded (the shards are written but "
        f"{unwritten}; rerun without --strict to skip them):\n{listing}"
    )


def eval_state(name: str) -> str:
    """Where `prep eval_set` keeps an unfinished split NAME's plan and records: .prep-NAME."""
    return f"{STATE_DIR}-{name}"


def print_summary(manifest: dict, out: Path, seconds: float) -> None:
    for split in SPLITS:
        print_split("prep", split, manifest["splits"][split])
    print(f"prep: done in {seconds:.1f} s; manifest: {out / 'manifest.json'}")


def build(
    data_dir: str | Path | None,
    out_dir: str | Path,
    options: PrepOptions = PrepOptions(),
    *,
    val_labels: str | Path | None = None,
    archives: ArchivePaths = NO_ARCHIVES,
    workers: int | None = None,
    overwrite: bool = False,
    strict: bool = False,
) -> dict:
    """Convert DATA (or the archives) into shards in OUT (resuming where a previous run
    stopped); the manifest."""
    start = time.time()
    out = Path(out_dir).resolve()
    workers = workers or os.cpu_count() or 1
    check_out_is_ours(out, overwrite)
    scanned = scan(data_dir, val_labels, archives=archives, index_dir=out / INDEX_DIR,
                   workers=workers)  # fmt: skip
    shards = plan(scanned, options)
    fp = fingerprint(scanned, options, shards)
    state = prepare_out(out, fp, overwrite)
    if state == "complete":
        manifest = json.loads((out / "manifest.json").read_text())
        check_complete(out, manifest)
        print(f"prep: {out} is already complete (same input and options); nothing to do")
        return manifest
    (out / STATE_DIR).mkdir(exist_ok=True)
    write_atomic(out / STATE_DIR / "plan.json", json.dumps(fp, indent=1).encode())
    write_atomic(out / "classes.txt", "".join(f"{c}\n" for c in scanned.classes).encode())
    write_atomic(out / CLASS_NAMES, names_text(scanned.names or scanned.classes))
    remove_temporaries(out)  # left by a killed run

    tasks, done_images = pending_tasks(scanned, shards, out, options)
    total = sum(len(s) for split in SPLITS for s in shards[split])
    n_shards = sum(len(shards[s]) for s in SPLITS)
    workers = max(1, min(workers, len(tasks) or 1))
    print(
        f"prep: layout {scanned.layout}, {len(scanned.classes)} classes, "
        f"{len(scanned.splits['train'])} train and {len(scanned.splits['val'])} val images "
        f"in {n_shards} shards; "
        + (f"resuming: {n_shards - len(tasks)} shards already done; " if state == "resume" else "")
        + f"{workers} workers"
    )
    if tasks:
        run_tasks(tasks, out, workers, total, done_images)

    # A shard whose every image was skipped has a record but no files: nothing to read.
    records = [load_record(out, shard_name(s, i)) for s in SPLITS for i in range(len(shards[s]))]
    if any(r is None for r in records):
        raise PrepError(f"some shards in {out} went missing during the run; rerun to redo them")
    manifest = build_manifest(scanned, fp, options, records)
    skipped = [e for s in SPLITS for e in manifest["splits"][s]["skipped"]]
    if strict and skipped:
        raise strict_error(skipped, "no manifest")
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=1).encode())
    shutil.rmtree(out / STATE_DIR, ignore_errors=True)
    print_summary(manifest, out, time.time() - start)
    return manifest
