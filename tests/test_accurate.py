"""The pieces of the accurate recipe (torchvision's 80.9% ResNet-50 recipe): DALI's automatic
augmentations in the CPU pipeline, CutMix and mixup, random erasing, the val resize before
the crop, the EMA every N steps, BlurPool, and --recipe accurate end to end on tiny shards."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from models import build_resnet
from models.resnet import BlurConv2d
from prep.build import PrepOptions, build
from train.config import ConfigError, check, derive, parse_config
from train.data import IMAGENET_MEAN, IMAGENET_STD, make_loader
from train.ema import build_average, step_decay, update_average
from train.mixing import ERASE_AREA, ERASE_RATIO, cutmix_box, mix_batch, random_erase
from train.recipes import RECIPES
from train.shards import open_shards

CPU = {"num_threads": 2, "device": "cpu", "seed": 3}


def first_batch(shards, **knobs) -> torch.Tensor:
    loader = make_loader(open_shards(shards), "train", batch_size=8, image_size=48, **CPU, **knobs)
    return next(iter(loader))[0]


@pytest.mark.parametrize("augment", ["ta_wide", "rand_augment"])
def test_each_automatic_augmentation_runs_in_the_dali_cpu_pipeline_and_changes_images(
    tiny_shards, augment
):
    plain = {"flip": False, "color_jitter": False}  # the crop alone before the augmentation
    before = first_batch(tiny_shards, **plain)
    assert torch.equal(before, first_batch(tiny_shards, **plain))  # the same crops again
    after = first_batch(tiny_shards, **plain, auto_augment=augment)
    assert after.shape == before.shape == (8, 3, 48, 48) and torch.isfinite(after).all()
    changed = [(a - b).abs().mean().item() > 0.01 for a, b in zip(after, before, strict=True)]
    assert sum(changed) >= 5, changed  # a no-op is drawn now and then (identity, magnitude 0)


def test_cutmix_pastes_a_box_whose_area_is_the_targets_lambda():
    g = torch.Generator().manual_seed(0)
    batch, classes, height, width = 16, 16, 20, 28
    images = torch.arange(batch, dtype=torch.float32)[:, None, None, None].expand(
        batch, 3, height, width
    )  # image i is all i: every pixel says which image it came from
    labels = torch.arange(batch)
    clipped = 0
    for _ in range(40):
        mixed, targets = mix_batch(images, labels, classes, mixup=0.0, cutmix=1.0, generator=g)
        torch.testing.assert_close(targets.sum(1), torch.ones(batch))
        for i in range(batch):
            pasted = mixed[i, 0] != i
            if not pasted.any():
                continue
            source = int(mixed[i, 0][pasted][0])
            rows, cols = pasted.any(1).nonzero(), pasted.any(0).nonzero()
            box = int((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1))
            assert int(pasted.sum()) == box  # one rectangle, all from one other image
            assert (mixed[i, 0][pasted] == source).all() and (mixed[i] == mixed[i, :1]).all()
            lam = 1 - box / (height * width)
            assert targets[i, i].item() == pytest.approx(lam, abs=1e-6)
            assert targets[i, source].item() == pytest.approx(1 - lam, abs=1e-6)
            clipped += int(rows.min() == 0 or cols.min() == 0 or rows.max() == height - 1)
    assert clipped > 0  # boxes clipped at the edges were among them


def test_cutmix_box_lambda_is_corrected_after_clipping():
    g = torch.Generator().manual_seed(1)
    for lam in torch.linspace(0.05, 0.95, 19):
        box, corrected = cutmix_box(lam, 30, 40, g)
        assert corrected.item() == pytest.approx(1 - box.float().mean().item(), abs=1e-6)
        assert corrected.item() >= lam.item() - 1e-6  # clipping only shrinks the box


def test_mixup_and_cutmix_alternate_batch_by_batch():
    g = torch.Generator().manual_seed(2)
    images = torch.arange(8, dtype=torch.float32)[:, None, None, None].expand(8, 3, 16, 16)
    kinds = []
    for _ in range(200):
        mixed, targets = mix_batch(images, torch.arange(8), 8, mixup=0.2, cutmix=1.0, generator=g)
        torch.testing.assert_close(targets.sum(1), torch.ones(8))
        whole = (mixed == mixed.round()).all().item()  # CutMix copies pixels; mixup blends
        kinds.append("cutmix" if whole else "mixup")
    assert 70 <= kinds.count("cutmix") <= 130, kinds.count("cutmix")


def test_random_erasing_stays_within_torchvisions_bounds():
    g = torch.Generator().manual_seed(3)
    batch, height, width = 600, 48, 40
    erased = random_erase(torch.ones(batch, 3, height, width), 0.5, g)
    hit = 0
    for image in erased:
        zero = image[0] == 0
        if not zero.any():
            continue
        hit += 1
        assert torch.equal(image[1] == 0, zero) and torch.equal(image[2] == 0, zero)
        rows, cols = zero.any(1).nonzero(), zero.any(0).nonzero()
        h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert int(zero.sum()) == h * w and h < height and w < width  # one rectangle inside
        # h and w are rounded from sqrt(area x ratio) and sqrt(area / ratio): half a pixel each
        area_low = (math.sqrt(ERASE_AREA[0] * height * width) - 1) ** 2
        area_high = (math.sqrt(ERASE_AREA[1] * height * width) + 1) ** 2
        assert area_low <= h * w <= area_high, (h, w)
        assert ERASE_RATIO[0] * 0.8 <= h / w <= ERASE_RATIO[1] * 1.25, (h, w)
    assert 0.42 * batch <= hit <= 0.58 * batch, hit  # p = 0.5, a few draws do not fit


def test_the_mixing_lambda_follows_beta_alpha_alpha():
    """Beta(alpha, alpha) from two Gamma draws by Marsaglia and Tsang's method on the
    generator passed in (torch's own sampler takes none): a Kolmogorov-Smirnov test against
    SciPy's Beta for torchvision's mixup 0.2 and CutMix 1.0, and a larger alpha."""
    from scipy import stats

    from train.mixing import beta

    g = torch.Generator().manual_seed(4)
    for alpha in (0.2, 1.0, 2.5):
        draws = np.array([float(beta(alpha, g)) for _ in range(3000)])
        assert ((draws >= 0) & (draws <= 1)).all()
        assert stats.kstest(draws, stats.beta(alpha, alpha).cdf).pvalue > 0.01, alpha


def test_each_rank_draws_its_own_augmentation_and_a_resumed_run_the_same(tiny_shards):
    """Random erasing, mixup and CutMix on two ranks draw different boxes and lambdas from
    the same batch; the same rank at the same micro-batch (a resumed run) draws the very
    same; batch-mode stochastic depth stays the same on every rank (DDP needs it)."""
    from train.loop import augmented, seed_draws
    from train.model import standalone_run
    from train.order import Micro

    cfg = parse_config(["--random_erase", "1", "--mixup", "0.2", "--cutmix", "1.0",
                        "--device", "cpu", "--sd", "1"])  # fmt: skip
    images = torch.ones(6, 3, 24, 24) * torch.arange(6.0)[:, None, None, None]
    labels = torch.arange(6)

    def draws(rank: int, epoch: int, batch: int):
        run = standalone_run(cfg, derive(cfg, rank, 1, 0), 6)  # no DDP: the draws need the rank
        seed_draws(run, epoch, Micro(step=0, lo=batch, hi=batch + 6, last=True))
        mixed, targets = augmented(run, images, labels)
        return mixed, targets, run.model.draw_sd_decisions()

    rank0, rank1, again = draws(0, 3, 5), draws(1, 3, 5), draws(0, 3, 5)
    assert not torch.equal(rank0[0], rank1[0]) and not torch.equal(rank0[1], rank1[1])
    assert torch.equal(rank0[0], again[0]) and torch.equal(rank0[1], again[1])
    assert not torch.equal(rank0[0], draws(0, 3, 6)[0])  # the next micro-batch: other draws
    assert rank0[2] == rank1[2]  # batch-mode decisions: one stream for every rank


def test_val_resize_gives_torchvisions_resize_232_and_centre_crop_224(tmp_path):
    """The val pipeline at --val_resize 232 crops the very pixels of torchvision's Resize(232)
    + CenterCrop(224) on real photos: the decoders and filters round differently, but any
    other geometry (one pixel off, or 256's) is far further away."""
    import torchvision.transforms as T
    from PIL import Image

    from prep.build import PrepOptions, build
    from prep.imagenet_like import write_imagenet_like

    write_imagenet_like(tmp_path / "data", num_classes=2, train_per_class=1, val_per_class=4)
    build(tmp_path / "data", tmp_path / "shards", PrepOptions(), workers=1)
    files = sorted((tmp_path / "data" / "val").rglob("*.JPEG"), key=lambda p: p.stem)
    to_tensor = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    loader = make_loader(open_shards(tmp_path / "shards"), "val", batch_size=8, num_threads=2,
                         image_size=224, val_resize=232)  # fmt: skip
    ours = next(iter(loader))[0]
    assert ours.shape == (8, 3, 224, 224)

    def distance(image, photo, resize: int, dy: int = 0, dx: int = 0) -> float:
        resized = to_tensor(T.Resize(resize)(photo))  # (3, h, w), shorter side `resize`
        top = int(round((resized.shape[1] - 224) / 2)) + dy  # CenterCrop's anchor
        left = int(round((resized.shape[2] - 224) / 2)) + dx
        return (image - resized[:, top : top + 224, left : left + 224]).abs().mean().item()

    for image, path in zip(ours, files, strict=True):
        photo = Image.open(path).convert("RGB")
        exact = distance(image, photo, 232)
        assert exact < 0.05, (path.name, exact)
        for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
            assert exact < distance(image, photo, 232, dy, dx), (path.name, dy, dx)
        assert 3 * exact < distance(image, photo, 256), path.name  # the default geometry


def test_ema_every_n_steps_averages_what_every_step_would():
    """Updating every 32 steps with 32 steps' decay tracks the same horizon: on a steady
    drift the two averages agree to a fraction of the drift."""
    live = torch.nn.Linear(4, 4)
    torch.nn.init.zeros_(live.weight)
    decay = step_decay(0.5, 200)  # a half-life of 100 steps
    every_step, every_32 = build_average(live, decay), build_average(live, decay, every=32)
    for step in range(640):
        with torch.no_grad():
            live.weight.add_(0.01)  # the live weights drift steadily
        update_average(every_step)
        if every_32.due(step):
            update_average(every_32)
    a, b = every_step.model.weight, every_32.model.weight
    assert float(a.mean()) == pytest.approx(float(b.mean()), rel=0.05)
    assert float(live.weight.detach().mean()) - float(a.mean()) > 1.0  # lagging: an average indeed


def test_blurpool_is_a_fixed_blur_before_the_strided_convolutions():
    torch.manual_seed(4)
    model = build_resnet(50, variant="v1.5", blurpool=True).eval()
    blurred = [n for n, m in model.named_modules() if isinstance(m, BlurConv2d)]
    assert blurred == [
        f"layer{s}.0.{c}" for s in (2, 3, 4) for c in ("conv2", "downsample.0")
    ]  # strided, >= 16 inputs: not the stem (3 inputs), not layer1 (stride 1)
    conv = model.layer2[0].conv2
    x = torch.randn(2, conv.in_channels, 14, 14)
    kernel = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    by_hand = F.conv2d(x, kernel.expand(conv.in_channels, 1, 3, 3), padding=1,
                       groups=conv.in_channels)  # fmt: skip
    by_hand = F.conv2d(by_hand, conv.weight, stride=2, padding=1)
    torch.testing.assert_close(conv(x), by_hand)
    torchvision = pytest.importorskip("torchvision")
    weights = torchvision.models.resnet50().state_dict()
    assert set(model.state_dict()) == set(weights)  # the keys are torchvision's
    model.load_state_dict(weights)
    plain = torchvision.models.resnet50().eval()
    plain.load_state_dict(weights)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(model(images), plain(images))  # another function


def test_the_recipes_values_and_their_run_shares():
    cfg = parse_config(["--recipe", "accurate"])
    d = derive(cfg, 0, 1, 0)
    assert (cfg.epochs, cfg.batch, d.lr, cfg.image_size, d.val_res, d.val_resize) == (
        600, 1024, 0.5, 176, 224, 232
    )  # fmt: skip
    assert cfg.dali.auto_augment == "ta_wide" and not cfg.dali.color_jitter
    assert (cfg.mixup, cfg.cutmix, cfg.random_erase, cfg.ema_every) == (0.2, 1.0, 0.1, 32)
    # torchvision's EMA by hand: 1 - 2e-5 x 1024 x 32 / 600 per update, every 32 steps
    updates_per_epoch = 1_281_167 / 1024 / 32
    halflife = math.log(0.5) / math.log(1 - 2e-5 * 1024 * 32 / 600) / updates_per_epoch
    assert cfg.ema_halflife == pytest.approx(halflife) and 16 < halflife < 16.5
    shorter = parse_config(["--recipe", "accurate", "--epochs", "60", "--batch", "256"])
    assert shorter.ema_halflife == pytest.approx(halflife / 10)  # the same share of the run
    assert derive(shorter, 0, 1, 0).lr == pytest.approx(0.125)  # linear in the batch
    given = parse_config(["--recipe", "accurate", "--ema_halflife", "3"])
    assert given.ema_halflife == 3.0
    assert parse_config(["--recipe", "accurate", "--sd", "1"]).pL == 0.95
    assert parse_config(["--recipe", "fast"]).blurpool
    literature = RECIPES["accurate"].literature  # torchvision's current V2 weights
    assert "80.858%" in literature and "81.886%" in literature and "82.284%" in literature
    assert cfg.ema_after_warmup


def test_the_average_copies_the_live_weights_through_the_warmup_as_torchvisions():
    """--ema_after_warmup: torchvision resets its average's count after every update of the
    warmup epochs, so each of those updates, and the first one after them, copies the live
    weights; from the second update after the warmup on, the average lags."""
    live = torch.nn.Linear(4, 4)
    average = build_average(live, step_decay(0.5, 100), every=4)
    warmup_steps, copied = 10, []
    for step in range(24):
        with torch.no_grad():
            live.weight.add_(0.1)
        if average.due(step):  # steps 3, 7, 11, 15, 19, 23
            update_average(average, average.copies(step, warmup_steps))
            copied.append(torch.equal(average.model.weight, live.weight))
    assert copied == [True, True, True, False, False, False]  # 11: the first after warmup


def test_rand_augment_translates_by_torchvisions_share_of_the_image(tmp_path):
    """torchvision's RandAugment translates by up to 150/331 of the side (29 px at 64 px);
    DALI's default, 100 px, would push a 64 px image out of view. White images through the
    train pipeline, one operation at the largest magnitude: the translated ones show a black
    band of 29 px."""
    root = tmp_path / "white"
    for split, count in (("train", 32), ("val", 1)):
        for wnid in ("n00000001", "n00000002"):
            (root / split / wnid).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (64, 64), "white").save(root / split / wnid / f"{wnid}_{i}.JPEG")
    build(root, tmp_path / "shards", PrepOptions(), workers=1)
    loader = make_loader(
        open_shards(tmp_path / "shards"), "train", batch_size=64, image_size=64, **CPU,
        flip=False, color_jitter=False, auto_augment="rand_augment", ra_ops=1, ra_magnitude=30,
    )  # fmt: skip
    images = next(iter(loader))[0]  # (64, 3, 64, 64), normalised: black is below -1.5
    black = (images < -1.5).all(1)  # (64, 64, 64)
    bands = set()
    for mask in black[~black.flatten(1).all(1)]:  # not all black (solarize at most, say)
        for lines in (mask.all(0), mask.all(1)):  # black columns (translate_x), rows (y)
            if lines.any() and lines.sum() == mask.sum() / 64:  # nothing black but the band
                bands.add(int(lines.sum()))
    assert bands == {round(150 / 331 * 64)}, bands


def test_impossible_augmentation_flags_are_named_all_at_once():
    flags = ["--cutmix", "-1", "--mixup", "-0.5", "--random_erase", "1.5", "--ema_every", "4"]
    flags += ["--val_res", "224", "--val_resize", "200", "--ra_magnitude", "31"]
    with pytest.raises(ConfigError) as e:
        check(parse_config(flags), world_size=1)
    for message in (
        "--cutmix -1 must be >= 0",
        "--mixup -0.5 must be >= 0",
        "--random_erase 1.5 must be in [0, 1]",
        "--ema_every 4 is for --ema, which is off",
        "--val_resize 200 is below the centre crop --val_res 224",
        "--ra_magnitude 31 in 0..30",
    ):
        assert message in str(e.value)
    with pytest.raises(ConfigError, match="--ema_every 0 must be at least 1"):
        check(parse_config(["--ema", "--ema_every", "0"]), world_size=1)
    with pytest.raises(SystemExit):
        parse_config(["--auto_augment", "autoaugment"])
    check(parse_config(["--image_size", "176"]), world_size=1)  # any fixed crop size


TINY_ACCURATE = ["--recipe", "accurate", "--epochs", "3", "--batch", "8", "--image_size", "40",
                 "--val_res", "32", "--val_resize", "36", "--workers", "2", "--log_every", "1",
                 "--blurpool", "--sd", "1", "--ema_every", "2", "--warmup_epochs", "1"]  # fmt: skip


@pytest.mark.slow
def test_a_tiny_accurate_run_with_every_piece_on_resumes_after_kill_9(tiny_shards, tmp_path):
    from tests.test_train import ROOT, comparable, history
    from train import checkpoint
    from train.main import main

    reference = tmp_path / "reference"
    base = ["--data_dir", str(tiny_shards)]
    assert main([*base, "--out", str(reference), *TINY_ACCURATE]) == 0
    saved = checkpoint.load(reference / "last.pt")
    config = saved["config"]
    assert config["blurpool"] and config["cutmix"] == 1.0 and config["ema_every"] == 2
    assert config["dali"]["auto_augment"] == "ta_wide" and config["val_resize"] == 36
    assert saved["ema"] is not None
    rows = history(reference)
    assert len(rows) == 3 and all(math.isfinite(float(r["train_loss"])) for r in rows)
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "train", *base, "--out", str(out), *TINY_ACCURATE]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "training_history.csv").exists():
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 1 <= len(history(out)) < 3
    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ})  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert comparable(history(out)) == comparable(rows)
    a, b = checkpoint.load(out / "last.pt"), checkpoint.load(reference / "last.pt")
    for key in b["ema"]:
        np.testing.assert_array_equal(a["ema"][key].numpy(), b["ema"][key].numpy())
    # train.evaluate rebuilds the run's network (BlurPool) and its val transform (36 -> 32).
    from train.evaluate import main as evaluate_main

    result = tmp_path / "eval.json"
    argv = [*base, "--weights", str(reference / "last.pt"), "--workers", "2", "--device", "cpu"]
    assert evaluate_main([*argv, "--json", str(result)]) == 0
    figures = json.loads(result.read_text())
    assert figures["blurpool"] and (figures["image_size"], figures["val_resize"]) == (32, 36)
    assert figures["top1"] == pytest.approx(float(rows[-1]["val_top1"]))
    assert evaluate_main([*argv, "--val_res", "64", "--json", str(result)]) == 0
    assert json.loads(result.read_text())["val_resize"] == 73  # another crop: 64 / 0.875
