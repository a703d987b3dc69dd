"""Images per second of a weight sweep: one weight at a time against several weights per batch.

    python benchmarks/sweep_speed.py [--steps 20] [--weights 8] [--write]

Uses the embedded micro model and a briefly trained artifact of each method that supports batched
weights (Textual Inversion, hypernetwork, LoRA); prints a table (results/benchmarks/sweep_speed.md with --write).
"""

from __future__ import annotations

import argparse
import os
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
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    pipe = load_pipeline({"name": "micro", "embedded": True, "dtype": "float32"}, "cpu")
    data = load_world_concept("sks_crescent", 8, 64)
    prompts = sweep_prompts(OmegaConf.create({"instance": ["{instance}"], "recontext": ["{instance} on a white background"]}), data)
    weights = [round(-1 + 2.25 * i / (args.weights - 1), 3) for i in range(args.weights)]
    rows = []
    for method in (TextualInversion(lr=2e-2), Hypernetwork(lr=2e-3), LoRA(lr=2e-3)):
        artifact = method.train(pipe, data, TrainSettings(steps=20, batch_size=4, progress=False)).artifact
        for batched in (False, True):
            cfg = OmegaConf.create({"weights": weights, "seeds": [0, 1], "steps": args.steps, "guidance": 5.0, "batch": 32, "batched": batched})
            start = time.perf_counter()
            images = sweep_method(pipe, method, artifact, data, prompts, cfg, progress=False)
            elapsed = time.perf_counter() - start
            rows.append({"method": method.name, "mode": "batched weights" if batched else "one weight at a time", "images": len(images), "seconds": elapsed, "images/s": len(images) / elapsed})
    table = pd.DataFrame(rows)
    text = f"Micro SD, {args.steps} DDIM steps, {args.weights} weights x {len(prompts)} prompts x 2 seeds, batch 32, 2 threads.\n\n" + table.to_markdown(index=False, floatfmt=".2f")
    print(text)
    if args.write:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text("# Sweep speed (benchmarks/sweep_speed.py)\n\n" + text + "\n")


if __name__ == "__main__":
    main()
