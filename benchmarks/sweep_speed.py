"""Images per second of a weight sweep: one weight at a time against several weights per batch.

    python benchmarks/sweep_speed.py [--steps 20] [--weights 8] [--write]

Uses the embedded micro model and a briefly trained artifact of each method that supports batched
weights (Textual Inversion, hypernetwork, LoRA); prints a table (results/benchmarks/sweep_speed.md with --write).

Beside it, the floor no batching can go below: the base UNet's forward passes alone, as many sample
evaluations as the sweep needs (images x steps x 2 for guidance), at the batched sweep's batch size. One
weight at a time over that floor is the largest speed-up batching weights could give on this machine,
and the UNet's samples/s by batch size shows why: on a CPU it grows little past a few dozen samples.
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
from methods.settings import TrainSettings  # noqa: E402
from methods.hypernetwork import Hypernetwork  # noqa: E402
from methods.lora import LoRA  # noqa: E402
from methods.textual_inversion import TextualInversion  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "results" / "benchmarks" / "sweep_speed.md"


def main() -> None:
    from bench.models import skip_bitsandbytes

    skip_bitsandbytes()  # a benchmark never trains with 8-bit AdamW: no bitsandbytes import, no console line about it
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
    n_images = args.weights * len(prompts) * 2  # weights x prompts x the 2 seeds
    evaluations = n_images * args.steps * 2  # x 2 for guidance
    batch = min(32, n_images)  # images per batched call, as below
    rows, floors = [], {}
    for method in (TextualInversion(lr=2e-2), Hypernetwork(lr=2e-3), LoRA(lr=2e-3)):
        artifact = method.train(pipe, data, TrainSettings(steps=20, batch_size=4, progress=False)).artifact
        times: dict[str, list[float]] = {"one weight at a time": [], "batched weights": [], "floor": []}
        # The two modes and the floor alternate, so a drift in the host's speed (large here) hits all three:
        # timed apart, a batched sweep has come out below a floor measured minutes later.
        for _ in range(args.repeats):
            for mode in times:
                if mode == "floor":
                    times[mode].append(unet_seconds(pipe, 2 * batch, evaluations))
                    continue
                start = time.perf_counter()
                cfg = OmegaConf.create({"weights": weights, "seeds": [0, 1], "steps": args.steps, "guidance": 5.0, "batch": batch, "batched": mode == "batched weights"})
                images = sweep_method(pipe, method, artifact, data, prompts, cfg, progress=False)
                times[mode].append(time.perf_counter() - start)
        assert len(images) == n_images, (len(images), n_images)
        floors[method.name] = statistics.median(times.pop("floor"))
        for mode, seconds in times.items():
            elapsed = statistics.median(seconds)
            rows.append({"method": method.name, "mode": mode, "images": n_images, "seconds": elapsed, "images/s": n_images / elapsed})
    table = pd.DataFrame(rows)
    seconds = table.pivot(index="method", columns="mode", values="seconds")
    one_at_a_time = seconds["one weight at a time"]
    floor = pd.Series(floors)
    bound = pd.DataFrame({"one weight at a time (s)": one_at_a_time, f"UNet forwards alone, batch {2 * batch} (s)": floor,
                          "largest possible speed-up": one_at_a_time / floor,
                          "batched speed-up": one_at_a_time / seconds["batched weights"],
                          "3x would need (s)": one_at_a_time / 3}).reset_index(names="method")
    # Why the floor is where it is: the UNet's samples/s hardly grows with the batch on a CPU, so putting
    # several weights' samples in one batch saves little of the UNet's own time. Batch sizes alternate too.
    per_weight = 2 * n_images // args.weights  # one weight's images, x 2 for guidance: one weight at a time's UNet batch
    sizes = sorted({per_weight, 16, 32, 64, 128, 256})
    taken: dict[int, list[float]] = {b: [] for b in sizes}
    for _ in range(args.repeats):
        for b in sizes:
            taken[b].append(unet_seconds(pipe, b, evaluations))
    by_batch = pd.DataFrame([{"UNet batch": b, "samples/s": evaluations / statistics.median(taken[b])} for b in sizes])
    by_batch[f"vs batch {per_weight}"] = by_batch["samples/s"] / by_batch.loc[by_batch["UNet batch"] == per_weight, "samples/s"].iloc[0]
    text = (f"Micro SD, {args.steps} DDIM steps, {args.weights} weights x {len(prompts)} prompts x 2 seeds, batch {batch}, 2 threads; "
            f"seconds: median of {args.repeats} alternating timings per mode.\n\n"
            + table.to_markdown(index=False, floatfmt=".2f")
            + f"\n\nThe floor: the base UNet alone for the sweep's {evaluations:,} sample evaluations ({n_images} images x {args.steps} steps x 2 "
            f"for guidance) at batch {2 * batch}, timed in turn with each method's two sweeps; batching cannot make a sweep faster than its UNet passes.\n\n"
            + bound.to_markdown(index=False, floatfmt=".2f")
            + f"\n\nThe base UNet's throughput by batch size (one weight at a time runs it at batch {per_weight}: "
            f"{n_images // args.weights} images x 2 for guidance); median of {args.repeats}:\n\n"
            + by_batch.to_markdown(index=False, floatfmt=("g", ".1f", ".2f")))
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
