"""How well the base model follows world prompts, judged without trusting the model itself:
colour and background by pixels (`world.judge_colours`), shape by micro CLIP zero-shot."""

from __future__ import annotations

import itertools
import random

import pandas as pd

from bench import world
from bench.clip import ClipEncoder
from bench.images import generate


def clip_zero_shot_accuracy(encoder: ClipEncoder, n: int = 400, seed: int = 12345) -> dict[str, float]:
    """Micro CLIP's zero-shot shape and colour accuracy on fresh solid-filled world images (a seed not
    trained on; a striped image has two colours)."""
    samples = [s for s in (world.sample(i, seed) for i in range(n * 3)) if s.colour2 is None][:n]
    images = [s.image for s in samples]
    shapes = encoder.classify(images, list(world.SHAPES), "a {}")
    colours = encoder.classify(images, list(world.COLOURS), "a {} shape")
    return {
        "clip_shape_accuracy": sum(p == s.shape for p, s in zip(shapes, samples)) / n,
        "clip_colour_accuracy": sum(p == s.colour for p, s in zip(colours, samples)) / n,
    }


def world_prompts(seeds: list[int]) -> list[dict]:
    """Every shape x colour caption at every seed, the background drawn per (shape, colour, seed)."""
    rows = []
    backgrounds = list(world.BACKGROUNDS)
    for (shape, colour), seed in itertools.product(itertools.product(world.SHAPES, world.COLOURS), seeds):
        background = random.Random(f"{shape}:{colour}:{seed}").choice(backgrounds)
        rows.append({"shape": shape, "colour": colour, "background": background, "seed": seed, "prompt": world.caption(shape, colour, background)})
    return rows


def base_model_quality(pipe, encoder: ClipEncoder, seeds: list[int], steps: int = 20, guidance: float = 5.0) -> pd.DataFrame:
    """One row per generated image of every shape x colour caption (backgrounds rotate over seeds)."""
    rows = world_prompts(seeds)
    images = generate(pipe, [r["prompt"] for r in rows], [r["seed"] for r in rows], steps, guidance)
    judged_shapes = encoder.classify(images, list(world.SHAPES), "a {}")
    for row, image, judged_shape in zip(rows, images, judged_shapes):
        judged_colour, judged_background = world.judge_colours(image)
        row.update(
            colour_ok=judged_colour == row["colour"],
            background_ok=judged_background == row["background"],
            shape_ok=judged_shape == row["shape"],
        )
    return pd.DataFrame(rows)
