"""One way to write a file that readers must never see half-written (shards' indexes, the
manifest, checkpoints, config.json, histories, summaries, logits, reports, benchmark
results): a temporary name in the same folder, flushed to disk, then renamed over the target;
the temporary is removed if anything fails. A killed process leaves at most a temporary,
which `remove_temporaries` clears on the next run."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TEMPORARY_GLOB = ".*.tmp.*"  # what temporary_name gives, for clearing a killed run's


def temporary_name(path: str | os.PathLike) -> Path:
    """Hidden, beside the target (a rename within one file system is atomic), per process."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp.{os.getpid()}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write into; on a clean exit it is fsynced and renamed to `path`."""
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """atomic_file for a writer that takes a file name (safetensors, ONNX): the temporary
    name to write; on a clean exit the file is fsynced and renamed to `path`."""
    tmp = temporary_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """`data` (text is written as UTF-8) to `path`, whole or not at all."""
    with atomic_file(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def remove_temporaries(folder: str | os.PathLike) -> None:
    """The temporaries of a process killed while writing (the renamed files are whole)."""
    for tmp in Path(folder).glob(TEMPORARY_GLOB):
        tmp.unlink(missing_ok=True)
