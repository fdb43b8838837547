"""Add an evaluation split (ImageNetV2, ImageNet-Sketch, ...) to a finished shards folder.

`python -m prep eval_set SHARDS NAME SOURCE` writes NAME-000000.tar ... with their DALI
indexes into SHARDS and enters the split in its manifest beside train and val, labelled with
the folder's classes.txt. SOURCE is a folder, or an archive as downloaded (a tar.gz, such as
imagenetv2-matched-frequency.tar.gz, read in place; a tar; a zip), that holds one folder per
class, all under one common folder (or none):
- named by class index, 0 ... K-1 in classes.txt's order (ImageNetV2): every index must be
  there;
- or named by WordNet id (ImageNet-Sketch): every id must be one of classes.txt.
A sample's key is `<class folder>_<file stem>`, since file names repeat across class folders
(Sketch's `sketch_0.JPEG` is in every one); the samples are sorted by key, so an archive and
the folder extracted from it give the same shards, byte for byte. Images are inspected,
repaired or skipped as `make shards` does, with the shards folder's --max_side and
--quality; the work resumes after a crash (its state is in SHARDS/.prep-NAME/) and a rerun
of a finished split is a no-op.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prep.archives import INDEX_DIR, STREAMED, Location, archive_entries, gzip_tar_members
from prep.atomic import remove_temporaries, write_atomic
from prep.build import (
    FORMAT_VERSION,
    SPLITS,
    ShardTask,
    changed_shard,
    default_shard_size,
    eval_state,
    load_record,
    mean_file_bytes,
    print_split,
    run_tasks,
    shard_name,
    split_entry,
    strict_error,
)
from prep.errors import PrepError
from prep.layout import Sample, check_unique_keys, is_image, list_images, sample_key
from prep.shardio import cls_digits
from prep.verify import load_manifest

NAME = re.compile(r"[A-Za-z0-9_]+")
# A tar.gz is read by the main process, which hands the images to the workers: at most this
# many bytes of images per pass over the archive (ImageNetV2's 1.2 GB take one pass).
STREAM_PASS_BYTES = 1 << 30


@dataclass(frozen=True)
class Image:
    """An image of SOURCE: its path below SOURCE (or in the archive), and where it lies."""

    path: str  # with "/" separators
    where: Location | None = None  # in an archive; None: a file


@dataclass(frozen=True)
class Listing:
    root: str  # what Sample.path is relative to (the folder, or the archive's folder)
    archive: Path | None  # the archive read, None for a folder
    images: list[Image]
    ignored: int  # non-image files
    streamed: bool = False  # a tar.gz: its images are read in passes by the main process


def checked_name(name: str) -> str:
    if name in SPLITS:
        raise PrepError(
            f"NAME {name} is the shards' own {name} split: choose another name for the "
            "evaluation set (for example imagenetv2 or sketch)"
        )
    if not NAME.fullmatch(name):
        raise PrepError(
            f"NAME {name!r}: use letters, digits and underscores (it begins the shards' file "
            f"names, {name}-000000.tar), for example {re.sub(r'[^A-Za-z0-9_]', '_', name)}"
        )
    return name


def shards_classes(out: Path) -> tuple[dict, list[str]]:
    """The finished shards folder's manifest and classes (classes.txt, as the manifest says)."""
    manifest = load_manifest(out)
    classes_txt = out / "classes.txt"
    if not classes_txt.is_file():
        raise PrepError(
            f"{classes_txt} is missing: an evaluation set is labelled with the shards' "
            "classes; rerun `make shards` into this folder to write it"
        )
    classes = classes_txt.read_text().split()
    if classes != manifest.get("classes"):
        raise PrepError(f"{classes_txt} differs from the classes of {out / 'manifest.json'}")
    return manifest, classes


def list_source(source: Path, out: Path) -> Listing:
    """Every image of SOURCE (a folder, or a tar.gz, tar or zip read in place)."""
    if source.is_dir():
        files, ignored = list_images(source)
        images = [Image(p.relative_to(source).as_posix()) for p in files]
        return Listing(str(source), None, images, ignored)
    if not source.is_file():
        raise PrepError(f"SOURCE {source} does not exist")
    try:
        entries = archive_entries(str(source), index_dir=out / INDEX_DIR)
    except OSError as e:
        raise PrepError(f"SOURCE {source} cannot be read: {e.strerror or e}") from None
    images = [
        Image(e.name, e.location(str(source)))
        for e in entries
        if is_image(os.path.basename(e.name))
    ]
    streamed = any(e.packed == STREAMED for e in entries)
    return Listing(str(source.parent), source, images, len(entries) - len(images), streamed)


def class_folders(listing: Listing, source: Path) -> dict[str, list[Image]]:
    """{class folder name: its images}: every image in a class folder, one level below one
    common folder of SOURCE."""
    if not listing.images:
        raise PrepError(f"SOURCE {source} holds no images")
    by_folder: dict[str, list[Image]] = {}
    parent = None
    for image in listing.images:
        parts = image.path.split("/")
        if len(parts) < 2:
            raise PrepError(
                f"SOURCE {source}: {image.path} is not in a class folder; expected "
                "CLASS/IMAGE, CLASS a class index (0 ...) or a WordNet id"
            )
        if parent is None:
            parent = parts[:-2]
        elif parts[:-2] != parent:
            first = "/".join([*parent, "CLASS"])
            raise PrepError(
                f"SOURCE {source}: {image.path} is not in a class folder of {first or 'CLASS'}"
                "/: expected every image in a class folder, all the class folders in one folder"
            )
        by_folder.setdefault(parts[-2], []).append(image)
    return by_folder


def class_labels(folders: list[str], classes: list[str], source: Path) -> dict[str, int]:
    """{class folder: class index}: folders named 0 ... K-1 (all of them), or WordNet ids of
    classes.txt."""
    if all(f.isdigit() for f in folders):
        named = {int(f) for f in folders}
        missing = [str(i) for i in range(len(classes)) if i not in named]
        beyond = sorted((f for f in folders if int(f) >= len(classes)), key=int)
        if beyond:
            raise PrepError(
                f"SOURCE {source}: class folder {beyond[0]} is beyond the shards' "
                f"{len(classes)} classes (0 ... {len(classes) - 1})"
            )
        if missing:
            raise PrepError(
                f"SOURCE {source}: the class folders are named by class index and "
                f"{len(missing)} of 0 ... {len(classes) - 1} have no images: "
                f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}"
            )
        return {f: int(f) for f in folders}
    index = {wnid: i for i, wnid in enumerate(classes)}
    unknown = sorted(f for f in folders if f not in index)
    if unknown:
        raise PrepError(
            f"SOURCE {source}: {len(unknown)} class folders are not classes of classes.txt: "
            f"{', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''} (expected "
            "WordNet ids such as n01440764, or class indices 0 ...)"
        )
    return {f: index[f] for f in folders}


def eval_samples(listing: Listing, classes: list[str], source: Path, name: str) -> list[Sample]:
    """The split's samples, sorted by key (`<class folder>_<file stem>`)."""
    folders = class_folders(listing, source)
    labels = class_labels(sorted(folders), classes, source)
    prefix = f"{listing.archive.name}/" if listing.archive else ""
    samples = [
        Sample(
            prefix + image.path,
            sample_key(f"{folder}_{os.path.basename(image.path)}"),
            labels[folder],
            image.where,
        )
        for folder, images in folders.items()
        for image in images
    ]
    samples.sort(key=lambda s: s.key)
    check_unique_keys(name, samples)
    return samples


def eval_fingerprint(samples: list[Sample], options: dict, shard_size: int) -> dict:
    """What makes two runs write the same split: the keys and labels (not where they were
    read: an archive and its extracted folder are the same set), the options, the plan."""
    listed = "".join(f"{s.key}\t{s.label}\n" for s in samples).encode()
    return {
        "format_version": FORMAT_VERSION,
        "options": {k: options.get(k) for k in ("max_side", "quality")},
        "images": len(samples),
        "keys_sha256": hashlib.sha256(listed).hexdigest(),
        "shard_size": shard_size,
    }


def remove_split(out: Path, name: str, info: dict | None) -> None:
    """The split's shards (those the manifest lists, and any of an unfinished run)."""
    for shard in (info or {}).get("shards", []):
        for key in ("tar", "index"):
            (out / shard[key]).unlink(missing_ok=True)
    for path in [*out.glob(f"{name}-*.tar"), *out.glob(f"{name}-*.idx")]:
        path.unlink()
    shutil.rmtree(out / eval_state(name), ignore_errors=True)


def prepare_state(out: Path, name: str, fp: dict) -> str:
    """'resume' when OUT/.prep-NAME/ holds an unfinished run of the same split, else 'fresh'
    (an unfinished run of another source is cleared)."""
    plan_file = out / eval_state(name) / "plan.json"
    try:
        previous = json.loads(plan_file.read_text())
    except (OSError, ValueError):
        previous = None
    if previous == fp:
        return "resume"
    if previous is not None:
        print(f"prep eval_set: clearing an unfinished {name} split of another source")
    remove_split(out, name, None)
    (out / eval_state(name)).mkdir()
    write_atomic(plan_file, json.dumps(fp, indent=1).encode())
    return "fresh"


def with_payloads(tasks: list[ShardTask], archive: Path) -> Iterator[list[ShardTask]]:
    """The tasks in groups of at most STREAM_PASS_BYTES of images, each task carrying its
    images' bytes, read from the tar.gz in one pass per group (one group in memory at a
    time)."""
    prefix = len(archive.name) + 1  # Sample.path: `<archive name>/<member name>`
    group: list[ShardTask] = []
    size = 0
    for i, task in enumerate(tasks):
        group.append(task)
        size += sum(s.where.size for s in task.samples if s.where is not None)
        if size >= STREAM_PASS_BYTES or i == len(tasks) - 1:
            wanted = {s.path[prefix:] for t in group for s in t.samples}
            found = gzip_tar_members(str(archive), wanted)
            yield [
                dataclasses.replace(t, payload=tuple(found[s.path[prefix:]] for s in t.samples))
                for t in group
            ]
            group, size = [], 0


def already_there(out: Path, manifest: dict, name: str, fp: dict, overwrite: bool) -> bool:
    """True when the split NAME holds these images already (a rerun: nothing to do); refuses
    one of other images unless `overwrite`, which removes it."""
    existing = manifest["splits"].get(name)
    if existing is None:
        return False
    if overwrite:
        remove_split(out, name, existing)
        del manifest["splits"][name]
        write_atomic(out / "manifest.json", json.dumps(manifest, indent=1).encode())
        return False
    if existing.get("fingerprint") != fp:
        was = existing.get("source", {}).get("path", "other images")
        raise PrepError(
            f"{out} already holds a split {name}, made from {was}: choose another NAME, or "
            f"pass --overwrite to replace that split"
        )
    if changed_shard(out, existing["shards"]) is not None:
        raise PrepError(
            f"the {name} shards in {out} are missing or changed since they were written: "
            "pass --overwrite to write them again"
        )
    return True


def write_shards(
    out: Path, name: str, listing: Listing, shards: list[list[Sample]], manifest: dict,
    workers: int | None, resuming: bool,
) -> None:  # fmt: skip
    """Write the shards still missing (the workers read the images, or are handed them
    when the source is a tar.gz)."""
    options, classes = manifest["options"], manifest["classes"]
    tasks = [
        ShardTask(name, shard_name(name, i), part, listing.root, str(out), options["quality"],
                  options["max_side"], cls_digits(len(classes)))
        for i, part in enumerate(shards)
        if load_record(out, shard_name(name, i), eval_state(name)) is None
    ]  # fmt: skip
    total = sum(len(part) for part in shards)
    done = total - sum(len(t.samples) for t in tasks)
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks) or 1))
    resumed = f"resuming: {len(shards) - len(tasks)} shards already done; " if resuming else ""
    print(
        f"prep eval_set: {name}: {total} images of {len({s.label for p in shards for s in p})} "
        f"classes in {len(shards)} shards; {resumed}{workers} workers"
    )
    streamed = listing.streamed and listing.archive is not None and tasks
    for group in with_payloads(tasks, listing.archive) if streamed else [tasks]:
        if group:
            run_tasks(group, out, workers, total, done, eval_state(name))
            done += sum(len(t.samples) for t in group)


def add_eval_set(
    out_dir: str | Path,
    name: str,
    source: str | Path,
    *,
    shard_size: int | None = None,
    workers: int | None = None,
    strict: bool = False,
    overwrite: bool = False,
) -> dict:
    """Add (or resume adding) the split `name` from `source` to the shards in `out_dir`;
    the manifest."""
    start = time.time()
    out, source = Path(out_dir).resolve(), Path(source).resolve()
    name = checked_name(name)
    manifest, classes = shards_classes(out)
    listing = list_source(source, out)
    samples = eval_samples(listing, classes, source, name)
    size = shard_size or default_shard_size(len(samples), mean_file_bytes(listing.root, samples))
    fp = eval_fingerprint(samples, manifest["options"], size)
    if already_there(out, manifest, name, fp, overwrite):
        print(f"prep eval_set: {out} already holds the split {name} of these images; nothing to do")
        return manifest
    resuming = prepare_state(out, name, fp) == "resume"
    remove_temporaries(out)  # left by a killed run
    shards = [samples[i : i + size] for i in range(0, len(samples), size)]
    write_shards(out, name, listing, shards, manifest, workers, resuming)

    records = [load_record(out, shard_name(name, i), eval_state(name)) for i in range(len(shards))]
    if any(r is None for r in records):
        raise PrepError(f"some {name} shards in {out} went missing during the run; rerun")
    entry = split_entry(records, size)
    if strict and entry["skipped"]:
        raise strict_error(entry["skipped"], "the split is not in the manifest")
    kind = "folder" if listing.archive is None else "archive"
    entry["source"] = {"path": str(source), "kind": kind, "ignored_files": listing.ignored}
    entry["fingerprint"] = fp
    manifest = load_manifest(out)  # as it is now, not as it was read before the work
    manifest["splits"][name] = entry
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=1).encode())
    shutil.rmtree(out / eval_state(name), ignore_errors=True)
    print_split("prep eval_set", name, entry)
    print(f"prep eval_set: done in {time.time() - start:.1f} s; manifest: {out / 'manifest.json'}")
    return manifest
