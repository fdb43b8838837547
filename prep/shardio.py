"""The shard format: deterministic WebDataset tar files and DALI index files (wds2idx v1.2).

A sample is two members, `<key>.jpg` then `<key>.cls`. The class is zero-padded decimal text
of a fixed width (the manifest's `cls_digits`), which `int()` and the webdataset library
read as they read any `.cls`, and which the DALI pipeline turns into integers with fixed-size
arithmetic. Tar headers are ustar with fixed metadata (mtime 0, uid/gid 0, mode 0644), so the
same input gives the same bytes, and every data block follows its header immediately, which
is what the index's offsets assume.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 10240: tar files end on a whole record, as tarfile writes them
INDEX_VERSION = "v1.2"


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # of the data, in bytes from the start of the tar
    size: int


def cls_text(label: int, digits: int) -> bytes:
    return str(label).zfill(digits).encode()


def cls_digits(num_classes: int) -> int:
    return len(str(max(num_classes - 1, 0)))


# The fixed fields of our ustar headers (mode 0644, uid/gid 0, mtime 0, regular file, no
# owner names), laid out as tarfile.TarInfo.tobuf(format=USTAR_FORMAT) writes them;
# tar_header fills in the name, size and checksum (tests compare it with tarfile's).
_MIDDLE = b"0000644\0" + b"0000000\0" * 2  # mode, uid, gid
_MTIME = b"00000000000\0"
_TAIL = b"0" + b"\0" * 100 + b"ustar\x0000" + b"\0" * (64 + 16 + 155)  # type ... prefix


def tar_header(name: str, size: int) -> bytes:
    """A ustar header for a regular member of up to 100 bytes of name and < 8 GiB of data."""
    encoded = name.encode()
    if len(encoded) > 100 or size >= 8**11:
        raise ValueError(f"member {name!r} of {size} bytes does not fit a ustar header")
    head = encoded.ljust(100, b"\0") + _MIDDLE + b"%011o\0" % size + _MTIME
    checksum = sum(head) + sum(_TAIL) + 8 * 32  # the checksum field counts as 8 spaces
    return (head + b"%06o\0 " % checksum + _TAIL).ljust(BLOCK, b"\0")


class HashingWriter:
    """Writes to a file descriptor with writev (no copy into a buffer), keeping the byte count
    and the sha256 of everything written."""

    WRITEBACK_EVERY = 16 << 20  # start the disk writes early, so that the final fsync is short

    def __init__(self, fd: int) -> None:
        self.fd, self.sha, self.offset, self.flushed = fd, hashlib.sha256(), 0, 0

    def write(self, *parts: bytes) -> None:
        for part in parts:
            self.sha.update(part)
        views = [memoryview(p) for p in parts if p]
        while views:
            written = os.writev(self.fd, views)
            self.offset += written
            while views and written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            if views:
                views[0] = views[0][written:]
        if self.offset - self.flushed >= self.WRITEBACK_EVERY:
            # Asks the kernel to write these pages now, without waiting (Linux).
            os.posix_fadvise(
                self.fd, self.flushed, self.offset - self.flushed, os.POSIX_FADV_DONTNEED
            )
            self.flushed = self.offset


def write_tar(fd: int, members: Iterable[tuple[str, bytes]]) -> tuple[list, int, str]:
    """Write (name, data) members as a ustar archive to fd; return members, bytes, sha256."""
    out, index = HashingWriter(fd), []
    for name, data in members:
        index.append(Member(name, out.offset + BLOCK, len(data)))
        out.write(tar_header(name, len(data)), data, b"\0" * (-len(data) % BLOCK))
    out.write(b"\0" * (2 * BLOCK))  # end-of-archive marker
    out.write(b"\0" * (-out.offset % RECORD))
    return index, out.offset, out.sha.hexdigest()


def split_name(name: str) -> tuple[str, str]:
    """WebDataset's split: the key runs to the first dot of the base name."""
    dot = name.find(".", name.rfind("/") + 1)
    return name[:dot], name[dot + 1 :]


def index_text(members: Iterable[Member]) -> str:
    """The index DALI's wds2idx writes: `v1.2 N`, then per sample `ext offset size name ...`."""
    samples: list[list[Member]] = []
    last_key = None
    for m in members:
        key, _ = split_name(m.name)
        if key != last_key:
            samples.append([])
            last_key = key
        samples[-1].append(m)
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    for sample in samples:
        lines.append(
            " ".join(f"{split_name(m.name)[1]} {m.offset} {m.size} {m.name}" for m in sample)
        )
    return "\n".join(lines) + "\n"


def read_members(path: str | os.PathLike) -> Iterator[tuple[Member, bytes]]:
    """Every regular member of a tar with its data offset and bytes (independent of GNU tar)."""
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            if not info.isreg():
                continue
            f = tar.extractfile(info)
            assert f is not None
            yield Member(info.name, info.offset_data, info.size), f.read()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            sha.update(block)
    return sha.hexdigest()
