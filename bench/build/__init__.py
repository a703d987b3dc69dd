"""Build steps: training the embedded micro models (`python -m bench.build.pretrain`: micro CLIP, VAE,
micro SD), the oracle (`python -m bench.build.oracle`) and micro DINO's recipe (`python -m bench.build.dino`).
Each runs once, on CPU, and its outputs are committed under bench/zoo/; nothing at run time imports them."""

from __future__ import annotations

import argparse
from pathlib import Path


def trainer_arguments(description: str, out: Path, n_images: int, steps: int) -> argparse.ArgumentParser:
    """The options every single-model build step takes: where to write, how many renders, steps, seed, threads."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", type=Path, default=out)
    p.add_argument("--n-images", type=int, default=n_images)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    return p


def start(args: argparse.Namespace) -> None:
    """Log with times and train on `--threads` threads."""
    import logging

    import torch

    from bench.models import skip_bitsandbytes

    skip_bitsandbytes()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
