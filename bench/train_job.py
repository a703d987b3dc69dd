"""Train one method in this process and write its artifact and measured cost.

    python -m bench.train_job --config RUN_CONFIG.yaml --method lora --out DIR

Run by the runner as a subprocess (see bench.cost); writes DIR/cost.json, or DIR/error.json and exit 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from omegaconf import OmegaConf  # noqa: E402

from bench.io import atomic_write_text  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        cost = run_job(OmegaConf.load(args.config), args.method, args.out)
    except Exception as e:  # recorded, then the runner carries on with the other methods
        atomic_write_text(args.out / "error.json", json.dumps({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}))
        print(f"train_job {args.method} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    from bench.cost import cost_to_json

    atomic_write_text(args.out / "cost.json", cost_to_json(cost))
    return 0


def run_job(cfg, method_name: str, out: Path):
    import torch

    from bench.cost import measure
    from bench.data import load_concept
    from bench.models import load_pipeline, quiet_libraries
    from methods import build_method
    from methods.base import TrainSettings

    quiet_libraries()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    method = build_method(cfg, method_name)
    settings = TrainSettings.from_config(cfg)
    data = load_concept(cfg.data, int(cfg.model.resolution))
    pipe = load_pipeline(cfg.model, cfg.device)
    _, cost = measure(lambda: method.train(pipe, data, settings), lambda artifact: method.save(artifact, out / "artifact"), pipe.unet.device)
    return cost


if __name__ == "__main__":
    sys.exit(main())
