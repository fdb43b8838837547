"""models/: architecture, torchvision compatibility and stochastic depth."""

from __future__ import annotations

import copy
import math
import random
from collections import Counter

import pytest
import torch
import torchvision
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

from models import Bottleneck, build_resnet, drop_path, survival_probs
from models.__main__ import main as models_main
from models.flops import skipped_share, training_flops

TORCHVISION_PARAMS = {50: 25_557_032, 101: 44_549_160, 152: 60_192_808}
# Pinned from this implementation: pre-activation moves BNs around (one more BN per block on
# the input side, none on the projection, one after the last stage).
PREACT_PARAMS = {50: 25_549_480, 101: 44_541_608, 152: 60_185_256}
TV_BUILDERS = {
    50: torchvision.models.resnet50,
    101: torchvision.models.resnet101,
    152: torchvision.models.resnet152,
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("depth", [50, 101, 152])
def test_parameter_counts(depth):
    v15 = build_resnet(depth, variant="v1.5")
    assert n_params(v15) == TORCHVISION_PARAMS[depth] == n_params(TV_BUILDERS[depth]())
    preact = build_resnet(depth)
    assert abs(n_params(preact) - TORCHVISION_PARAMS[depth]) / TORCHVISION_PARAMS[depth] < 0.01
    assert n_params(preact) == PREACT_PARAMS[depth]


@pytest.mark.parametrize("depth", [50, 101, 152])
@pytest.mark.parametrize("variant", ["preact", "v1.5"])
def test_forward_backward_every_parameter_gets_a_gradient(depth, variant):
    torch.manual_seed(0)
    model = build_resnet(depth, variant=variant, num_classes=10, zero_init_residual=False)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 10)
    torch.nn.functional.cross_entropy(out, torch.tensor([1, 7])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("depth", [50, 101, 152])
def test_v15_state_dict_has_torchvision_keys_and_shapes(depth):
    ours = {k: v.shape for k, v in build_resnet(depth, variant="v1.5").state_dict().items()}
    theirs = {k: v.shape for k, v in TV_BUILDERS[depth]().state_dict().items()}
    assert ours == theirs


def _with_trained_bn_stats(model: torch.nn.Module) -> torch.nn.Module:
    """Move BN running stats away from their (0, 1) start, so that eval mode uses them."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 64, 64) * 2 + 0.5)
    return model.eval()


def test_v15_loads_torchvision_weights_and_agrees():
    torch.manual_seed(0)
    tv = _with_trained_bn_stats(torchvision.models.resnet50())
    ours = build_resnet(50, variant="v1.5").eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        expected, got = tv(x), ours(x)
    assert expected.abs().max() > 0.1  # a real signal, not zeros agreeing with zeros
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_torchvision_loads_our_v15_weights_and_agrees():
    torch.manual_seed(1)
    ours = _with_trained_bn_stats(build_resnet(50, variant="v1.5", zero_init_residual=False))
    tv = torchvision.models.resnet50().eval()
    tv.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        expected, got = ours(x), tv(x)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("depth,L", [(50, 16), (101, 33), (152, 50)])
def test_survival_probabilities_follow_the_linear_decay_rule(depth, L):
    model = build_resnet(depth, sd_mode="batch", final_survival=0.5)
    probs = model.survival_probs
    assert len(probs) == L == len(model.blocks())
    assert probs == pytest.approx([1 - (l / L) * 0.5 for l in range(1, L + 1)])
    assert probs[-1] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(probs, probs[1:], strict=False))
    assert [b.survival_prob for b in model.blocks()] == probs
    assert build_resnet(depth).survival_probs == [1.0] * L  # SD off: every block survives


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.01, 2, float("nan"), "0.5", None, True])
def test_final_survival_outside_unit_interval_is_refused(bad):
    with pytest.raises(ValueError, match=r"final_survival \(pL\)"):
        build_resnet(50, sd_mode="batch", final_survival=bad)
    with pytest.raises(ValueError, match=r"final_survival \(pL\)"):
        survival_probs(16, bad)


def test_final_survival_one_keeps_every_block():
    assert survival_probs(16, 1.0) == [1.0] * 16


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"depth": 34}, "depth must be one of"),
        ({"depth": 50, "variant": "v2"}, "variant must be one of"),
        ({"depth": 50, "sd_mode": "row"}, "sd_mode must be one of"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    depth = kwargs.pop("depth")
    with pytest.raises(ValueError, match=match):
        build_resnet(depth, **kwargs)


def _branch_call_counter(model):
    """Count, per block, how many times its residual branch ran (its conv2 is only in it)."""
    counts = [0] * len(model.blocks())
    for i, block in enumerate(model.blocks()):

        def hook(_module, _inputs, _output, i=i):
            counts[i] += 1

        block.conv2.register_forward_hook(hook)
    return counts


@pytest.mark.parametrize("variant", ["preact", "v1.5"])
def test_batch_mode_computes_sum_of_survival_probs_branches(variant):
    model = build_resnet(50, variant=variant, sd_mode="batch", num_classes=10).train()
    counts = _branch_call_counter(model)
    steps = 300
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for _ in range(steps):
            model(x)
    probs = model.survival_probs
    mean = steps * sum(probs)
    std = math.sqrt(steps * sum(p * (1 - p) for p in probs))
    assert abs(sum(counts) - mean) < 4 * std, (sum(counts), mean, std)
    assert sum(counts) < 0.8 * steps * len(probs)  # really fewer than all of them
    for count, p in zip(counts, probs, strict=True):  # every block at its own rate
        assert abs(count - steps * p) < 5 * math.sqrt(steps * p * (1 - p)) + 1


def _total_flops(model, x) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).sum().backward()
    return counter.get_total_flops()


class _ScriptedDraws(random.Random):
    """Stands in for the model's batch-mode generator: 0.0 keeps a block, 1.0 drops it."""

    def __init__(self, keeps: list[bool]) -> None:
        super().__init__(0)
        self.values = [0.0 if keep else 1.0 for keep in keeps]

    def random(self) -> float:
        return self.values.pop(0)


def test_batch_mode_skips_the_flops_of_dropped_blocks_forward_and_backward():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    model = build_resnet(50, sd_mode="batch", num_classes=10).train()
    n = len(model.blocks())

    def flops_with(keeps: list[bool]) -> int:
        model.zero_grad(set_to_none=True)
        model.sd_rng = _ScriptedDraws(keeps)
        return _total_flops(model, x)

    full = flops_with([True] * n)
    # What dropping each block alone saves: its branch, forward and backward.
    saving = [full - flops_with([j != i for j in range(n)]) for i in range(n)]
    assert all(s > 0 for s in saving)
    # Savings add up for any pattern of dropped blocks, and their gradients are not computed.
    gen = random.Random(1)
    for _ in range(5):
        keeps = [gen.random() < 0.5 for _ in range(n)]
        assert flops_with(keeps) == full - sum(
            s for s, k in zip(saving, keeps, strict=True) if not k
        )
        for block, keep in zip(model.blocks(), keeps, strict=True):
            assert (block.conv2.weight.grad is None) == (not keep)
    # The paper's saving: at pL = 0.5 an expected quarter or so of the training FLOPs.
    probs = model.survival_probs
    expected = 1 - sum((1 - p) * s for p, s in zip(probs, saving, strict=True)) / full
    assert 0.65 < expected < 0.8
    # python -m models counts the same share from one pass, per module: it must agree.
    total, branches = training_flops(50, "preact", 64, 10)
    assert total == full / x.shape[0]
    assert skipped_share(probs, total, branches) == pytest.approx(1 - expected, rel=1e-9)
    model.sd_rng = random.Random(0)
    ratios = []
    for _ in range(20):
        model.zero_grad(set_to_none=True)
        ratios.append(_total_flops(model, x) / full)
    assert abs(sum(ratios) / len(ratios) - expected) < 0.06


def test_batch_decisions_are_identical_for_identical_seeds_and_resume_from_state():
    a = build_resnet(50, sd_mode="batch", sd_seed=7)
    b = build_resnet(50, sd_mode="batch", sd_seed=7)
    c = build_resnet(50, sd_mode="batch", sd_seed=8)
    seq_a = [a.draw_sd_decisions() for _ in range(50)]
    seq_b = [b.draw_sd_decisions() for _ in range(50)]
    seq_c = [c.draw_sd_decisions() for _ in range(50)]
    assert seq_a == seq_b
    assert seq_a != seq_c
    state = a.sd_rng_state()
    next_a = [a.draw_sd_decisions() for _ in range(10)]
    b.set_sd_rng_state(state)
    assert [b.draw_sd_decisions() for _ in range(10)] == next_a


def test_batch_decisions_do_not_use_the_global_rng():
    model = build_resnet(50, sd_mode="batch", sd_seed=3)
    torch.manual_seed(0)
    first = [model.draw_sd_decisions() for _ in range(5)]
    model.set_sd_rng_state(build_resnet(50, sd_mode="batch", sd_seed=3).sd_rng_state())
    torch.manual_seed(123)
    assert [model.draw_sd_decisions() for _ in range(5)] == first


def test_activation_checkpointing_recomputes_with_the_same_decision():
    torch.manual_seed(0)
    block = Bottleneck(256, 64, 1, preact=True, survival_prob=0.5, sd_mode="batch").train()
    x = torch.randn(2, 256, 8, 8, requires_grad=True)
    for keep in (True, False):
        block.keep = keep
        plain = block(x)
        (g_plain,) = torch.autograd.grad(plain.sum(), x)
        ckpt = checkpoint(block, x, use_reentrant=False)
        (g_ckpt,) = torch.autograd.grad(ckpt.sum(), x)
        torch.testing.assert_close(ckpt, plain)
        torch.testing.assert_close(g_ckpt, g_plain)


def _block_for_expectation(preact: bool, sd_mode: str, p: float) -> Bottleneck:
    torch.manual_seed(0)
    block = Bottleneck(256, 64, 1, preact=preact, survival_prob=p, sd_mode=sd_mode)
    for m in block.modules():  # a non-zero branch with realistic BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    block.train()
    for m in block.modules():  # BN in eval, so that only the drop decision is random
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    return block


def _outcomes(block: Bottleneck, x: torch.Tensor, p: float):
    """The block's output when its branch is kept (scaled by 1/p), dropped, and in eval mode.

    A pre-activation block adds the branch and stops: all three are affine in the branch.
    A post-activation block applies ReLU after the add, so stochastic depth acts on the sum
    before it; the outcomes are computed from the block's own shortcut and branch.
    """
    with torch.no_grad():
        if block.preact:
            branch, finish = block._branch_preact(torch.relu(block.bn1(x))), (lambda t: t)
        else:
            branch, finish = block._branch_post(x), torch.relu
        return finish(x + branch / p), finish(x), finish(x + branch)


@pytest.mark.parametrize("preact", [True, False])
def test_sample_mode_scales_kept_branches_and_matches_eval_in_expectation(preact):
    p, n = 0.6, 4000
    block = _block_for_expectation(preact, "sample", p)
    x = torch.randn(1, 256, 4, 4).relu()
    kept, dropped, evaluated = _outcomes(block, x, p)
    assert not torch.allclose(kept, dropped)
    with torch.no_grad():
        train_out = block(x.expand(n, -1, -1, -1).contiguous())  # n independent draws
    # Each sample is either the kept output (branch / p) or the dropped one, nothing else.
    is_kept = (train_out - kept).flatten(1).abs().amax(1) < 1e-4
    is_dropped = (train_out - dropped).flatten(1).abs().amax(1) < 1e-4
    assert (is_kept ^ is_dropped).all()
    assert abs(is_kept.float().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / n)
    if preact:  # averaged over the draws, the training output is the eval-mode output
        mean = train_out.mean(0, keepdim=True)
        spread = train_out.std(0, keepdim=True) / math.sqrt(n)
        assert ((mean - evaluated).abs() <= 5 * spread + 1e-5).all()
    block.eval()
    with torch.no_grad():
        torch.testing.assert_close(block(x), evaluated)


@pytest.mark.parametrize("preact", [True, False])
def test_batch_mode_kept_dropped_and_eval_outputs(preact):
    p = 0.7
    block = _block_for_expectation(preact, "batch", p)
    x = torch.randn(2, 256, 4, 4).relu()
    kept, dropped, evaluated = _outcomes(block, x, p)
    with torch.no_grad():
        block.keep = True
        torch.testing.assert_close(block(x), kept)
        block.keep = False
        torch.testing.assert_close(block(x), dropped)
        block.eval()
        torch.testing.assert_close(block(x), evaluated)
    if preact:
        # E_b[x + b * f(x) / p] = x + f(x): the expectation over the draw is the eval network,
        # which is what the paper gets by scaling the unscaled branch by p at test time.
        torch.testing.assert_close(p * kept + (1 - p) * dropped, evaluated)


def test_drop_path_identity_outside_training_and_at_keep_one():
    x = torch.randn(8, 4, 2, 2)
    assert drop_path(x, 0.5, training=False) is x
    assert drop_path(x, 1.0, training=True) is x


@pytest.mark.parametrize("sd_mode", ["batch", "sample"])
@pytest.mark.parametrize("variant", ["preact", "v1.5"])
def test_eval_mode_is_deterministic_and_free_of_stochastic_depth(sd_mode, variant):
    torch.manual_seed(0)
    plain = build_resnet(50, variant=variant, num_classes=10, zero_init_residual=False)
    _with_trained_bn_stats(plain)
    sd = build_resnet(50, variant=variant, sd_mode=sd_mode, final_survival=0.2, num_classes=10)
    sd.load_state_dict(plain.state_dict())
    sd.eval()
    x = torch.randn(2, 3, 64, 64)
    rng_before = sd.sd_rng_state()
    with torch.no_grad():
        a, b, reference = sd(x), sd(x), plain(x)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, reference)
    assert sd.sd_rng_state() == rng_before  # no draws in eval mode
    assert all(blk.keep or not blk.training for blk in sd.blocks())


@pytest.mark.slow
@pytest.mark.parametrize("sd_mode", ["off", "sample"])
def test_torch_compile_runs_the_model(sd_mode):
    torch.manual_seed(0)
    model = build_resnet(50, sd_mode=sd_mode, num_classes=10, zero_init_residual=False).train()
    compiled = torch.compile(model)
    x = torch.randn(2, 3, 64, 64)
    out = compiled(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    if sd_mode == "off":
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)


def test_python_m_models_prints_counts_flops_and_probabilities(capsys):
    models_main(["--depth", "50", "--variant", "v1.5", "--sd", "1", "--sd-mode", "batch"])
    out = capsys.readouterr().out
    assert "parameters: 25,557,032" in out
    gflops = float(out.split("GFLOPs at 224x224: ")[1].split()[0])
    assert 8.0 < gflops < 8.4  # 4.1 G multiply-adds, the figure usually quoted for ResNet-50
    training = float(out.split("forward + backward, every block computed: ")[1].split()[0])
    assert 2.9 * gflops < training < 3 * gflops  # backward: about twice the forward
    share = float(out.split("of the training FLOPs skipped")[0].split()[-1].rstrip("%")) / 100
    probs = survival_probs(16, 0.5)
    total, branches = training_flops(50, "v1.5", 224, 1000)
    assert share == pytest.approx(skipped_share(probs, total, branches), abs=5e-4)
    assert 0.2 < share < 1 - sum(probs) / 16 < 0.3  # the stem, head and projections stay
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 16
    assert float(rows[0][2]) == pytest.approx(1 - 0.5 / 16, abs=1e-4)
    assert float(rows[-1][2]) == pytest.approx(0.5)


def test_python_m_models_reports_bad_values_without_a_traceback():
    with pytest.raises(SystemExit, match=r"final_survival \(pL\) must be in \(0, 1\]"):
        models_main(["--sd", "1", "--final-survival", "1.5"])


@pytest.mark.parametrize("sd_mode", ["off", "batch"])
def test_checkpointed_activations_give_the_same_gradients(sd_mode):
    torch.manual_seed(0)
    model = build_resnet(50, sd_mode=sd_mode, num_classes=10, zero_init_residual=False).train()
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for checkpointed in (False, True):
        model.zero_grad(set_to_none=True)
        model.set_sd_rng_state(build_resnet(50, sd_mode=sd_mode, sd_seed=1).sd_rng_state())
        torch.manual_seed(1)
        model.checkpoint_activations = checkpointed
        model(x).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)


class _AtenLog(TorchDispatchMode):
    """Records every aten operation run inside it, with the element count of its output."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        first = out[0] if isinstance(out, (tuple, list)) and out else out
        self.ops.append((str(func.overloadpacket), first.numel() if torch.is_tensor(first) else 0))
        return out


def _block(variant: str, projection: bool, sd_mode: str) -> Bottleneck:
    """A stage-3-like block (width 64) with non-trivial weights and BN statistics."""
    torch.manual_seed(0)
    in_channels, stride = (128, 2) if projection else (256, 1)
    block = Bottleneck(
        in_channels, 64, stride, preact=variant == "preact", survival_prob=0.6, sd_mode=sd_mode
    )
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
    return block.train()


def _bn_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{b}": getattr(m, b).clone()
        for name, m in module.named_modules()
        if isinstance(m, torch.nn.BatchNorm2d)
        for b in ("running_mean", "running_var", "num_batches_tracked")
    }


def _block_input(block: Bottleneck) -> torch.Tensor:
    # A block's input is the output of a ReLU (the stem's or the previous block's) or of an add
    # of such outputs: non-negative in the post-activation network, signed in pre-activation.
    x = torch.randn(4, block.conv1.in_channels, 32, 32)
    return (x.relu() if not block.preact else x).requires_grad_()


def _dropped_forward(variant: str, projection: bool):
    """A dropped block's training forward: (block, input, output, BN buffers before, op log)."""
    block = _block(variant, projection, sd_mode="batch")
    block.keep = False
    x = _block_input(block)
    buffers = _bn_buffers(block)
    log = _AtenLog()
    with log:
        out = block(x)
    return block, x, out, buffers, log


@pytest.mark.parametrize("variant", ["preact", "v1.5"])
def test_a_dropped_identity_block_runs_no_operation_and_leaves_its_bn_statistics(variant):
    block, x, out, buffers, log = _dropped_forward(variant, projection=False)
    assert log.ops == []  # forward: nothing at all; backward: nothing of the block's either
    assert out is x
    after = _bn_buffers(block)
    assert all(torch.equal(after[k], v) for k, v in buffers.items())
    with log:
        out.sum().backward()
    assert all(p.grad is None for p in block.parameters())


@pytest.mark.parametrize("variant", ["preact", "v1.5"])
def test_a_dropped_projection_block_computes_its_shortcut_alone(variant):
    block, x, out, buffers, log = _dropped_forward(variant, projection=True)
    convolutions = [op for op, _ in log.ops if op == "aten.convolution"]
    assert len(convolutions) == 1  # the projection, not conv1, conv2 or conv3
    reference = block.downsample(torch.relu(block.bn1(x)) if block.preact else x)
    torch.testing.assert_close(out, reference if block.preact else reference.relu())
    after = _bn_buffers(block)
    # The branch's own BNs keep their statistics (the pre-activation bn1 also feeds the
    # projection, so it is part of the shortcut and runs).
    branch_bns = ("bn2", "bn3") if block.preact else ("bn1", "bn2", "bn3")
    for key, value in buffers.items():
        if key.split(".")[0] in branch_bns:
            assert torch.equal(after[key], value), key


def _full_size_ops(block: Bottleneck, x: torch.Tensor) -> Counter:
    """The aten operations, forward and backward, whose output is activation-sized (at least
    one width-channel feature map of the batch: more elements than any weight of the block)."""
    stride = block.conv2.stride[0]
    size = x.shape[0] * block.conv2.out_channels * (x.shape[2] // stride) * (x.shape[3] // stride)
    assert size > max(p.numel() for p in block.parameters())
    log = _AtenLog()
    with log:
        block(x).sum().backward()
    return Counter(op for op, n in log.ops if n >= size)


def _kept(variant: str, projection: bool) -> Bottleneck:
    block = _block(variant, projection, sd_mode="batch")
    block.keep = True
    return block


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("variant", ["preact", "v1.5"])
def test_a_kept_block_scales_its_branch_without_a_pass_over_the_activations(variant, projection):
    plain = _block(variant, projection, sd_mode="off")
    x = _block_input(plain).detach()
    ops_plain = _full_size_ops(plain, x.clone().requires_grad_())
    ops_kept = _full_size_ops(_kept(variant, projection), x.clone().requires_grad_())
    assert ops_plain and ops_kept == ops_plain  # the 1/p scaling adds no full-size operation
    assert "aten.div" not in ops_kept and "aten.mul" not in ops_kept


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("variant", ["preact", "v1.5"])
def test_a_kept_block_gives_its_branch_scaled_by_one_over_p(variant, projection):
    """What scaling the branch's output by 1/p gives: output, gradients, BN statistics."""
    kept, reference = _kept(variant, projection), _block(variant, projection, sd_mode="off")
    p = kept.survival_prob
    x = _block_input(reference).detach()
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = kept(x1)
    pre = torch.relu(reference.bn1(x2)) if reference.preact else x2
    shortcut = x2 if reference.downsample is None else reference.downsample(pre)
    if reference.preact:
        expected = shortcut + reference._branch_preact(pre) / p
    else:
        expected = torch.relu(shortcut + reference._branch_post(x2) / p)
    assert (expected - shortcut).abs().max() > 0.1  # a branch that contributes
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(got)
    (got * weights).sum().backward()
    (expected * weights).sum().backward()
    grads = [("input", x1.grad, x2.grad)] + [
        (name, a.grad, b.grad)
        for (name, a), b in zip(kept.named_parameters(), reference.parameters(), strict=True)
    ]
    for name, a, b in grads:  # float32 rounding, relative to each gradient's scale
        assert (a - b).abs().max() <= 1e-5 * b.abs().max(), name
    for key, value in _bn_buffers(reference).items():
        torch.testing.assert_close(_bn_buffers(kept)[key], value, msg=key)


@pytest.mark.parametrize("variant", ["preact", "v1.5"])
def test_dropped_blocks_of_the_network_leave_their_bn_statistics_alone(variant):
    torch.manual_seed(0)
    model = build_resnet(50, variant=variant, sd_mode="batch", num_classes=10).train()
    keeps = [i % 3 != 1 for i in range(len(model.blocks()))]  # every third block dropped
    keeps[0] = False  # a projection block among them
    model.sd_rng = _ScriptedDraws(keeps)
    before = [_bn_buffers(block) for block in model.blocks()]
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    for block, keep, buffers in zip(model.blocks(), keeps, before, strict=True):
        after = _bn_buffers(block)
        shortcut_bns = {"bn1"} if block.preact and block.downsample is not None else set()
        shortcut_bns |= {k.split(".")[0] for k in buffers if k.startswith("downsample")}
        for key, value in buffers.items():
            unchanged = torch.equal(after[key], value)
            assert unchanged == (not keep and key.split(".")[0] not in shortcut_bns), key


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["preact", "v1.5"])
def test_compiled_batch_mode_blocks_match_eager_ones_kept_and_dropped(variant):
    """The trainer compiles SD batch mode block by block (train.model.compile_blocks): each
    block compiles a kept and a dropped graph, which must give eager's outputs, gradients and
    BN statistics, the folded 1/p and the untouched dropped blocks included."""
    for projection in (False, True):
        eager = _block(variant, projection, sd_mode="batch")
        compiled = copy.deepcopy(eager)
        compiled.compile()
        for keep in (True, False, True):
            eager.keep = compiled.keep = keep
            x = _block_input(eager).detach()
            x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
            a, b = eager(x1), compiled(x2)
            a.square().sum().backward()
            b.square().sum().backward()
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(x2.grad, x1.grad, atol=1e-3, rtol=1e-3)
            for (name, p), q in zip(eager.named_buffers(), compiled.buffers(), strict=True):
                torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-5, msg=name)
