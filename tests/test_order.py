"""The train order (train.order): every sample once per epoch, the same samples in every
optimizer step on any number of ranks and any micro-batch cap, pieces and micro-batches as
even as they can be, golden values that pin the permutation (a change to them changes every
run's data order), --order blocks and --repeated_aug; and the train feed (train.feed): the
very bytes of the shards, through DALI."""

from __future__ import annotations

import json
import sys
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch

from train import checkpoint
from train.feed import Origin, TrainFeed, train_locations
from train.order import (
    BLOCK_TARS,
    epoch_samples,
    piece,
    rank_micros,
    split_sizes,
    step_bounds,
    steps_per_epoch,
)
from train.shards import open_shards


def steps_of(n: int, batch: int, world_size: int, cap: int) -> list[list[int]]:
    """The positions each optimizer step holds, gathered from every rank's micro-batches."""
    steps = [[] for _ in range(steps_per_epoch(n, batch))]
    for rank in range(world_size):
        for m in rank_micros(n, batch, rank, world_size, cap):
            steps[m.step] += range(m.lo, m.hi)
    return [sorted(s) for s in steps]


@pytest.mark.parametrize(
    "n,batch", [(4, 4), (21, 4), (21, 6), (21, 16), (100, 6), (1003, 16), (1003, 4)]
)
def test_every_sample_once_and_each_step_the_same_on_any_world_size(n, batch):
    reference = steps_of(n, batch, 1, batch)
    assert len(reference) == n // batch  # the step count: the train set and --batch alone
    assert sorted(i for s in reference for i in s) == list(range(n))  # each sample once
    assert all(len(s) == batch for s in reference[:-1])
    assert len(reference[-1]) == batch + n % batch  # the last step takes the remainder
    for world_size in (2, 3, 4):
        if batch < 2 * world_size:
            continue
        for cap in (1, 2, 3, batch):
            assert steps_of(n, batch, world_size, cap) == reference, (world_size, cap)


def test_pieces_and_micro_batches_are_as_even_as_they_can_be():
    for size in range(2, 40):
        for world_size in (1, 2, 3, 5):
            parts = [piece(0, size, r, world_size) for r in range(world_size)]
            lengths = [hi - lo for lo, hi in parts]
            assert max(lengths) - min(lengths) <= 1 and sum(lengths) == size
            assert [lo for lo, _ in parts] == [0] + [hi for _, hi in parts[:-1]]  # contiguous
        for cap in (1, 2, 3, 8):
            sizes = split_sizes(size, cap)
            assert sum(sizes) == size and max(sizes) - min(sizes) <= 1
            assert min(sizes) >= 2  # never one sample alone: batch norm
            assert max(sizes) <= max(cap, 3)  # the cap, or 3 where 1 and 2 cannot add up
    assert split_sizes(16, 8) == [8, 8] and split_sizes(17, 8) == [6, 6, 5]


def test_derived_accumulation_two_ranks_of_8_or_one_rank_in_two_micro_batches_of_8():
    two = [rank_micros(32, 16, r, 2, 8) for r in range(2)]
    assert [(m.step, m.size, m.last) for m in two[0]] == [(0, 8, True), (1, 8, True)]
    one = rank_micros(32, 16, 0, 1, 8)
    assert [(m.step, m.size, m.last) for m in one] == [
        (0, 8, False), (0, 8, True), (1, 8, False), (1, 8, True)
    ]  # fmt: skip
    assert (
        [(m.lo, m.hi) for m in one[:2]]
        == [(0, 8), (8, 16)]
        == [(m.lo, m.hi) for r in range(2) for m in two[r][:1]]
    )  # the same samples in step 0, on one rank or two


def test_golden_values_pin_the_permutations():
    """A change to these is a change of every run's data order: a new format of checkpoints
    (their positions would point at other samples) and a note in the docs."""
    counts = (8, 8, 5)
    assert epoch_samples(counts, 42, 0).tolist() == [
        17, 6, 2, 18, 8, 15, 1, 13, 11, 10, 5, 12, 4, 3, 9, 7, 0, 14, 16, 19, 20,
    ]  # fmt: skip
    assert epoch_samples(counts, 42, 0, "blocks").tolist() == [
        18, 11, 10, 0, 1, 15, 12, 7, 5, 6, 16, 4, 13, 17, 2, 8, 20, 9, 3, 14, 19,
    ]  # fmt: skip
    assert epoch_samples(counts, 42, 1, "global", 3, 6).tolist() == [
        8, 16, 8, 16, 8, 16, 18, 19, 18, 19, 18, 19, 12, 13, 5, 12, 13, 5, 12, 13, 5,
    ]  # fmt: skip
    big = epoch_samples((1_000, 1_000, 1_000), 0, 7)
    assert big[:5].tolist() == [1349, 2947, 1590, 1768, 772] and int(big.sum()) == 4498500


def test_each_epoch_and_seed_has_its_own_permutation():
    counts = (50, 50, 50)
    orders = [tuple(epoch_samples(counts, s, e)) for s in (0, 1) for e in range(3)]
    assert len(set(orders)) == len(orders)
    assert all(sorted(o) == list(range(150)) for o in orders)


def test_blocks_read_a_few_tars_at_a_time():
    counts = tuple([10] * 10)
    order = epoch_samples(counts, 3, 0, "blocks")
    assert sorted(order.tolist()) == list(range(100))
    window = 10 * BLOCK_TARS
    for start in range(0, 100, window):
        tars = {int(i) // 10 for i in order[start : start + window]}
        assert len(tars) == min(BLOCK_TARS, (100 - start) // 10)  # whole tars, no other


def test_repeated_augmentation_puts_k_copies_in_one_step_one_on_each_of_k_ranks():
    n, k, batch = 100, 3, 12
    order = epoch_samples((40, 60), 5, 2, "global", k, batch)
    assert len(order) == n and len(set(order.tolist())) == -(-n // k)  # ceil(N / K) images
    copies = Counter(order.tolist())
    assert set(copies.values()) == {k, n % k}  # the last image cut to what N leaves
    for step in range(steps_per_epoch(n, batch)):
        held = order[slice(*step_bounds(n, batch, step))].tolist()
        for image in set(held):
            assert held.count(image) == copies[image]  # every copy in this step
        if len(held) == batch:  # on K ranks, each rank's piece holds one copy of each image
            pieces = [held[i * batch // k : (i + 1) * batch // k] for i in range(k)]
            assert all(len(set(p)) == len(p) == batch // k for p in pieces)
            assert all(set(p) == set(held) for p in pieces)
    # the copies differ from the order without them only in their places within steps
    side_by_side = np.repeat(epoch_samples((40, 60), 5, 2)[: -(-n // k)], k)[:n]
    for step in range(steps_per_epoch(n, batch)):
        bounds = slice(*step_bounds(n, batch, step))
        assert sorted(order[bounds]) == sorted(side_by_side[bounds])


def test_the_feed_reads_the_very_bytes_of_the_shards(tiny_shards):
    """The feed's JPEGs and labels are the tar members of the samples the order names."""
    shards = open_shards(tiny_shards)
    locations = train_locations(shards)
    members = {}
    for tar in locations.tars:
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                members[m.name] = t.extractfile(m).read()
    keys = shards.sample_keys("train")
    feed = TrainFeed(locations, 42, "global", 1, 8, 1, 2, 2, 2, (32, 32), Origin(0))

    class Info:
        def __init__(self, epoch_idx, iteration):
            self.epoch_idx, self.iteration = epoch_idx, iteration

    for iteration, micro in enumerate(feed.micros):
        jpegs, digits, sizes = feed(Info(0, iteration))
        expected = [keys[i] for i in feed.samples_of(0, micro)]
        assert [bytes(j) for j in jpegs] == [members[f"{k}.jpg"] for k in expected]
        assert [bytes(c) for c in digits] == [members[f"{k}.cls"] for k in expected]
        assert all(np.array_equal(s, [32, 32]) for s in sizes)
    with pytest.raises(StopIteration):
        feed(Info(0, len(feed.micros)))


def test_the_trainers_loader_serves_each_rank_its_part_through_dali(tiny_shards):
    """Through DALI's CPU pipeline: every rank's micro-batches, of the sizes the order says,
    their labels those of the samples; a pipeline restored from its checkpoint goes on with
    the very pixels."""
    from train.config import derive, parse_config
    from train.inputs import train_data
    from train.schedule import plan_steps

    shards = open_shards(tiny_shards)
    labels_of = {k: int(k.startswith("n01448683")) + 2 * int(k.startswith("n01456602"))
                 for k in shards.sample_keys("train")}  # fmt: skip
    keys = shards.sample_keys("train")
    flags = ["--data_dir", str(tiny_shards), "--batch", "6", "--image_size", "32"]
    flags += ["--workers", "1", "--epochs", "2", "--device", "cpu"]
    cfg = parse_config(flags)
    seen = []
    for rank in range(2):
        d = derive(cfg, rank, 2, 0)
        plan = plan_steps(cfg, d, 21)
        data = train_data(cfg, d, shards, plan, (0, 0))
        for images, labels, micro in data.epoch(0):
            assert images.shape == (micro.size, 3, 32, 32)
            expected = [keys[i] for i in data.micro_ids(0, micro)]
            assert labels.tolist() == [labels_of[k] for k in expected]
            seen += expected
    assert sorted(seen) == sorted(keys)  # over both ranks, every sample of the epoch once
    d = derive(cfg, 0, 1, 0)  # one rank: feed_state gathers nothing
    data = train_data(cfg, d, shards, plan_steps(cfg, d, 21), (0, 0))
    served = data.epoch(0)
    next(served)  # step 0: one micro-batch of 6 on one rank
    state = data.feed_state()  # the pipeline after it
    rest = [images.clone() for images, _, _ in served]
    again = train_data(cfg, d, shards, plan_steps(cfg, d, 21), (0, 1), state)
    restored = [images for images, _, _ in again.epoch(0, start_step=1)]
    assert len(restored) == len(rest) > 0
    assert all(torch.equal(a, b) for a, b in zip(rest, restored, strict=True))


def test_a_resume_onto_other_shards_or_another_batch_is_refused(
    tiny_shards, tiny_imagenet, tmp_path, capsys
):
    """A position in the train order means nothing in another one: resuming onto shards of
    another layout (the same images, other tars) or with another --batch is refused in one
    line, even with --allow_changes."""
    from prep.build import PrepOptions, build
    from tests.test_train import run_main

    out = tmp_path / "run"
    assert run_main(tiny_shards, out, "--epochs", "1") == 0
    other = tmp_path / "other_shards"
    build(tiny_imagenet["root"], other, PrepOptions(shard_size=4), workers=1)
    capsys.readouterr()
    assert run_main(other, out, "--epochs", "2", "--allow_changes") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a train order of other shards" in err, err
    assert run_main(tiny_shards, out, "--epochs", "2", "--batch", "4", "--allow_changes") == 2
    assert "--batch 8 (now 4)" in capsys.readouterr().err


def test_the_trainer_puts_the_copies_of_repeated_augmentation_in_one_step(tiny_shards, tmp_path):
    """--repeated_aug 3 through the trainer: every recorded step holds each of its images
    three times (the 21 train samples are 7 images x 3), and every image is in one step."""
    from tests.test_train import run_main

    out = tmp_path / "run"
    flags = ["--epochs", "1", "--batch", "6", "--repeated_aug", "3", "--record_samples"]
    assert run_main(tiny_shards, out, *flags) == 0
    (lines,) = sample_lines(out).values()
    steps = [Counter(line.split()[1:]) for line in lines]
    assert len(steps) == 21 // 6 and all(set(c.values()) == {3} for c in steps)
    images = [key for c in steps for key in c]
    assert len(images) == len(set(images)) == 7


def sample_lines(out) -> dict[str, list[str]]:
    """--record_samples' files: epoch file name -> its lines."""
    return {p.name: p.read_text().splitlines() for p in sorted((out / "samples").glob("*.txt"))}


def assert_each_sample_once_per_epoch(out, keys: list[str]) -> None:
    for name, lines in sample_lines(out).items():
        held = [k for line in lines for k in line.split()[1:]]
        assert sorted(held) == sorted(keys), name
        assert [int(line.split()[0]) for line in lines] == list(range(len(lines))), name


@pytest.mark.slow
def test_two_ranks_stopped_mid_epoch_resume_on_one_and_on_three_with_the_same_steps(
    tiny_shards, tmp_path
):
    """Two ranks stopped by SIGTERM inside an epoch, resumed on one rank (which accumulates
    two micro-batches of 3 where each rank had one) and on three: every step holds the
    samples of the uninterrupted run's, and every train sample is trained once an epoch."""
    import shutil
    import signal
    import time

    from tests.test_nodes import ENV, TWO_RANKS, finish, start
    from tests.test_train import FAST, history, run_main

    flags = ["--batch", "6", "--epochs", "2", "--log_every", "1", "--record_samples"]
    reference = tmp_path / "reference"
    assert run_main(tiny_shards, reference, *flags) == 0  # one rank, uninterrupted
    keys = open_shards(tiny_shards).sample_keys("train")
    assert_each_sample_once_per_epoch(reference, keys)
    out = tmp_path / "two"

    def torchrun(launcher, folder):
        return [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "train",
                "--data_dir", str(tiny_shards), "--out", str(folder), *FAST, *flags]  # fmt: skip

    two = start(torchrun(TWO_RANKS, out))
    first = out / "samples" / "epoch-001.txt"
    deadline = time.time() + 240
    while not (first.is_file() and first.read_text().strip()) and time.time() < deadline:
        assert two.poll() is None, two.stdout.read()
        time.sleep(0.05)
    two.send_signal(signal.SIGTERM)  # as SLURM does: the agent passes it on
    output = finish(two)
    assert two.returncode != 0, output[-3000:]
    saved = checkpoint.load(out / "last.pt")
    assert saved["epoch"] == 0 and saved["steps_done"] < 3, output[-2000:]  # inside epoch 1
    three = shutil.copytree(out, tmp_path / "three")
    assert run_main(tiny_shards, out, *flags) == 0  # one rank now
    assert sample_lines(out) == sample_lines(reference)
    assert [int(float(r["world_size"])) for r in history(out)] == [1, 1]
    assert json.loads((out / "config.json").read_text())["derived"]["micro_batch"] == 3
    proc = start(torchrun(["--standalone", "--nproc_per_node", "3"], three), ENV)
    output = finish(proc)
    assert proc.returncode == 0, output[-3000:]
    assert "saved on 2 ranks" in output
    assert sample_lines(three) == sample_lines(reference)
    assert_each_sample_once_per_epoch(three, keys)
