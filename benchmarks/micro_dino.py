"""What micro DINO's features see, without the labels it never had: nearest-neighbour agreement of shape,
colour and fill on fresh world renders, beside the same backbone untrained and micro CLIP's image tower.

    python benchmarks/micro_dino.py [--write]

Renders of the pretraining world (`world.sample`, a seed no model trained on), solid and striped fills;
each image's nearest other image by cosine of the features; the share whose nearest neighbour has the same
shape, the same (first) colour, the same fill kind. Chance: 1/10 shapes, about 1/6 colours, about 1/2 fills.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def nearest_agreement(features: np.ndarray, samples) -> dict[str, float]:
    sims = features @ features.T
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.argmax(1)
    return {
        "shape": float(np.mean([samples[i].shape == samples[j].shape for i, j in enumerate(nearest)])),
        "colour": float(np.mean([samples[i].colour == samples[j].colour for i, j in enumerate(nearest)])),
        "fill": float(np.mean([(samples[i].colour2 is None) == (samples[j].colour2 is None) for i, j in enumerate(nearest)])),
    }


def main(argv: list[str] | None = None) -> None:
    from bench.models import skip_bitsandbytes

    skip_bitsandbytes()  # a benchmark never trains with 8-bit AdamW: no bitsandbytes import, no console line about it
    import pandas as pd
    import torch
    from transformers import Dinov2Model

    from bench import world
    from bench.clip import load_encoder
    from bench.io import atomic_write_text
    from metrics.dino import DinoEncoder, load_dino

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--write", action="store_true", help="write results/benchmarks/micro_dino.md")
    p.add_argument("--model", default="micro", help="the DINO to judge: 'micro' (bench/zoo/micro_dino) or local-dir:<folder> (a build elsewhere)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    samples = [world.sample(i, seed=4242) for i in range(args.n)]
    images = [s.image for s in samples]
    micro = load_dino(args.model)
    untrained = DinoEncoder(Dinov2Model(micro.model.config), micro.processor, "untrained")
    rows = []
    for name, encoder in [("micro DINO (bench/zoo/micro_dino)" if args.model == "micro" else args.model, micro), ("the same backbone, untrained", untrained), ("micro CLIP image tower", load_encoder("micro"))]:
        rows.append({"features": name, **nearest_agreement(encoder.images(images).numpy().astype(np.float64), samples)})
    table = pd.DataFrame(rows).set_index("features")
    text = ("# Micro DINO: what its features see\n\n" + __doc__.split("\n\n", 1)[1].split("\n\n", 1)[1].replace("\n", " ").strip()
            + f" {args.n} renders. Made by `python benchmarks/micro_dino.py --write`.\n\n"
            + table.to_markdown(floatfmt=".3f") + "\n")
    print(text)
    if args.write:
        atomic_write_text(ROOT / "results" / "benchmarks" / "micro_dino.md", text)


if __name__ == "__main__":
    main()
