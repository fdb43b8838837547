"""make bench-prep: prep's images/s against the floor (read + PIL-decode, same processes).

Generates (once, then reuses) an ImageNet-like set of real-photo JPEGs, warms the page cache
so that both contenders read from memory, then times in the same run:
- floor: worker processes that only read each file and decode it fully with PIL;
- prep: the whole `python -m prep` job (scan, plan, inspect, tar, index, manifest);
- prep from the archives: the same job from the same images packed as image-net.org ships
  them (ILSVRC2012_img_train.tar of class tars, the val tar, the devkit), walk included.
Prints a table, the projected time for full ImageNet per core count, and writes JSON.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

from PIL import Image

from models.flags import Flag, FlagParser
from prep.atomic import write_atomic
from prep.build import PrepOptions, build
from prep.flags import JSON, PROCESSES, RETIRED, ROUNDS, bench_json, positive
from prep.imagenet_like import IMAGENET_LIKE, ensure_archives, ensure_imagenet_like
from prep.provenance import code_version, machine_facts
from prep.sources import scan

IMAGENET_IMAGES = 1_281_167 + 50_000
IMAGENET_BYTES = 147e9


def decode_files(paths: list[str]) -> int:
    for p in paths:
        with open(p, "rb") as f, Image.open(f) as image:
            image.load()
    return len(paths)


def floor_rate(paths: list[str], workers: int) -> float:
    """Images/s of a bare read + full PIL decode over `workers` processes (pool start included)."""
    chunks = [paths[i : i + 64] for i in range(0, len(paths), 64)]
    start = time.perf_counter()
    with ProcessPoolExecutor(workers, mp.get_context("spawn")) as pool:
        n = sum(pool.map(decode_files, chunks))
    return n / (time.perf_counter() - start)


def prep_rate(data: Path, workers: int, n: int) -> float:
    out = Path(tempfile.mkdtemp(prefix="bench-prep-"))
    try:
        start = time.perf_counter()
        build(data, out, PrepOptions(), workers=workers)
        return n / (time.perf_counter() - start)
    finally:
        shutil.rmtree(out, ignore_errors=True)


DATA = Flag("data", str, IMAGENET_LIKE, "the generated benchmark set's folder (made once)")
CLASSES = Flag("classes", positive, 40, "classes in the generated set", metavar="N")
PER_CLASS = Flag("per_class", positive, 100, "train images per class", metavar="N")


def build_parser() -> FlagParser:
    p = FlagParser(
        prog="python -m prep.bench",
        description=__doc__.split("\n")[0] + " Both contenders get --processes processes.",
        retired=RETIRED,
    )
    p.add(DATA, CLASSES, PER_CLASS, PROCESSES, ROUNDS, JSON)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    processes = args.processes or os.cpu_count() or 1

    data = ensure_imagenet_like(Path(args.data), args.classes, args.per_class, processes)
    archives = ensure_archives(data)
    scanned = scan(data)
    paths = [str(data / s.path) for split in scanned.splits.values() for s in split]
    sizes = [os.path.getsize(p) for p in paths]
    with Image.open(paths[0]) as first:
        example = first.size
    decode_files(paths[:1])
    for path in paths + [str(p) for p in archives.iterdir()]:  # warm the page cache
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    floors, preps, from_archives = [], [], []
    for _ in range(args.rounds):
        floors.append(floor_rate(paths, processes))
        preps.append(prep_rate(data, processes, len(paths)))
        from_archives.append(prep_rate(archives, processes, len(paths)))
    floor, prep = statistics.median(floors), statistics.median(preps)
    archive_rate = statistics.median(from_archives)
    ratio = statistics.median(r / f for r, f in zip(preps, floors, strict=True))
    archive_ratio = statistics.median(a / r for a, r in zip(from_archives, preps, strict=True))
    mean_kb = sum(sizes) / len(sizes) / 1e3
    print(
        f"\nbench-prep: {len(paths)} JPEGs, mean {mean_kb:.0f} KB, e.g. {example[0]}x{example[1]}"
    )
    print(f"{processes} processes, page cache warm, median of {args.rounds} interleaved rounds")
    print(f"{'pipeline':<34}{'images/s':>10}{'per process':>13}")
    print(f"{'floor: read + PIL decode':<34}{floor:>10.0f}{floor / processes:>13.0f}")
    print(f"{'prep (python -m prep, whole job)':<34}{prep:>10.0f}{prep / processes:>13.0f}")
    print(f"{'prep from the archives (whole job)':<34}{archive_rate:>10.0f}"
          f"{archive_rate / processes:>13.0f}")  # fmt: skip
    print(f"prep / floor (median of the rounds' ratios): {ratio:.2f}x (target >= 0.85x)")
    print(
        f"prep from the archives / from the folders (median of the rounds' ratios): "
        f"{archive_ratio:.2f}x (target >= 0.95x)"
    )
    per_core = prep / processes
    projection = {}
    print("projected full ImageNet (1.33 M images), if the disk keeps up:")
    for cores in (8, 16, 32, 64):
        minutes = IMAGENET_IMAGES / (per_core * cores) / 60
        needed = IMAGENET_BYTES / (minutes * 60) / 1e6
        projection[cores] = round(minutes, 1)
        print(f"  {cores:3d} cores: {minutes:6.1f} min (reads {needed:,.0f} MB/s)")
    result = {
        "benchmark": "prep",
        "date": date.today().isoformat(),
        "code_version": code_version(),
        "machine": machine_facts(),
        "images": len(paths),
        "mean_bytes": round(sum(sizes) / len(sizes)),
        "workers": processes,
        "floor_images_per_s": [round(f, 1) for f in floors],
        "prep_images_per_s": [round(r, 1) for r in preps],
        "ratio": round(ratio, 3),
        "archives_images_per_s": [round(a, 1) for a in from_archives],
        "archives_over_folders": round(archive_ratio, 3),
        "projected_minutes_by_cores": projection,
    }
    path = Path(bench_json(args.json, "prep"))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
