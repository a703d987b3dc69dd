"""Degenerate images: blank or uniform (what a NaN or collapsed generation decodes to), judged by pixels.

An image is blank when fewer than `MIN_SHARE` of its pixels differ from its median colour by more than
`MIN_DISTANCE` RGB units: nothing was drawn on it. No learned model is involved, so the count holds for
any base model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from metrics.base import MetricInfo, SweepScoring


def score(s: SweepScoring) -> list[dict]:
    return [s.row(k, INFO, value, "pixels") for k, value in zip(s.keys, blank([s.images[k] for k in s.keys]))]


INFO = MetricInfo("blank", "share", False, "share of blank or uniform images (under 1 % of pixels away from the median colour)",
                  title="blank images", measured_by="pixels", checked=False, score=score)
MIN_DISTANCE = 40.0  # RGB distance from the median colour that counts a pixel as drawn
MIN_SHARE = 0.01


def is_blank(image: Image.Image) -> bool:
    arr = np.asarray(image.convert("RGB"), np.float32)
    if not np.isfinite(arr).all():
        return True
    median = np.median(arr.reshape(-1, 3), axis=0)
    return float((np.linalg.norm(arr - median, axis=-1) > MIN_DISTANCE).mean()) < MIN_SHARE


def blank(images: Sequence[Image.Image]) -> list[float]:
    """Per image: 1.0 when blank, else 0.0."""
    return [float(is_blank(im)) for im in images]
