"""Diversity: the mean pairwise CLIP feature distance (1 - cos) among one prompt's images over seeds.
Low values mean the model draws the same picture whatever the seed (overfitting, mode collapse)."""

from __future__ import annotations

import torch

from metrics.base import MetricInfo, SweepScoring


def score(s: SweepScoring) -> list[dict]:
    """One row per (prompt, weight) with at least two generation seeds."""
    groups: dict[tuple[str, float], list[torch.Tensor]] = {}
    for (pid, _, weight), f in s.features.items():
        groups.setdefault((pid, weight), []).append(f)
    return [{"prompt_id": pid, "weight": weight, "metric": INFO.name, "value": diversity(torch.stack(fs)), "unit": INFO.unit, "scorer": s.encoder.name}
            for (pid, weight), fs in groups.items() if len(fs) >= 2]


INFO = MetricInfo("diversity", "1-cos", True, "mean pairwise 1 - cos among a prompt's images over seeds", checked=False, score=score)


def diversity(features: torch.Tensor) -> float:
    """Mean over distinct pairs of 1 - cos, from unit features [n, d] (n >= 2)."""
    n = len(features)
    if n < 2:
        raise ValueError("diversity needs at least 2 images of the prompt (use 2 or more sweep seeds)")
    sims = features @ features.T
    return float((n * n - sims.sum()) / (n * (n - 1)))
