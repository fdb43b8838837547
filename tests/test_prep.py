"""prep/: layouts, shard contents, indexes, DALI round trip, determinism, resume, verify."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from prep.__main__ import main as prep_main
from prep.build import PrepOptions, build, default_shard_size
from prep.errors import PrepError
from prep.sources import scan
from prep.verify import verify
from tests.conftest import TINY, make_tiny_imagenet

ROOT = Path(__file__).resolve().parents[1]


def expected_samples(info: dict) -> dict[str, tuple[int, bytes]]:
    """key -> (label, original bytes) of every image that should be in the shards."""
    base, classes = info["base"], info["classes"]
    out = {}
    for label, wnid in enumerate(classes):
        for p in sorted((base / "train" / wnid).iterdir()):
            if p.suffix == ".JPEG" and info["problems"].get(p.name) != "skipped":
                out[p.stem] = (label, p.read_bytes())
    return out


def read_split(out: Path, split: str) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    urls = [str(out / s["tar"]) for s in manifest["splits"][split]["shards"]]
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode()
    return list(dataset)


def test_layout_a_every_good_image_once_with_its_label(tiny_imagenet, tiny_shards):
    samples = read_split(tiny_shards, "train")
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys))
    expected = expected_samples(tiny_imagenet)
    assert set(keys) == set(expected)
    problems = tiny_imagenet["problems"]
    for s in samples:
        label, original = expected[s["__key__"]]
        assert s["cls"] == label
        name = f"{s['__key__']}.JPEG"
        if problems.get(name) == "repaired":
            image = Image.open(io.BytesIO(s["jpg"]))
            assert image.format == "JPEG" and image.mode == "RGB"
            image.load()
        else:  # stored: the original bytes, unchanged (grey JPEG included)
            assert s["jpg"] == original


def test_val_split_is_sorted_and_labelled_by_folder(tiny_imagenet, tiny_shards):
    samples = read_split(tiny_shards, "val")
    keys = [s["__key__"] for s in samples]
    assert keys == sorted(keys) and len(keys) == TINY["num_classes"] * TINY["val_per_class"]
    truth = {
        p.stem: label
        for label, wnid in enumerate(tiny_imagenet["classes"])
        for p in (tiny_imagenet["root"] / "val" / wnid).iterdir()
    }
    assert {s["__key__"]: s["cls"] for s in samples} == truth


def test_manifest_lists_repairs_skips_and_classes(tiny_imagenet, tiny_shards):
    manifest = json.loads((tiny_shards / "manifest.json").read_text())
    train = manifest["splits"]["train"]
    problems = tiny_imagenet["problems"]
    assert sorted(Path(e["path"]).name for e in train["repaired"]) == sorted(
        n for n, status in problems.items() if status == "repaired"
    )
    skipped = {Path(e["path"]).name: e["reason"] for e in train["skipped"]}
    assert set(skipped) == {n for n, status in problems.items() if status == "skipped"}
    assert "empty" in skipped[f"{tiny_imagenet['classes'][0]}_empty.JPEG"]
    assert "undecodable" in skipped[f"{tiny_imagenet['classes'][0]}_truncated.JPEG"]
    assert train["counts"]["repaired"] == 2 and train["counts"]["skipped"] == 2
    assert train["num_samples"] == len(expected_samples(tiny_imagenet))
    assert manifest["classes"] == tiny_imagenet["classes"]
    assert (tiny_shards / "classes.txt").read_text().split() == tiny_imagenet["classes"]
    # names: ImageNet-1k's for its WordNet ids (n01440764), the folder's name for the others
    names = (tiny_shards / manifest["class_names"]).read_text().splitlines()
    assert names == ["tench, Tinca tinca", *tiny_imagenet["classes"][1:]]
    for shard in train["shards"]:
        path = tiny_shards / shard["tar"]
        assert path.stat().st_size == shard["bytes"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]


def test_train_order_is_shuffled_globally(tiny_shards):
    labels = [s["cls"] for s in read_split(tiny_shards, "train")]
    assert labels != sorted(labels)  # not class-sorted
    first_shard = read_split_shard(tiny_shards, "train-000000.tar")
    assert len({s["cls"] for s in first_shard}) > 1  # one shard mixes classes


def read_split_shard(out: Path, name: str) -> list[dict]:
    return list(wds.WebDataset(str(out / name), shardshuffle=False, empty_check=False).decode())


def test_indexes_equal_what_dalis_wds2idx_writes(tiny_shards, tmp_path):
    from wds2idx import IndexCreator  # DALI's own tool, installed with nvidia-dali

    tars = sorted(tiny_shards.glob("*.tar"))
    assert len(tars) >= 4
    for tar in tars:
        reference = tmp_path / f"{tar.stem}.idx"
        with IndexCreator(str(tar), str(reference), verbose=False) as creator:
            creator.create_index()
        assert (tiny_shards / f"{tar.stem}.idx").read_bytes() == reference.read_bytes()


def test_dali_reader_reads_every_sample_exactly_once(tiny_imagenet, tiny_shards):
    from nvidia.dali import fn, pipeline_def

    manifest = json.loads((tiny_shards / "manifest.json").read_text())
    shards = manifest["splits"]["train"]["shards"]
    n = manifest["splits"]["train"]["num_samples"]

    @pipeline_def(batch_size=n, num_threads=1, device_id=None)
    def reader():
        jpg, cls = fn.readers.webdataset(
            paths=[str(tiny_shards / s["tar"]) for s in shards],
            index_paths=[str(tiny_shards / s["index"]) for s in shards],
            ext=["jpg", "cls"],
            random_shuffle=False,
        )
        return jpg, cls

    pipe = reader()
    pipe.build()
    jpgs, clss = pipe.run()
    got = sorted(
        (hashlib.sha256(np.array(jpgs[i]).tobytes()).hexdigest(), int(np.array(clss[i]).tobytes()))
        for i in range(n)
    )
    want = sorted(
        (hashlib.sha256(s["jpg"]).hexdigest(), s["cls"]) for s in read_split(tiny_shards, "train")
    )
    assert got == want
    digits = [np.array(clss[i]) for i in range(n)]
    assert {d.shape for d in digits} == {(manifest["cls_digits"],)}  # fixed width for DALI


def tree_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix in (".tar", ".idx")}


def test_identical_runs_write_byte_identical_manifests_with_unidentifiable_images(
    tiny_imagenet, copy_of, tmp_path
):
    """A file PIL cannot identify is skipped with a reason that names no Python object's
    address: two identical runs write the same manifest.json, byte for byte."""
    source = copy_of(tiny_imagenet["root"])
    first_class = sorted((source / "train").iterdir())[0]
    (first_class / "text.JPEG").write_text("not an image at all\n")
    manifests = []
    for name in ("one", "two"):
        build(source, tmp_path / name, PrepOptions(shard_size=8), workers=1)
        manifests.append((tmp_path / name / "manifest.json").read_bytes())
    assert manifests[0] == manifests[1]
    reasons = [s["reason"] for s in json.loads(manifests[0])["splits"]["train"]["skipped"]]
    assert any("cannot identify image file the bytes" in r for r in reasons), reasons
    assert not any(" at 0x" in r for r in reasons)


def test_same_input_and_options_give_byte_identical_shards(tiny_imagenet, tiny_shards, tmp_path):
    again = tmp_path / "again"
    build(tiny_imagenet["root"], again, PrepOptions(shard_size=8), workers=1)
    assert tree_bytes(again) == tree_bytes(tiny_shards)
    other_seed = tmp_path / "seed1"
    build(tiny_imagenet["root"], other_seed, PrepOptions(shard_size=8, seed=1), workers=1)
    assert tree_bytes(other_seed)["train-000000.tar"] != tree_bytes(tiny_shards)["train-000000.tar"]
    assert tree_bytes(other_seed)["val-000000.tar"] == tree_bytes(tiny_shards)["val-000000.tar"]


def test_layout_b_kaggle_download(tmp_path):
    info = make_tiny_imagenet(tmp_path / "kaggle", "B")
    assert scan(info["root"]).layout == "B"
    out = tmp_path / "shards"
    build(info["root"], out, PrepOptions(shard_size=8), workers=2)
    train = read_split(out, "train")
    expected = expected_samples(info)
    assert {s["__key__"]: s["cls"] for s in train} == {k: v[0] for k, v in expected.items()}
    rows = (info["root"] / "LOC_val_solution.csv").read_text().splitlines()[1:]
    truth = {r.split(",")[0]: info["classes"].index(r.split(",")[1].split()[0]) for r in rows}
    assert {s["__key__"]: s["cls"] for s in read_split(out, "val")} == truth
    verify(out)


def test_layout_c_flat_val_with_labels_file(tmp_path):
    root = tmp_path / "c"
    classes = write_imagenet_like_flat(root)
    labels = tmp_path / "val_labels.txt"
    rows = [f"{p.name} {p.stem.split('-')[0]}" for p in sorted((root / "val").iterdir())]
    labels.write_text("\n".join(rows) + "\n")
    with pytest.raises(PrepError, match="--val_labels"):
        scan(root)
    scanned = scan(root, labels)
    assert scanned.layout == "C"
    assert {s.label for s in scanned.splits["val"]} == set(range(len(classes)))
    labels.write_text("\n".join(rows[1:]) + "\n")
    with pytest.raises(PrepError, match="1 val images have no label"):
        scan(root, labels)
    labels.write_text("\n".join(rows[:-1] + [rows[-1].split()[0] + " n99999999"]) + "\n")
    with pytest.raises(PrepError, match="not a train class"):
        scan(root, labels)


def write_imagenet_like_flat(root: Path) -> list[str]:
    from prep.imagenet_like import write_imagenet_like

    classes = write_imagenet_like(root, **TINY)
    flat = root / "val_flat"
    flat.mkdir()
    for wnid in classes:
        for p in (root / "val" / wnid).iterdir():
            p.rename(flat / f"{wnid}-{p.name}")
        (root / "val" / wnid).rmdir()
    (root / "val").rmdir()
    flat.rename(root / "val")
    return classes


def test_layout_errors_are_clear(tmp_path):
    with pytest.raises(PrepError, match="does not exist"):
        scan(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepError, match="no train/ folder"):
        scan(tmp_path / "empty")
    root = tmp_path / "r"
    (root / "train").mkdir(parents=True)
    with pytest.raises(PrepError, match="no val/ folder"):
        scan(root)
    (root / "val").mkdir()
    with pytest.raises(PrepError, match="no class folders"):
        scan(root)
    (root / "train" / "n01").mkdir()
    (root / "train" / "n01" / "a.txt").write_text("x")
    with pytest.raises(PrepError, match="holds no images"):
        scan(root)


def test_val_class_not_in_train_and_duplicate_keys_are_refused(tmp_path):
    info = make_tiny_imagenet(tmp_path / "d")
    root, classes = info["root"], info["classes"]
    stray = root / "val" / "n99999999"
    stray.mkdir()
    (stray / "x.JPEG").write_bytes((root / "val" / classes[0]).iterdir().__next__().read_bytes())
    with pytest.raises(PrepError, match="not among the train classes"):
        scan(root)
    (stray / "x.JPEG").unlink()
    stray.rmdir()
    first = next((root / "train" / classes[0]).glob("*_0.JPEG"))
    (root / "train" / classes[1] / first.name).write_bytes(first.read_bytes())
    with pytest.raises(PrepError, match="same key"):
        scan(root)


def test_cli_errors_have_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "prep", str(tmp_path / "nowhere"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "prep: error:" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_foreign_non_empty_out_is_refused_unless_overwrite(tiny_imagenet, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "thesis.tex").write_text("keep me")
    with pytest.raises(PrepError, match="holds no shards of ours"):
        build(tiny_imagenet["root"], out, PrepOptions(shard_size=8))
    build(tiny_imagenet["root"], out, PrepOptions(shard_size=8), overwrite=True)
    assert (out / "thesis.tex").read_text() == "keep me"  # only our own files are replaced
    verify(out)


def test_rerun_is_a_no_op_and_other_options_need_overwrite(tiny_imagenet, tiny_shards, copy_of):
    out = copy_of(tiny_shards)
    before = tree_bytes(out)
    build(tiny_imagenet["root"], out, PrepOptions(shard_size=8), workers=1)
    assert tree_bytes(out) == before
    with pytest.raises(PrepError, match="other options"):
        build(tiny_imagenet["root"], out, PrepOptions(shard_size=5), workers=1)
    build(tiny_imagenet["root"], out, PrepOptions(shard_size=5), workers=1, overwrite=True)
    manifest = verify(out)
    assert manifest["splits"]["train"]["shard_size"] == 5
    listed = [s["tar"] for split in manifest["splits"].values() for s in split["shards"]]
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(listed)  # no stale shards


def test_strict_lists_every_undecodable_image(tiny_imagenet, tmp_path):
    out = tmp_path / "strict"
    with pytest.raises(PrepError) as e:
        build(tiny_imagenet["root"], out, PrepOptions(shard_size=8), workers=1, strict=True)
    assert "2 images cannot be decoded" in str(e.value)
    assert "_truncated.JPEG" in str(e.value) and "_empty.JPEG" in str(e.value)
    assert not (out / "manifest.json").exists()
    build(tiny_imagenet["root"], out, PrepOptions(shard_size=8), workers=1)  # resumes, no redo
    verify(out)


def test_max_side_downscales_and_is_recorded(tiny_imagenet, tmp_path):
    out = tmp_path / "small"
    manifest = build(tiny_imagenet["root"], out, PrepOptions(shard_size=8, max_side=40))
    assert manifest["options"]["max_side"] == 40
    assert manifest["splits"]["train"]["counts"]["resized"] > 0
    for s in read_split(out, "train"):
        image = Image.open(io.BytesIO(s["jpg"]))
        assert max(image.size) <= 40 and image.format == "JPEG"


def test_default_shard_size_is_at_most_a_gigabyte_and_balanced():
    def shards(n, mean_bytes):
        return -(-n // default_shard_size(n, mean_bytes))

    assert shards(1_281_167, 110_000) == 192  # ImageNet train: 192 shards of 0.73 GB
    assert 0.5e9 < default_shard_size(1_281_167, 110_000) * 110_000 < 1.1e9
    assert shards(50_000, 128_000) == 64  # val: 64 shards, so that 64 workers share them
    assert shards(4_000, 110_000) == 15  # a small set: at least 256 images a shard
    assert shards(100, 1000) == 1


def flip_byte(path: Path, offset: int) -> None:
    """Damage a file in place: the byte at `offset` inverted (its size unchanged)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_names_the_damaged_shard(tiny_shards, copy_of):
    assert prep_main(["verify", str(tiny_shards)]) == 0
    out = copy_of(tiny_shards)
    tar = out / "train-000001.tar"
    flip_byte(tar, 1000)
    with pytest.raises(PrepError, match="train-000001.tar: sha256 differs"):
        verify(out)
    assert prep_main(["verify", str(out)]) == 2
    tar.write_bytes(tar.read_bytes()[:-512])
    with pytest.raises(PrepError, match="train-000001.tar has"):
        verify(out)


def test_verify_catches_a_wrong_index_and_a_missing_shard(tiny_shards, copy_of):
    out = copy_of(tiny_shards)
    idx = out / "val-000000.idx"
    idx.write_text(idx.read_text().replace("jpg 512", "jpg 1024", 1))
    with pytest.raises(PrepError, match="val-000000.idx does not match"):
        verify(out)
    (out / "train-000002.tar").unlink()
    with pytest.raises(PrepError, match="train-000002.tar is missing"):
        verify(out)


@pytest.mark.slow
def test_resume_after_kill_9_gives_identical_shards(tmp_path):
    """Killed and resumed from the downloaded archives: the shards of the folders."""
    from prep.imagenet_like import write_archives, write_imagenet_like

    root = tmp_path / "data"
    write_imagenet_like(root, num_classes=3, train_per_class=30, val_per_class=4)
    write_archives(root, tmp_path / "downloads")
    reference = tmp_path / "reference"
    build(root, reference, PrepOptions(shard_size=4), workers=1)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "prep", str(tmp_path / "downloads"), str(out), "--shard-size", "4"]
    proc = subprocess.Popen(
        [*cmd, "--processes", "1"],
        cwd=ROOT,
        start_new_session=True,  # its own process group: the kill takes the workers too
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / ".prep").glob("train-*.json")):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((out / ".prep").glob("*-*.json")))
    assert 1 <= done < len(list(reference.glob("*.tar")))  # killed mid-run
    assert not (out / "manifest.json").exists()
    result = subprocess.run([*cmd, "--processes", "2"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout
    assert tree_bytes(out) == tree_bytes(reference)
    assert not list(out.glob("*.tmp.*"))
    verify(out)


def test_tar_header_equals_tarfiles_ustar_header():
    import random
    import tarfile

    from prep.shardio import tar_header

    rng = random.Random(0)
    for _ in range(500):
        name = "".join(rng.choice("abcXYZ_-0123456789") for _ in range(rng.randint(1, 90)))
        name += rng.choice([".jpg", ".cls"])
        size = rng.choice([0, 1, 511, 512, 513, rng.randint(0, 10**9)])
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uid, info.gid = size, 0, 0o644, 0, 0
        info.uname = info.gname = ""
        reference = info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")
        assert tar_header(name, size) == reference
    with pytest.raises(ValueError, match="does not fit"):
        tar_header("x" * 101, 1)


def test_a_full_disk_is_a_clear_error_and_the_rerun_completes(tmp_path, tmpfs):
    small_disk = tmpfs("400k")  # grown later by remounting
    from prep.imagenet_like import write_imagenet_like

    root = tmp_path / "data"
    write_imagenet_like(root, num_classes=2, train_per_class=8, val_per_class=2)  # ~2 MB
    out = small_disk / "shards"
    cmd = [sys.executable, "-m", "prep", str(root), str(out), "--shard-size", "2"]
    cmd += ["--processes", "1"]
    full = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert full.returncode == 2
    assert "No space left on device" in full.stderr and "Traceback" not in full.stderr
    assert "finished shards are kept" in full.stderr
    kept = sorted(p.name for p in out.glob("*.tar"))
    assert kept and not list(out.glob("*.tmp.*"))  # no half-written shard left behind
    subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stdout
    reference = tmp_path / "reference"
    build(root, reference, PrepOptions(shard_size=2), workers=1)
    assert tree_bytes(out) == tree_bytes(reference)
    verify(out)
