"""Training cost per method on the embedded micro model; prints a table.

    python benchmarks/train_cost.py [--steps 40] [--batch-size 8] [--method lora ...]

Each method trains in its own process (bench.cost.train_in_subprocess, the runner's own code path),
so peak memory is that training's alone. s/step includes the first steps' warm-up; use more steps for a
steadier figure. Written to results/benchmarks/train_cost.md with --write.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from bench.config import register
from bench.cost import train_in_subprocess

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "benchmarks" / "train_cost.md"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--method", nargs="*", default=None, help="default: every conf/method/*.yaml")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    register()
    methods = args.method or sorted(f.stem for f in (ROOT / "conf" / "method").glob("*.yaml"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"method=[{','.join(methods)}]", f"train.steps={args.steps}", f"train.batch_size={args.batch_size}", f"results_dir={tmp}", "progress=false"])
        config_file = Path(tmp) / "config.yaml"
        config_file.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        for name in methods:
            cost = train_in_subprocess(config_file, name, Path(tmp) / name, Path(tmp) / f"{name}.log")
            rows.append(
                {
                    "method": name,
                    "s/step": cost.train_time_s / args.steps,
                    "peak RSS MiB" if cost.mem_kind == "cpu_peak_rss" else "peak CUDA MiB": cost.peak_mem_mib,
                    "training adds MiB": cost.peak_mem_mib - cost.baseline_mem_mib,
                    "trainable params": cost.trainable_params,
                    "artifact bytes": cost.artifact_bytes,
                }
            )
    table = pd.DataFrame(rows).set_index("method")
    text = f"Micro SD, {args.steps} steps, batch {args.batch_size} (DreamBooth adds an equal prior batch).\n\n" + table.to_markdown(floatfmt=",.3f")
    print(text)
    if args.write:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text("# Training cost (benchmarks/train_cost.py)\n\n" + text + "\n")


if __name__ == "__main__":
    main()
