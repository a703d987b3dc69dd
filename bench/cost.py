"""Cost of training, measured by the same code for every method.

Memory is the run's own: on CUDA `max_memory_allocated` after a reset; on the CPU the peak of live tensor
bytes (`bench.memory.TensorPeak`, model weights included, like the CUDA number). The process's peak RSS is
recorded beside it. Time is wall-clock time of `Method.train` (setup and every step); steps/s is the
steady rate after the memory probe's steps, which run slower under the probe. Beside the time, the
machine's other load while it was measured: the cores other processes kept busy (the CPU time the whole
machine spent, from /proc/stat, minus this process's own), so a time taken under someone else's training
says so.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from bench.memory import MIB, TensorPeak, module_storages, process_peak_rss_mib, reset_process_peak_rss

PROBE_STEPS = 2  # steps watched by the CPU memory probe (see bench.memory)


@dataclass
class TrainCost:
    peak_mem_mib: float
    mem_kind: str  # "cpu_tensor_peak" or "cuda_max_allocated"
    model_mem_mib: float  # the model weights already in memory when training started (inside peak_mem_mib)
    process_rss_peak_mib: float
    train_time_s: float
    steps_per_s: float
    trainable_params: int
    artifact_bytes: int
    artifact_file: str  # relative to the run's folder, so a results directory can move
    threads: int
    other_load_cores: float = float("nan")  # cores other processes kept busy during training (NaN: not Linux)
    losses: list[float] = field(default_factory=list)
    # step -> the artifact saved after that step (train.checkpoints), relative to the run's folder
    checkpoints: dict[str, str] = field(default_factory=dict)
    checkpoint_time_s: float = 0.0  # spent saving them: not in train_time_s or steps_per_s

    def rows(self) -> list[dict]:
        """Tidy rows (without the run's identifying columns)."""
        out = [
            {"metric": "peak_mem", "value": self.peak_mem_mib, "unit": "MiB", "scorer": self.mem_kind},
            {"metric": "process_rss_peak", "value": self.process_rss_peak_mib, "unit": "MiB", "scorer": "process_vmhwm"},
            {"metric": "train_time", "value": self.train_time_s, "unit": "s", "scorer": "wall_clock"},
            {"metric": "steps_per_s", "value": self.steps_per_s, "unit": "1/s", "scorer": "wall_clock"},
            {"metric": "trainable_params", "value": float(self.trainable_params), "unit": "count", "scorer": "parameters"},
            {"metric": "artifact_bytes", "value": float(self.artifact_bytes), "unit": "B", "scorer": "file_size"},
            {"metric": "threads", "value": float(self.threads), "unit": "count", "scorer": "torch"},
            {"metric": "other_load", "value": self.other_load_cores, "unit": "cores", "scorer": "proc_stat"},
        ]
        if self.checkpoints:
            out.append({"metric": "checkpoint_time", "value": self.checkpoint_time_s, "unit": "s", "scorer": "wall_clock"})
        out += [{"metric": "train_loss", "step": i, "value": v, "unit": "mse", "scorer": "training"} for i, v in enumerate(self.losses)]
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "TrainCost":
        return cls(**json.loads(text))


def machine_cpu_seconds() -> float:
    """CPU seconds every core of the machine has spent busy since boot (NaN where /proc/stat is absent)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    # user..steal; guest time is already counted inside user/nice.
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class LoadMeter:
    """Cores kept busy by other processes between `__enter__` and `__exit__`: the machine's busy CPU time
    minus this process's own, over the wall time."""

    def __enter__(self) -> "LoadMeter":
        self.machine, self.own, self.wall = machine_cpu_seconds(), time.process_time(), time.perf_counter()
        self.other_cores = float("nan")
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self.wall
        others = (machine_cpu_seconds() - self.machine) - (time.process_time() - self.own)
        # /proc/stat counts whole clock ticks (10 ms), so an idle machine can come out a little below 0.
        self.other_cores = max(0.0, others / wall) if wall > 0 else float("nan")


def size_on_disk(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure_training(method, pipe, data, settings, out_dir: Path) -> tuple[object, TrainCost]:
    """Train `method` on `data`, save its artifact under `out_dir`, and measure both."""
    from methods.conditioning import text_encoders
    from bench.family import denoiser

    device = denoiser(pipe).device
    reset_process_peak_rss()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        model_bytes = torch.cuda.memory_allocated(device)
        probe = None
    else:
        weights = module_storages(denoiser(pipe), pipe.vae, *text_encoders(pipe))
        model_bytes = sum(s.nbytes() for s in weights)
        probe = TensorPeak(model_bytes, known=weights)
        del weights  # the probe holds them weakly: a weight replaced during training is freed, and counted so
    step_ends: list[float] = []
    saved: dict[str, str] = {}
    paused = 0.0  # seconds spent saving checkpoints: training's time and rate leave them out

    def on_step(step: int) -> None:
        nonlocal paused
        if probe is not None and step + 1 >= PROBE_STEPS:
            probe.stop()
        step_ends.append(time.perf_counter() - paused)
        if step + 1 in settings.checkpoints:
            start_save = time.perf_counter()
            watching = probe is not None and probe.watching
            if watching:  # a checkpoint's copies are not training's memory
                probe.stop()
            artifact = method.snapshot(pipe, data)
            path = method.save(artifact, Path(out_dir) / "checkpoints" / f"step{step + 1:07d}")
            saved[str(step + 1)] = str(Path(path).relative_to(out_dir))
            del artifact
            if watching:
                probe.start()
            paused += time.perf_counter() - start_save

    if probe is not None:
        probe.start()
    start = time.perf_counter()
    try:
        with LoadMeter() as load:
            result = method.train(pipe, data, replace(settings, on_step=on_step))
    finally:
        if probe is not None:
            probe.stop()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start - paused
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    else:
        peak, kind = probe.peak_bytes, "cpu_tensor_peak"
    steady = step_ends[PROBE_STEPS - 1 :] if len(step_ends) > PROBE_STEPS else step_ends
    rate = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 and steady[-1] > steady[0] else result.steps / elapsed
    path = method.save(result.artifact, Path(out_dir) / "artifact")
    cost = TrainCost(
        peak_mem_mib=peak / MIB,
        mem_kind=kind,
        model_mem_mib=model_bytes / MIB,
        process_rss_peak_mib=process_peak_rss_mib(),
        train_time_s=elapsed,
        steps_per_s=rate,
        trainable_params=result.trainable_params,
        artifact_bytes=size_on_disk(path),
        artifact_file=str(Path(path).relative_to(out_dir)),
        threads=torch.get_num_threads(),
        other_load_cores=load.other_cores,
        losses=list(result.losses),
        checkpoints=saved,
        checkpoint_time_s=paused,
    )
    return result, cost
