"""Cost of training, measured by the same code for every method.

`train_in_subprocess` runs one method's training in a fresh Python process (`bench.train_job`), so the
CPU peak RSS it reports belongs to that training alone, not to whatever ran before it in the parent.
On CUDA, the peak is `max_memory_allocated` after a reset.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

MIB = 2**20


@dataclass
class TrainCost:
    peak_mem_mib: float
    mem_kind: str  # "cuda_max_allocated" or "cpu_peak_rss"
    baseline_mem_mib: float  # the same measure just before training started (model loaded)
    train_time_s: float
    steps_per_s: float
    trainable_params: int
    artifact_bytes: int
    artifact_path: str
    losses: list[float] = field(default_factory=list)

    def rows(self) -> list[dict]:
        """Tidy rows (without the run's identifying columns)."""
        out = [
            {"metric": "peak_mem", "value": self.peak_mem_mib, "unit": "MiB"},
            {"metric": "train_mem_increase", "value": self.peak_mem_mib - self.baseline_mem_mib, "unit": "MiB"},
            {"metric": "train_time", "value": self.train_time_s, "unit": "s"},
            {"metric": "steps_per_s", "value": self.steps_per_s, "unit": "1/s"},
            {"metric": "trainable_params", "value": float(self.trainable_params), "unit": "count"},
            {"metric": "artifact_bytes", "value": float(self.artifact_bytes), "unit": "B"},
        ]
        out += [{"metric": "train_loss", "step": i, "value": v, "unit": "mse"} for i, v in enumerate(self.losses)]
        return out


def peak_memory_mib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB, "cuda_max_allocated"
    # ru_maxrss is KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MIB, "cpu_peak_rss"


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def size_on_disk(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(train_fn, save_fn, device: torch.device) -> tuple[object, TrainCost]:
    """Run `train_fn()` (returns a TrainResult) and `save_fn(artifact) -> Path`; measure both ends."""
    reset_peak(device)
    baseline, kind = peak_memory_mib(device)
    start = time.perf_counter()
    result = train_fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    peak, _ = peak_memory_mib(device)
    path = save_fn(result.artifact)
    cost = TrainCost(
        peak_mem_mib=peak,
        mem_kind=kind,
        baseline_mem_mib=baseline,
        train_time_s=elapsed,
        steps_per_s=result.steps / elapsed if elapsed > 0 else float("nan"),
        trainable_params=result.trainable_params,
        artifact_bytes=size_on_disk(path),
        artifact_path=str(path),
        losses=list(result.losses),
    )
    return result, cost


class TrainJobFailed(RuntimeError):
    """The training subprocess failed; the message is its error."""


def train_in_subprocess(config_file: Path, method: str, out_dir: Path, log_file: Path) -> TrainCost:
    """Run `python -m bench.train_job` for one method; returns its measured cost."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    (out_dir / "error.json").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench.train_job", "--config", str(config_file), "--method", method, "--out", str(out_dir)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log_file, "w") as log:
        # stderr goes to the terminal so the child's progress bar stays visible.
        proc = subprocess.run(cmd, stdout=log, env=env, cwd=Path(__file__).resolve().parents[1])
    error_file = out_dir / "error.json"
    if proc.returncode != 0:
        message = json.loads(error_file.read_text())["error"] if error_file.is_file() else f"exit code {proc.returncode}, see {log_file}"
        raise TrainJobFailed(message)
    data = json.loads((out_dir / "cost.json").read_text())
    return TrainCost(**data)


def cost_to_json(cost: TrainCost) -> str:
    return json.dumps(asdict(cost))
