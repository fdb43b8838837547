"""Check a shards folder: manifest against tars against indexes; name the first problem."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from prep.errors import PrepError
from prep.shardio import index_text, read_members, sha256_file, split_name


def load_manifest(out: str | Path) -> dict:
    path = Path(out) / "manifest.json"
    if not path.is_file():
        raise PrepError(
            f"{path} does not exist: {out} is not a finished shards folder "
            "(make it with `make shards DATA=/path/imagenet SHARDS=...`)"
        )
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise PrepError(f"{path} is not valid JSON: {e}") from None


def check_shard(out: str, shard: dict, num_classes: int, digits: int) -> tuple[str | None, list]:
    """(the first problem or None, the shard's keys)."""
    tar, idx = Path(out) / shard["tar"], Path(out) / shard["index"]
    if not tar.is_file():
        return f"{tar} is missing", []
    if tar.stat().st_size != shard["bytes"]:
        return f"{tar} has {tar.stat().st_size} bytes, the manifest says {shard['bytes']}", []
    if sha256_file(tar) != shard["sha256"]:
        return f"{tar}: sha256 differs from the manifest (the file is damaged)", []
    members, keys, labels = [], [], {}
    try:
        for member, data in read_members(tar):
            members.append(member)
            key, ext = split_name(member.name)
            if not keys or keys[-1] != key:
                keys.append(key)
            if ext == "cls":
                text = data.decode(errors="replace")
                if len(data) != digits or not text.isdigit() or int(text) >= num_classes:
                    return (
                        f"{tar}: {member.name} holds {text!r}, not a class in 0..{num_classes - 1}",
                        [],
                    )
                labels[key] = int(text)
            elif ext != "jpg":
                return f"{tar}: unexpected member {member.name}", []
    except Exception as e:  # tarfile errors on damaged archives
        return f"{tar} cannot be read as a tar: {e}", []
    missing = [k for k in keys if k not in labels]
    if missing or len(members) != 2 * len(keys):
        return f"{tar}: sample {(missing or keys)[0]} lacks its .jpg or .cls member", []
    if len(keys) != shard["num_samples"]:
        return f"{tar} holds {len(keys)} samples, the manifest says {shard['num_samples']}", []
    if not idx.is_file():
        return f"{idx} is missing", []
    if idx.read_text() != index_text(members):
        return f"{idx} does not match {tar} (regenerate the shards, or run wds2idx on it)", []
    return None, keys


def verify(out: str | Path, workers: int | None = None) -> dict:
    """Raise PrepError naming the first problem; return the manifest when all is well."""
    out = Path(out)
    manifest = load_manifest(out)
    classes_txt = out / "classes.txt"
    if not classes_txt.is_file() or classes_txt.read_text().split() != manifest["classes"]:
        raise PrepError(f"{classes_txt} is missing or differs from the manifest's classes")
    num_classes, digits = manifest["num_classes"], manifest["cls_digits"]
    if num_classes != len(manifest["classes"]):
        raise PrepError(f"{out}/manifest.json: num_classes differs from its list of classes")
    jobs = [(split, s) for split, info in manifest["splits"].items() for s in info["shards"]]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    with ProcessPoolExecutor(workers, mp.get_context("spawn")) as pool:
        futures = [pool.submit(check_shard, str(out), s, num_classes, digits) for _, s in jobs]
        results = [f.result() for f in tqdm(futures, desc="verify", unit="shard")]
    seen: dict[str, dict[str, str]] = {}
    for (split, shard), (problem, keys) in zip(jobs, results, strict=True):
        if problem:
            raise PrepError(problem)
        for key in keys:
            if key in seen.setdefault(split, {}):
                raise PrepError(f"key {key} is in both {seen[split][key]} and {shard['tar']}")
            seen[split][key] = shard["tar"]
    for split, info in manifest["splits"].items():
        if sum(s["num_samples"] for s in info["shards"]) != info["num_samples"]:
            raise PrepError(f"manifest: the {split} shard counts do not add up to num_samples")
    return manifest
