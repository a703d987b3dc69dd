"""Training cost per method on the embedded micro model; prints a table.

    python benchmarks/train_cost.py [--steps 150] [--batch-size 4] [--method lora ...] [--threads 1] [--write]

Each method trains through `bench.cost.measure_training`, the code the runner measures every run with,
in one process that loaded the model once (as a comparison's workers do). Training memory is the run's
own tensor peak on the CPU (CUDA: max_memory_allocated); the process's peak RSS is beside it, reset per
run. s/step is the steady rate after the memory probe's first steps. Written to
results/benchmarks/train_cost.md with --write.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from bench.config import register  # noqa: E402

OUT = ROOT / "results" / "benchmarks" / "train_cost.md"


def main() -> None:
    from bench.models import skip_bitsandbytes

    skip_bitsandbytes()  # a benchmark never trains with 8-bit AdamW: no bitsandbytes import, no console line about it
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--method", nargs="*", default=None, help="default: every conf/method/*.yaml")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    register()
    from bench.cost import measure_training
    from bench.data import load_world_concept
    from bench.models import load_pipeline
    from methods import build_method
    from methods.settings import TrainSettings

    methods = args.method or sorted(f.stem for f in (ROOT / "conf" / "method").glob("*.yaml"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"method=[{','.join(methods)}]", f"train.steps={args.steps}", f"train.batch_size={args.batch_size}", f"results_dir={tmp}", "progress=false"])
        pipe = load_pipeline(cfg.model, "cpu")
        concept = load_world_concept("sks_crescent", 8, int(cfg.model.resolution))
        for name in methods:
            method = build_method(cfg, name)
            settings = TrainSettings.from_config(cfg, 0)
            method.generate_inputs(pipe, concept, settings)  # class images: timed apart, not here
            _, cost = measure_training(method, pipe, concept, settings, Path(tmp) / name)
            rows.append({
                "method": name,
                "s/step": 1 / cost.steps_per_s,
                f"training memory MiB ({cost.mem_kind})": cost.peak_mem_mib,
                "of which model weights MiB": cost.model_mem_mib,
                "process peak RSS MiB": cost.process_rss_peak_mib,
                "trainable params": cost.trainable_params,
                "artifact bytes": cost.artifact_bytes,
            })
    table = pd.DataFrame(rows).set_index("method")
    text = (f"Micro SD, {args.steps} steps, batch {args.batch_size} (DreamBooth adds an equal prior batch), "
            f"{args.threads} thread(s).\n\n" + table.to_markdown(floatfmt=",.3f"))
    print(text)
    if args.write:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text("# Training cost (benchmarks/train_cost.py)\n\n" + text + "\n")


if __name__ == "__main__":
    main()
