"""Images per second of a weight sweep: one weight at a time against several weights per batch.

    python benchmarks/sweep_speed.py [--steps 20] [--weights 8] [--write]

Uses the embedded micro model and a briefly trained artifact of each method that supports batched
weights (Textual Inversion, hypernetwork, LoRA); prints a table (results/benchmarks/sweep_speed.md with --write).

Beside it, the floor no batching can go below: the base UNet's forward passes alone, as many sample
evaluations as the sweep needs (images x steps x 2 for guidance), at the batched sweep's batch size. One
weight at a time over that floor is the largest speed-up batching weights could give on this machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.data import load_world_concept  # noqa: E402
from bench.models import load_pipeline  # noqa: E402
from bench.sweep import sweep_method, sweep_prompts  # noqa: E402
from methods.base import TrainSettings  # noqa: E402
from methods.hypernetwork import Hypernetwork  # noqa: E402
from methods.lora import LoRA  # noqa: E402
from methods.textual_inversion import TextualInversion  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "results" / "benchmarks" / "sweep_speed.md"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--weights", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="timings per mode (alternating); the table gives the median")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    if args.repeats < 1:
        p.error(f"--repeats: at least 1 timing per mode, got {args.repeats}")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    pipe = load_pipeline({"name": "micro", "embedded": True, "dtype": "float32"}, "cpu")
    data = load_world_concept("sks_crescent", 8, 64)
    prompts = sweep_prompts(OmegaConf.create({"instance": ["{instance}"], "recontext": ["{instance} on a white background"]}), data)
    weights = [round(-1 + 2.25 * i / (args.weights - 1), 3) for i in range(args.weights)]
    rows = []
    for method in (TextualInversion(lr=2e-2), Hypernetwork(lr=2e-3), LoRA(lr=2e-3)):
        artifact = method.train(pipe, data, TrainSettings(steps=20, batch_size=4, progress=False)).artifact
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):  # the two modes alternate, so a drift in the host's speed hits both
            for batched in (False, True):
                cfg = OmegaConf.create({"weights": weights, "seeds": [0, 1], "steps": args.steps, "guidance": 5.0, "batch": 32, "batched": batched})
                start = time.perf_counter()
                images = sweep_method(pipe, method, artifact, data, prompts, cfg, progress=False)
                times[batched].append(time.perf_counter() - start)
        for batched, seconds in times.items():
            elapsed = statistics.median(seconds)
            rows.append({"method": method.name, "mode": "batched weights" if batched else "one weight at a time", "images": len(images), "seconds": elapsed, "images/s": len(images) / elapsed})
    table = pd.DataFrame(rows)
    evaluations = len(images) * args.steps * 2
    floor = statistics.median(unet_seconds(pipe, 2 * 32, evaluations) for _ in range(args.repeats))
    seconds = table.pivot(index="method", columns="mode", values="seconds")
    one_at_a_time = seconds["one weight at a time"]
    bound = pd.DataFrame({"one weight at a time (s)": one_at_a_time, "UNet forwards alone, batch 64 (s)": floor,
                          "largest possible speed-up": one_at_a_time / floor,
                          "batched speed-up": one_at_a_time / seconds["batched weights"]}).reset_index()
    text = (f"Micro SD, {args.steps} DDIM steps, {args.weights} weights x {len(prompts)} prompts x 2 seeds, batch 32, 2 threads; "
            f"seconds: median of {args.repeats} alternating timings per mode.\n\n"
            + table.to_markdown(index=False, floatfmt=".2f")
            + f"\n\nThe floor: the base UNet alone for the sweep's {evaluations:,} sample evaluations ({len(images)} images x {args.steps} steps x 2 "
            f"for guidance) at batch 64, {floor:.2f} s; batching cannot make a sweep faster than its UNet passes.\n\n"
            + bound.to_markdown(index=False, floatfmt=".2f"))
    print(text)
    if args.write:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text("# Sweep speed (benchmarks/sweep_speed.py)\n\n" + text + "\n")


def unet_seconds(pipe, batch: int, evaluations: int) -> float:
    """Seconds the base UNet takes for `evaluations` sample evaluations in batches of `batch` (timed on
    enough batches to cover them, after two warm-up calls), nothing else of the pipeline."""
    unet, side = pipe.unet, pipe.unet.config.sample_size
    x = torch.randn(batch, unet.config.in_channels, side, side)
    t = torch.full((batch,), 500)
    context = torch.randn(batch, pipe.tokenizer.model_max_length, unet.config.cross_attention_dim)
    calls = -(-evaluations // batch)
    with torch.no_grad():
        for _ in range(2):
            unet(x, t, encoder_hidden_states=context)
        start = time.perf_counter()
        for _ in range(calls):
            unet(x, t, encoder_hidden_states=context)
    return (time.perf_counter() - start) * evaluations / (calls * batch)


if __name__ == "__main__":
    main()
