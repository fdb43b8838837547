"""Read images straight from the downloaded archives: member lists, and bytes by offset.

The train tar from image-net.org is uncompressed and holds one tar per class, so an image is
a run of bytes at a fixed offset of the outer file: walking the headers (outer, then each
class tar, in parallel) gives every image's offset and size, and the workers read the images
in place with pread. Zip members (the Kaggle download) are located by the central directory
and read, and inflated where deflated, from their local headers. A compressed tar
(ImageNetV2's tar.gz) cannot be read at an offset: it is listed in one pass and its images
are read in another, by the main process. A walk's result is kept in
OUT/.sources/ and reused while the archive's size and modification time are unchanged.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import multiprocessing as mp
import os
import struct
import tarfile
import zipfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from prep.atomic import write_atomic
from prep.errors import PrepError

INDEX_DIR = ".sources"  # inside OUT: the cached member lists
INDEX_VERSION = 1
BLOCK = tarfile.BLOCKSIZE
ZIP_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature ... name length, extra length
ZIP_LOCAL_SIGNATURE = b"PK\x03\x04"
ZIP_STORED, ZIP_DEFLATED = zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED
GZIP_MAGIC = b"\x1f\x8b"
STREAMED = -2  # Location.packed of a member of a compressed tar: read by streaming it
# The class tars of a train tar this large are walked by worker processes; below it, starting
# them costs more than the walk (a 400 MB tar of 40 class tars is walked in 0.1 s).
PARALLEL_WALK_BYTES = 4 << 30


@dataclass(frozen=True)
class Location:
    """Where an image's bytes lie inside an archive."""

    archive: str  # absolute path of the archive file
    offset: int  # tar: of the data; zip: of the member's local header
    size: int  # bytes of the image
    packed: int = -1  # zip: bytes stored (compressed); -1 for tar; STREAMED for a tar.gz
    method: int = ZIP_STORED  # zip: ZIP_STORED or ZIP_DEFLATED
    crc: int = -1  # zip: the CRC-32 of the image; -1 for tar


@dataclass(frozen=True)
class Entry:
    """A regular member of an archive: its name, and where its data starts (tar) or its
    local header (zip)."""

    name: str
    offset: int
    size: int
    packed: int = -1
    method: int = ZIP_STORED
    crc: int = -1

    def location(self, archive: str) -> Location:
        return Location(archive, self.offset, self.size, self.packed, self.method, self.crc)


# ---------------------------------------------------------------- tar member lists


class Window(io.RawIOBase):
    """A read-only, seekable view of bytes [start, start + size) of a file, read with pread."""

    def __init__(self, fd: int, start: int, size: int) -> None:
        super().__init__()
        self.fd, self.start, self.size, self.pos = fd, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = base + pos
        return self.pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self.size - self.pos))
        data = os.pread(self.fd, n, self.start + self.pos) if n else b""
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


def tar_entries(window: Window, what: str) -> list[Entry]:
    """The regular members of the tar in window, offsets relative to the window's start.

    tarfile ends its listing without a word at a damaged header after the first one, so what
    follows the last member is checked to be the end-of-archive zeros; a member whose data
    runs past the end of the window means a truncated file."""
    entries = []
    try:
        with tarfile.open(fileobj=window, mode="r:") as tar:
            for info in tar:
                if info.offset_data + info.size > window.size:
                    raise PrepError(
                        f"{what} is truncated: its member {info.name} needs "
                        f"{info.offset_data + info.size} bytes, there are {window.size}; "
                        "download it again"
                    )
                if info.isreg():
                    entries.append(Entry(info.name, info.offset_data, info.size))
            end = tar.offset
    except tarfile.TarError as e:
        raise PrepError(f"{what} is not a readable tar archive ({e}); download it again") from None
    window.seek(end)
    if window.read(BLOCK).strip(b"\0"):
        raise PrepError(
            f"{what} is corrupt: no valid tar header at byte {end} (after {len(entries)} "
            "members); download it again"
        )
    return entries


def _walk_member_tar(archive: str, outer: Entry) -> list[Entry]:
    """The members of a tar inside the archive, at offsets from the archive's start."""
    fd = os.open(archive, os.O_RDONLY)
    try:
        what = f"{os.path.basename(archive)}: its member {outer.name}"
        inner = tar_entries(Window(fd, outer.offset, outer.size), what)
    finally:
        os.close(fd)
    return [Entry(f"{outer.name}/{e.name}", outer.offset + e.offset, e.size) for e in inner]


def walk_tar(archive: str, *, nested: bool, workers: int = 1) -> list[Entry]:
    """Every regular member of archive; with nested, the members of its member tars too,
    named `<member tar>/<name>`, after the member tars themselves."""
    name = os.path.basename(archive)
    fd = os.open(archive, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        outer = tar_entries(Window(fd, 0, size), name)
    finally:
        os.close(fd)
    if not nested:
        return outer
    tars = [e for e in outer if e.name.endswith(".tar")]
    entries = list(outer)
    bar = tqdm(total=len(tars), unit="tar", desc=f"indexing {name}", leave=False)
    try:
        with contextlib.ExitStack() as stack:
            if workers > 1 and len(tars) > 1 and size >= PARALLEL_WALK_BYTES:
                pool = stack.enter_context(ProcessPoolExecutor(workers, mp.get_context("spawn")))
                lists = pool.map(_walk_member_tar, [archive] * len(tars), tars, chunksize=4)
            else:
                lists = (_walk_member_tar(archive, t) for t in tars)
            for found in lists:
                entries += found
                bar.update()
    except BrokenProcessPool:
        raise PrepError(
            f"a worker process died while reading the member list of {name} (killed, or out "
            "of memory?): rerun the same command"
        ) from None
    finally:
        bar.close()
    return entries


# ---------------------------------------------------------------- compressed tars


def is_gzip(path: str | os.PathLike) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


@contextlib.contextmanager
def gzip_tar_stream(archive: str, desc: str):
    """The members of a tar.gz, read front to back once (a progress bar over its bytes);
    a damaged or truncated archive is a PrepError."""
    name = os.path.basename(archive)
    with (
        open(archive, "rb") as raw,
        tqdm.wrapattr(raw, "read", total=os.path.getsize(archive), desc=f"{desc} {name}",
                      unit="B", unit_scale=True, leave=False) as f,
    ):  # fmt: skip
        try:
            with tarfile.open(fileobj=f, mode="r|gz") as tar:
                yield tar
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise PrepError(f"{name} is not a readable tar.gz ({e}); download it again") from None


def gzip_tar_entries(archive: str) -> list[Entry]:
    """The regular members of a tar.gz (their offsets are in the uncompressed stream)."""
    with gzip_tar_stream(archive, "listing") as tar:
        return [Entry(i.name, i.offset_data, i.size, STREAMED) for i in tar if i.isreg()]


def gzip_tar_members(archive: str, wanted: set[str]) -> dict[str, bytes]:
    """The bytes of the wanted members of a tar.gz, in one pass over it."""
    found = {}
    with gzip_tar_stream(archive, "reading") as tar:
        for info in tar:
            if info.name in wanted:
                f = tar.extractfile(info)
                assert f is not None
                found[info.name] = f.read()
    missing = wanted - found.keys()
    if missing:
        raise PrepError(
            f"{archive} changed while it was read: {len(missing)} members listed before are "
            f"gone, e.g. {sorted(missing)[0]}; rerun the same command"
        )
    return found


# ---------------------------------------------------------------- zip member lists


def zip_entries(archive: str) -> list[Entry]:
    """The members of a zip (from its central directory: one read at the end of the file)."""
    try:
        with zipfile.ZipFile(archive) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise PrepError(f"{archive} is not a readable zip ({e}); download it again") from None
    entries = []
    for i in infos:
        if i.is_dir():
            continue
        if i.flag_bits & 0x1:
            raise PrepError(f"{archive}: {i.filename} is encrypted; prep reads plain zips only")
        if i.compress_type not in (ZIP_STORED, ZIP_DEFLATED):
            raise PrepError(
                f"{archive}: {i.filename} uses zip compression method {i.compress_type}; "
                "prep reads stored and deflated members"
            )
        entries.append(Entry(i.filename, i.header_offset, i.file_size, i.compress_size,
                             i.compress_type, i.CRC))  # fmt: skip
    return entries


# ---------------------------------------------------------------- the cached walks


def archive_stamp(archive: str) -> dict:
    st = os.stat(archive)
    return {"archive": os.path.basename(archive), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def index_path(index_dir: Path, archive: str) -> Path:
    return index_dir / f"{os.path.basename(archive)}.json.gz"


def load_index(index_dir: Path | None, archive: str) -> list[Entry] | None:
    if index_dir is None:
        return None
    try:
        with gzip.open(index_path(index_dir, archive), "rt") as f:
            saved = json.load(f)
    except (OSError, ValueError, EOFError):
        return None
    if saved.get("version") != INDEX_VERSION or saved.get("stamp") != archive_stamp(archive):
        return None
    return [Entry(*e) for e in saved["entries"]]


def save_index(index_dir: Path | None, archive: str, entries: list[Entry]) -> None:
    if index_dir is None:
        return
    index_dir.mkdir(parents=True, exist_ok=True)
    rows = [[e.name, e.offset, e.size, e.packed, e.method, e.crc] for e in entries]
    saved = {"version": INDEX_VERSION, "stamp": archive_stamp(archive), "entries": rows}
    data = gzip.compress(json.dumps(saved, separators=(",", ":")).encode(), mtime=0)
    write_atomic(index_path(index_dir, archive), data)


def archive_entries(
    archive: str, *, nested: bool = False, index_dir: Path | None = None, workers: int = 1
) -> list[Entry]:
    """The member list of a tar (walked, nested or not), a tar.gz (not nested) or a zip;
    walked tars are kept in index_dir and read from there while the archive is unchanged."""
    entries = load_index(index_dir, archive)
    if entries is not None:
        return entries
    if zipfile.is_zipfile(archive):
        return zip_entries(archive)
    if is_gzip(archive):
        entries = gzip_tar_entries(archive)
    else:
        entries = walk_tar(archive, nested=nested, workers=workers)
    save_index(index_dir, archive, entries)
    return entries


def read_text_member(archive: str, entry: Entry) -> str:
    """A small member (a labels file) as text."""
    with open(archive, "rb") as f:
        return read_location(f.fileno(), entry.location(archive)).decode()


# ---------------------------------------------------------------- reading images


def read_location(fd: int, where: Location) -> bytes:
    """The image at where, from the open archive fd. Raises OSError on damaged data."""
    if where.packed == STREAMED:
        raise OSError("a member of a compressed tar is read by streaming the archive")
    if where.packed < 0:  # tar: the bytes as they are
        data = os.pread(fd, where.size, where.offset)
        if len(data) != where.size:
            raise OSError(f"the archive ends inside this member ({len(data)} of {where.size} B)")
        return data
    header = os.pread(fd, ZIP_LOCAL_HEADER.size, where.offset)
    if len(header) != ZIP_LOCAL_HEADER.size or header[:4] != ZIP_LOCAL_SIGNATURE:
        raise OSError("no zip local header where the central directory points")
    name_length, extra_length = ZIP_LOCAL_HEADER.unpack(header)[-2:]
    start = where.offset + ZIP_LOCAL_HEADER.size + name_length + extra_length
    packed = os.pread(fd, where.packed, start)
    if len(packed) != where.packed:
        raise OSError("the zip ends inside this member")
    try:
        data = zlib.decompress(packed, -15) if where.method == ZIP_DEFLATED else packed
    except zlib.error as e:
        raise OSError(f"corrupt deflate data ({e})") from None
    if len(data) != where.size or zlib.crc32(data) != where.crc:
        raise OSError("CRC-32 mismatch (the zip member is damaged)")
    return data


class Reader:
    """Reads samples' bytes: files by path, archive members by location (one fd per archive)."""

    def __init__(self, root: str) -> None:
        self.root, self.fds = root, {}

    def read(self, path: str, where: Location | None) -> bytes:
        if where is None:
            with open(os.path.join(self.root, path), "rb") as f:
                return f.read()
        fd = self.fds.get(where.archive)
        if fd is None:
            fd = self.fds[where.archive] = os.open(where.archive, os.O_RDONLY)
        return read_location(fd, where)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
