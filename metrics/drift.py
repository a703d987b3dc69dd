"""Drift: how far images for prompts unrelated to the concept move away from the base model's images
(same prompt, same seed), as 1 - cosine similarity of their CLIP features. 0 means untouched."""

from __future__ import annotations

import torch

from metrics.base import MetricInfo, SweepScoring


def score(s: SweepScoring) -> list[dict]:
    """Each unrelated prompt's image against the base model's image of the same prompt and seed."""
    return [s.row(k, INFO, drift(s.features[k][None], s.base_features[(s.prompts[k[0]].text, k[1])][None]).item(), s.encoder.name) for k in s.unrelated()]


INFO = MetricInfo("drift", "1-cos", False, "1 - cos(CLIP features) between adapted and base images of unrelated prompts", score=score)


def drift(adapted: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Per-image drift from unit features of the adapted and base images, paired row by row."""
    if adapted.shape != base.shape:
        raise ValueError(f"drift pairs images one to one: {tuple(adapted.shape)} vs {tuple(base.shape)}")
    return 1 - (adapted * base).sum(-1)
