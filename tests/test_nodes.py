"""Several nodes and real faults, on the CPU with gloo: two torchrun "nodes" on this machine,
torchrun's restart of a group after a kill -9 and after a hung (SIGSTOPped) worker, SIGTERM
to the torchrun agent (as SLURM sends it), ranks started with different flags, a kill -9
during a save, and a full disk during a time-based save. Each run is compared, bit for bit,
with one uninterrupted run of two ranks."""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_train import FAST, ROOT, comparable, history
from train import checkpoint
from train.ram_cache import RAM_DISK, cache_folder

# Two ranks of 2 images each: 5 steps an epoch on the tiny shards, a log point at every step.
FLAGS = [*FAST, "--epochs", "2", "--log_every", "1", "--batch", "4", "--record_samples"]
EVERY_LOG_POINT = ["--checkpoint_every_minutes", "0.0001"]  # a time-based save at each one
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
TWO_RANKS = ["--standalone", "--nproc_per_node", "2"]


def torchrun(launcher: list[str], shards: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "train",
            "--data_dir", str(shards), "--out", str(out), *FLAGS, *extra]  # fmt: skip


def start(cmd: list[str], env: dict = ENV) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(proc: subprocess.Popen, timeout: float = 420) -> str:
    output, _ = proc.communicate(timeout=timeout)
    return output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> dict[int, list[bytes]]:
    """{pid: its environment} of the processes whose parent is pid."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid:
            found[int(stat.parent.name)] = environ
    return found


def worker(agent: int, rank: int, deadline: float = 120) -> int:
    """The pid of the worker of torchrun agent `agent` that has RANK=rank."""
    end = time.time() + deadline
    while time.time() < end:
        for pid, environ in children(agent).items():
            if f"RANK={rank}".encode() in environ:
                return pid
        time.sleep(0.1)
    raise AssertionError(f"no worker of rank {rank} under torchrun {agent}")


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path} appeared: {proc.stdout.read()}"
        assert time.time() < end, f"{path} did not appear"
        time.sleep(0.05)


def ram_copies(shards: Path) -> list[Path]:
    """The --cache copies of these shards in /dev/shm, one per node (this test's only: other
    runs on the machine may hold their own)."""
    name = cache_folder(shards).name.rsplit("-node", 1)[0]
    return sorted(RAM_DISK.glob(f"{name}-node*"))


def assert_same_run(out: Path, reference: Path) -> None:
    """Each epoch once, with the same metrics (train ones included), and the same weights."""
    assert comparable(history(out)) == comparable(history(reference))
    a, b = checkpoint.load(out / "last.pt"), checkpoint.load(reference / "last.pt")
    for k in b["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)


@pytest.fixture(scope="module")
def reference(tiny_shards, tmp_path_factory) -> Path:
    """One uninterrupted torchrun of two ranks."""
    out = tmp_path_factory.mktemp("reference")
    proc = start(torchrun(TWO_RANKS, tiny_shards, out))
    output = finish(proc)
    assert proc.returncode == 0, output[-3000:]
    return out


@pytest.mark.slow
def test_two_nodes_train_as_one_node_of_two_ranks(tiny_shards, reference, tmp_path):
    out, endpoint = tmp_path / "two_nodes", f"127.0.0.1:{free_port()}"
    launcher = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                "--rdzv_endpoint", endpoint, "--rdzv_id", "two-nodes"]  # fmt: skip
    # --cache: each node copies the shards to RAM once; two nodes on one host must not clash
    nodes = [start(torchrun(launcher, tiny_shards, out, "--cache")) for _ in range(2)]
    outputs = [finish(node) for node in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert_same_run(out, reference)
    copies = [line for o in outputs for line in o.splitlines() if "copied to" in line]
    assert len(copies) == 1 and copies[0].endswith("-node0")  # said by rank 0, on node 0
    assert not ram_copies(tiny_shards)  # removed


def elastic_launcher(endpoint: str) -> list[str]:
    """One of two torchrun nodes of an elastic job: 1 to 2 nodes, one restart; a group that
    lost a node meets again after last_call_timeout with the nodes left."""
    return ["--nnodes", "1:2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
            "--rdzv_endpoint", endpoint, "--rdzv_id", "elastic", "--max_restarts", "1",
            "--rdzv_conf", "last_call_timeout=10"]  # fmt: skip


@pytest.mark.slow
def test_a_lost_node_leaves_the_other_to_finish_alone_with_every_sample_once(
    tiny_shards, reference, tmp_path
):
    """make train NODES=1:2: one of two nodes is killed (its agent and worker) inside an
    epoch; the other one's group meets again on one node, resumes from last.pt at the step
    it holds and finishes the run alone: every epoch trained each sample once, each step the
    samples of the uninterrupted two-rank run's (weights differ: other ranks, other draws).
    Its --cache copy outlives the restart, and goes when the run ends."""
    from tests.test_order import sample_lines

    out, endpoint = tmp_path / "elastic", f"127.0.0.1:{free_port()}"
    extra = [*EVERY_LOG_POINT, "--dist_timeout_minutes", "0.25", "--cache"]
    cmd = torchrun(elastic_launcher(endpoint), tiny_shards, out, *extra)
    try:
        nodes = [start(cmd)]  # the first hosts the rendezvous: the one that must outlive the other
        time.sleep(1)
        nodes.append(start(cmd))
        wait_for(out / "last.pt", nodes[0])
        for pid in [nodes[1].pid, *children(nodes[1].pid)]:  # the node: its agent and its worker
            os.kill(pid, signal.SIGKILL)
        finish(nodes[1])
        output = finish(nodes[0])
        assert nodes[0].returncode == 0, output[-3000:]
        assert "saved on 2 ranks" in output  # it went on with one
        assert sample_lines(out) == sample_lines(reference)
        rows = history(out)
        assert len(rows) == 2 and rows[-1]["world_size"] == "1"
        copies = [line for line in output.splitlines() if "copied to" in line]
        assert len(copies) == 2 and "node0" in copies[0]  # the first attempt's, then the restart's
        assert [c.name[-6:] for c in ram_copies(tiny_shards)] == ["-node1"]  # the killed one's
    finally:  # the killed node's copy stays, as on a machine of its own: remove it
        for copy in ram_copies(tiny_shards):
            shutil.rmtree(copy, ignore_errors=True)


@pytest.mark.slow
def test_a_killed_worker_is_restarted_by_torchrun_and_resumes_by_itself(
    tiny_shards, reference, tmp_path
):
    out = tmp_path / "killed"
    env = {k: v for k, v in ENV.items() if k != "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"}
    launcher = [*TWO_RANKS, "--max_restarts", "1"]  # the trainer's per-attempt store
    proc = start(torchrun(launcher, tiny_shards, out, *EVERY_LOG_POINT), env)
    wait_for(out / "last.pt", proc)  # a time-based save, mid-epoch 1
    os.kill(worker(proc.pid, 1), signal.SIGKILL)
    output = finish(proc)
    assert proc.returncode == 0, output[-4000:]
    assert "resuming from" in output
    assert_same_run(out, reference)


@pytest.mark.slow
def test_a_hung_worker_times_out_and_the_group_restarts(tiny_shards, reference, tmp_path):
    out = tmp_path / "hung"
    launcher = [*TWO_RANKS, "--max_restarts", "1"]
    extra = [*EVERY_LOG_POINT, "--dist_timeout_minutes", "0.25"]
    proc = start(torchrun(launcher, tiny_shards, out, *extra))
    wait_for(out / "last.pt", proc)
    os.kill(worker(proc.pid, 1), signal.SIGSTOP)
    output = finish(proc)
    assert proc.returncode == 0, output[-4000:]
    assert "rank 0: a peer did not answer in time (--dist_timeout_minutes 0.25)" in output
    assert "resuming from" in output
    assert_same_run(out, reference)


@pytest.mark.slow
def test_sigterm_to_the_agent_saves_mid_epoch_and_the_rerun_ends_as_uninterrupted(
    tiny_shards, reference, tmp_path
):
    out = tmp_path / "preempted"
    cmd = torchrun(TWO_RANKS, tiny_shards, out, "--checkpoint_every_minutes", "0")
    proc = start(cmd)
    wait_for(out / "config.json", proc)  # written once the SIGTERM handlers are in place
    time.sleep(1.0)  # into the first epoch's steps
    proc.send_signal(signal.SIGTERM)  # to torchrun, as SLURM does: it forwards it to the workers
    output = finish(proc)
    assert proc.returncode != 0, output[-3000:]
    assert "SIGTERM received" in output and "rerun the same command to resume" in output
    saved = checkpoint.load(out / "last.pt")
    assert saved["steps_done"] > 0 or saved["epoch"] > 0
    rerun = start(cmd)
    output = finish(rerun)
    assert rerun.returncode == 0, output[-3000:]
    assert_same_run(out, reference)  # the resumed epoch's train metrics over both ranks too


@pytest.mark.slow
def test_ranks_started_with_different_flags_are_refused(tiny_shards, tmp_path):
    out, endpoint = tmp_path / "mismatch", f"127.0.0.1:{free_port()}"
    launcher = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                "--rdzv_endpoint", endpoint, "--rdzv_id", "mismatch"]  # fmt: skip
    nodes = [start(torchrun(launcher, tiny_shards, out, "--epochs", e)) for e in ("2", "3")]
    outputs = "".join(finish(node, 240) for node in nodes)
    assert all(node.returncode != 0 for node in nodes)
    assert "the ranks were started with different flags: rank 1: --epochs" in outputs
    assert not (out / "last.pt").exists()


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_whole(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(
        "import sys, torch\n"
        "from train.checkpoint import save\n"
        "save(sys.argv[1], {'step': 1, 'w': torch.ones(10)})\n"
        "print('first saved', flush=True)\n"
        "while True:\n"
        "    save(sys.argv[1], {'step': 2, 'w': torch.zeros(100_000_000)})\n"
    )
    path = tmp_path / "last.pt"
    proc = subprocess.Popen([sys.executable, str(script), str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline() == "first saved\n"
    end = time.time() + 60
    while not list(tmp_path.glob(".last.pt.tmp.*")) and time.time() < end:
        time.sleep(0.005)
    time.sleep(0.05)  # the 400 MB of the second save are being written
    proc.kill()
    proc.wait()
    assert list(tmp_path.glob(".last.pt.tmp.*"))  # killed during the save
    saved = checkpoint.load(path)
    assert saved["step"] == 1 and torch.equal(saved["w"], torch.ones(10))
    checkpoint.remove_stale_temporaries(tmp_path)  # what a resumed run does first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "saver.py"]


@pytest.mark.slow
def test_a_full_disk_during_a_time_based_save_keeps_the_last_one_and_goes_on(tiny_shards, tmpfs):
    out = tmpfs("300m") / "run"  # one ResNet-50 last.pt (205 MB) fits, not two
    cmd = [sys.executable, "-m", "train", "--data_dir", str(tiny_shards), "--out", str(out),
           *FLAGS, "--epochs", "1", *EVERY_LOG_POINT]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=420)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "warning: could not save" in output and "No space left on device" in output
    saved = checkpoint.load(out / "last.pt")
    assert (saved["epoch"], saved["steps_done"]) == (0, 1)  # the first save, kept whole
    assert len(history(out)) == 1  # the run went on to the end
    assert not list(out.glob(".*.tmp.*"))


@pytest.mark.slow
def test_a_rendezvous_endpoint_that_never_answers_is_a_clear_error(tiny_shards, tmp_path):
    launcher = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                "--rdzv_endpoint", "192.0.2.1:29500",  # TEST-NET-1: nobody answers there
                "--rdzv_id", "nobody", "--rdzv_conf", "read_timeout=5"]  # fmt: skip
    started = time.time()
    proc = start(torchrun(launcher, tiny_shards, tmp_path / "out"))
    output = finish(proc, 120)
    assert proc.returncode != 0
    assert "The connection to the C10d store has failed" in output
    assert time.time() - started < 60  # read_timeout, then torchrun's own retries


def test_the_process_group_store_of_a_restartable_run(monkeypatch):
    """torchrun sharing its store with workers it may restart: one node gets a per-attempt
    prefix of it (tested end to end above), several nodes are refused with the fix named."""
    from train.config import ConfigError
    from train.environment import attempt_store

    timeout = datetime.timedelta(seconds=5)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # a fresh store each attempt
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    assert attempt_store(timeout) is None
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "0")  # never restarted: nothing to mix up
    assert attempt_store(timeout) is None
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"):
        attempt_store(timeout)


def test_gloos_timeouts_read_as_a_peer_that_did_not_answer():
    """Both texts gloo gives a collective whose peer is stopped (SIGSTOP): "Timed out ..." in
    the gradient all-reduce, "Application timeout caused pair closure" where DDP broadcasts
    the BN buffers at the start of a forward pass."""
    from train.environment import peer_failure

    for text in ("Timed out waiting 15000ms for recv", "Application timeout caused pair closure"):
        assert peer_failure(RuntimeError(text)) == "a peer did not answer in time"
    assert peer_failure(RuntimeError("CUDA error: out of memory")) is None
