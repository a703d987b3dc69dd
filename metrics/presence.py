"""Concept presence: whether the micro world's oracle (bench.oracle) sees the concept in an image.

Ground truth rather than similarity: the oracle was trained on renders of every held-out concept, so a
pink blob does not pass for a pink crescent. Per image 1 or 0; averaged, the share of images showing
the concept. World concepts only (a user's folder has no oracle).
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from metrics.base import MetricInfo, SweepScoring


def score(s: SweepScoring) -> list[dict]:
    """Per subject image 1 or 0, where an oracle judges this concept (the micro world's)."""
    if s.oracle is None or s.data.world_concept is None:
        return []
    keys = s.subject()
    return [s.row(k, INFO, value, "oracle") for k, value in zip(keys, presence(s.oracle, [s.images[k] for k in keys], s.data.world_concept))]


INFO = MetricInfo("presence", "share", True, "share of images in which the micro world's oracle sees the concept (its shape or fill)",
                  title="presence (oracle)", measured_by="oracle", score=score)


def presence(oracle, images: Sequence[Image.Image], concept: str) -> list[float]:
    """Per image: 1.0 when the oracle sees world concept `concept`, else 0.0."""
    return [float(p) for p in oracle.present(list(images), concept)]
