"""The GPU path: mixed (nvJPEG) decoding, exactly-once val, bf16 + channels_last training and
resume on a CUDA GPU. Marked gpu: skipped without one (make test-gpu runs them)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.test_train import history, run_main
from train.data import make_loader
from train.shards import open_shards

pytestmark = pytest.mark.gpu


def collect(loader):
    images, labels = [], []
    for x, y in loader:
        images.append(x.float().cpu())
        labels.append(y.cpu())
    return torch.cat(images), torch.cat(labels)


def test_mixed_decoder_gives_the_cpu_pipelines_shapes_labels_and_statistics(tiny_shards):
    cpu = make_loader(open_shards(tiny_shards), "val", batch_size=4, image_size=64, device="cpu")
    gpu = make_loader(
        open_shards(tiny_shards),
        "val",
        batch_size=4,
        image_size=64,
        device="cuda",
        dtype=torch.float16,
    )
    x, y = next(iter(gpu))
    assert x.device.type == "cuda" and y.device.type == "cuda"
    assert x.dtype == torch.float16 and x.is_contiguous(memory_format=torch.channels_last)
    cpu_images, cpu_labels = collect(cpu)
    gpu_images, gpu_labels = collect(gpu)
    assert gpu_images.shape == cpu_images.shape
    assert torch.equal(gpu_labels, cpu_labels)
    # nvJPEG and libjpeg-turbo round differently: close, not equal
    assert (gpu_images - cpu_images).abs().mean() < 0.02
    torch.testing.assert_close(
        gpu_images.mean((0, 2, 3)), cpu_images.mean((0, 2, 3)), atol=0.01, rtol=0
    )


def test_train_pipeline_on_the_gpu(tiny_shards):
    loader = make_loader(
        open_shards(tiny_shards),
        "train",
        batch_size=4,
        image_size=64,
        device="cuda",
        dtype=torch.float16,
        epoch=0,
    )
    _, labels = collect(loader)
    manifest = json.loads((tiny_shards / "manifest.json").read_text())
    assert len(labels) == manifest["splits"]["train"]["num_samples"]


def test_val_is_exactly_once_over_two_gpu_pipelines(tiny_shards):
    labels = []
    for rank in (0, 1):
        loader = make_loader(
            open_shards(tiny_shards),
            "val",
            batch_size=4,
            image_size=64,
            device="cuda",
            rank=rank,
            world_size=2,
        )
        labels += collect(loader)[1].tolist()
    _, reference = collect(
        make_loader(open_shards(tiny_shards), "val", batch_size=4, image_size=64)
    )
    assert sorted(labels) == sorted(reference.tolist())


def test_short_training_run_on_the_gpu_with_bf16_and_channels_last(tiny_shards, tmp_path):
    out = tmp_path / "gpu"
    assert run_main(tiny_shards, out, "--epochs", "2", "--sd", "1", "--device", "cuda") == 0
    derived = json.loads((out / "config.json").read_text())["derived"]
    assert derived["amp"] and derived["amp_dtype"] == "torch.bfloat16" and derived["channels_last"]
    assert derived["device"].startswith("cuda")
    rows = history(out)
    assert len(rows) == 2 and all(float(r["train_loss"]) < 10 for r in rows)


def test_checkpoint_and_resume_on_the_gpu(tiny_shards, tmp_path, capsys):
    out = tmp_path / "resume"
    assert run_main(tiny_shards, out, "--epochs", "1", "--device", "cuda") == 0
    assert run_main(tiny_shards, out, "--epochs", "2", "--device", "cuda") == 0
    assert "resuming from" in capsys.readouterr().out
    assert [int(r["epoch"]) for r in history(out)] == [1, 2]
