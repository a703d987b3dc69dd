"""Base-model quality of the embedded micro SD and micro CLIP; prints a table.

    python benchmarks/base_quality.py            # print
    python benchmarks/base_quality.py --write    # also update results/benchmarks/base_quality.md
    python benchmarks/base_quality.py --model results/pretrain_work/sd_phase2_snapshots/step3000

Colour and background are judged by pixels (no learned model), shape by micro CLIP zero-shot.
Targets (issue 2): colour >= 90 %, shape >= 80 %; micro CLIP zero-shot shape >= 95 %, colour >= 98 %.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.clip import load_encoder  # noqa: E402
from bench.models import load_pipeline  # noqa: E402
from bench.quality import base_model_quality, clip_zero_shot_accuracy  # noqa: E402

TARGETS = {"colour": 0.90, "shape": 0.80, "background": None, "clip_shape_accuracy": 0.95, "clip_colour_accuracy": 0.98}
OUT = Path(__file__).resolve().parents[1] / "results" / "benchmarks" / "base_quality.md"


def main() -> None:
    from bench.models import skip_bitsandbytes

    skip_bitsandbytes()  # a benchmark never trains with 8-bit AdamW: no bitsandbytes import, no console line about it
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--model", type=Path, help="a micro SD folder other than the shipped one (e.g. a pretraining snapshot)")
    p.add_argument("--write", action="store_true", help=f"write the table to {OUT}")
    args = p.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    t0 = time.time()
    encoder = load_encoder("micro")
    if args.write and args.model:
        p.error("--write records the shipped model only; drop --model")
    pipe = load_pipeline({"name": "micro", "embedded": args.model is None, "path": args.model, "dtype": "float32"}, "cpu")
    df = base_model_quality(pipe, encoder, args.seeds, args.steps, args.guidance)
    figures = {
        "colour": df.colour_ok.mean(),
        "shape": df.shape_ok.mean(),
        "background": df.background_ok.mean(),
        **clip_zero_shot_accuracy(encoder),
    }
    lines = [
        f"Micro SD: {len(df)} images ({df.prompt.nunique()} captions x seeds {args.seeds}), "
        f"{args.steps} DDIM steps, guidance {args.guidance}. Micro CLIP: 400 fresh world images.",
        "",
        "| measure | judged by | share correct | target | met |",
        "|---|---|---|---|---|",
    ]
    judges = {"colour": "pixels", "shape": "micro CLIP", "background": "pixels", "clip_shape_accuracy": "labels", "clip_colour_accuracy": "labels"}
    for key, value in figures.items():
        target = TARGETS[key]
        met = "" if target is None else ("yes" if value >= target else "no")
        lines.append(f"| {key} | {judges[key]} | {value:.3f} | {'' if target is None else f'{target:.2f}'} | {met} |")
    per_colour = df.groupby("colour")[["colour_ok", "shape_ok"]].mean().round(3)
    per_shape = df.groupby("shape")[["colour_ok", "shape_ok"]].mean().round(3)
    lines += ["", "Per colour:", "", per_colour.to_markdown(), "", "Per shape:", "", per_shape.to_markdown(), "", f"({time.time() - t0:.0f} s)"]
    text = "\n".join(lines)
    print(text)
    if args.write:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text("# Base-model quality (benchmarks/base_quality.py)\n\n" + text + "\n")


if __name__ == "__main__":
    main()
