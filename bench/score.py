"""Turn a method's sweep images into tidy metric rows (per image, per prompt and weight, per weight)."""

from __future__ import annotations


from PIL import Image

from bench.clip import ClipEncoder
from bench.data import ConceptData
from bench.sweep import SweepPrompt
from metrics import REGISTRY
from metrics.base import SweepScoring

Images = dict[tuple[str, int, float], Image.Image]


def sweep_rows(
    encoder: ClipEncoder,
    data: ConceptData,
    prompts: list[SweepPrompt],
    images: Images,
    base: dict[tuple[str, int], Image.Image],
    weight_zero_diffs: dict[tuple[str, int], int],
    inception: bool = False,
    oracle=None,
    dino=None,
) -> list[dict]:
    """Rows for one run's sweep: every registered metric's (`metrics.REGISTRY`), then the weight-0 check.
    `base` holds the base model's images by (prompt text, seed) (drift); `weight_zero_diffs` the largest
    pixel difference of each weight-0 image from the base model's; `oracle` (bench.oracle.Oracle) judges
    concept presence when the concept is one of the micro world's; `dino` (metrics.dino.DinoEncoder) adds
    DINO-I, DINO drift and FD in DINO space."""
    sweep = SweepScoring(encoder, data, {p.prompt_id: p for p in prompts}, images, base, oracle=oracle, inception=inception, dino=dino)
    rows = [row for info in REGISTRY if info.score is not None for row in info.score(sweep)]
    rows += [{"prompt_id": pid, "seed": seed, "weight": 0.0, "metric": "base_pixel_diff", "value": float(diff), "unit": "px", "scorer": "pixels"}
             for (pid, seed), diff in sorted(weight_zero_diffs.items())]
    return rows
