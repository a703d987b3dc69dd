"""What a number was made with: code version, packages, hardware, date."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

PACKAGES = ("torch", "diffusers", "transformers", "peft", "open_clip_torch", "torchmetrics", "hydra-core")


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. under taskset or a cgroup), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def core_budget() -> tuple[int, str]:
    """(cores this job may keep busy, where that number comes from). A launcher that runs several jobs
    at once says how many threads each may use through OMP_NUM_THREADS (joblib's loky workers set it to
    cores / n_jobs, SLURM users set it per task); without it, every usable core."""
    cores = usable_cores()
    limit = os.environ.get("OMP_NUM_THREADS", "").strip()
    if limit.isdigit() and int(limit) >= 1:
        return min(cores, int(limit)), f"OMP_NUM_THREADS={limit}"
    if os.environ.get("SUBMITIT_EXECUTOR") == "local":
        # submitit's local executor (hydra/launcher=cluster_local) starts all jobs at once on this machine
        # and says nothing of the cores: one thread each, or they spin against each other.
        return 1, "submitit local executor"
    return cores, "usable cores"


@lru_cache(maxsize=1)
def packages() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def environment(device: str | None = None) -> dict:
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    budget, budget_source = core_budget()
    return {
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "packages": packages(),
        "hardware": {"cpu": cpu_model(), "usable_cores": usable_cores(), "core_budget": budget, "core_budget_source": budget_source, "torch_threads": torch.get_num_threads(), "gpu": gpu, "device": device},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
