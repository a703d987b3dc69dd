"""Concept presence: whether the micro world's oracle (bench.oracle) sees the concept in an image.

Ground truth rather than similarity: the oracle was trained on renders of every held-out concept, so a
pink blob does not pass for a pink crescent. Per image 1 or 0; averaged, the share of images showing
the concept. World concepts only (a user's folder has no oracle).
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from metrics.base import MetricInfo

INFO = MetricInfo("presence", "share", True, "share of images in which the micro world's oracle sees the concept (its shape or fill)")


def presence(oracle, images: Sequence[Image.Image], concept: str) -> list[float]:
    """Per image: 1.0 when the oracle sees world concept `concept`, else 0.0."""
    return [float(p) for p in oracle.present(list(images), concept)]
