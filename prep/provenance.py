"""What every result file records about where it came from: the code version (the commit,
and `-dirty` when the tree had uncommitted changes) and the machine (host, platform, Python,
PyTorch, DALI, CPUs, the device and, on a GPU, its name and CUDA). One definition for the
trainer's config.json, train.evaluate's --json and every benchmark's JSON."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def code_version() -> str:
    """`git describe --always --dirty` of this checkout (e.g. c171378-dirty), or unknown."""
    here = Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=here, capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        return result.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_facts(device=None, world_size: int = 1) -> dict:
    """`device`: a torch.device or its name (default: cpu)."""
    import torch  # here, not at the top: prep's shard writing needs no PyTorch

    device = torch.device(device or "cpu")
    facts = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "world_size": world_size,
        "device": str(device),
    }
    try:
        import nvidia.dali

        facts["dali"] = nvidia.dali.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
        facts["cuda"] = torch.version.cuda
    return facts
