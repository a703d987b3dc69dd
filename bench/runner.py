"""The pipeline, stage by stage: config -> model -> concept data -> images -> results directory."""

from __future__ import annotations

import json
import logging
import platform
import subprocess
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from bench.data import load_concept
from bench.images import generate, grid
from bench.io import atomic_path, atomic_write_text
from bench.models import load_pipeline

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> int:
    """Run every stage; returns the process exit code."""
    results = Path(cfg.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 8)))
    write_metadata(cfg, results / "run.json")
    concept = load_concept(cfg.data, cfg.model.resolution)
    pipe = load_pipeline(cfg.model, cfg.device)
    out = results / "preview" / f"{concept.name}_base.png"
    if out.exists():
        log.info("reusing %s", out)
    else:
        seeds = [cfg.seed + i for i in range(4)]
        prompts = [concept.class_prompt] * 4 + [concept.instance_prompt] * 4
        images = concept.images[:4] + generate(pipe, prompts, seeds * 2)
        with atomic_path(out) as tmp:
            grid(images, cols=4, labels=["instance"] * 4 + prompts, scale=2).save(tmp, format="PNG")
    log.info("preview written to %s", out)
    print(f"adapterbench: base-model preview of concept {concept.name!r}: {out}")
    return 0


def write_metadata(cfg: DictConfig, path: Path) -> None:
    """Resolved config, git commit, package versions and device: enough to rerun or compare a run."""
    import diffusers
    import peft
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    meta = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "git_commit": commit,
        "python": platform.python_version(),
        "packages": {m.__name__: m.__version__ for m in (torch, diffusers, transformers, peft)},
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
    }
    atomic_write_text(path, json.dumps(meta, indent=2))
