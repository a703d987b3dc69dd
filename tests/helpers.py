"""Assertions several test files share."""

from __future__ import annotations

import numpy as np

# CPU matrix and attention kernels block their sums by batch size and thread count, so the same image made in
# another batch layout differs in the last float bits; guidance amplifies that over the denoising steps into
# a pixel level here and there, at one thread into two or three on a few pixels. A real fault (a sample given
# another sample's strength, a layer left at full strength) moves most pixels by tens or hundreds of levels.
ROUNDING_MAX_LEVELS = 3
ROUNDING_MAX_SHARE_OFF_BY_MORE_THAN_ONE = 0.01


def assert_same_image_up_to_rounding(a, b, what) -> None:
    """`a` and `b` (PIL images or arrays of 8-bit levels) are one image made in two batch layouts."""
    diff = np.abs(np.asarray(a).astype(np.int16) - np.asarray(b).astype(np.int16))
    share = float((diff > 1).mean())
    assert diff.max() <= ROUNDING_MAX_LEVELS and share <= ROUNDING_MAX_SHARE_OFF_BY_MORE_THAN_ONE, (
        f"{what}: {diff.max()} levels apart at most, {share:.2%} of values more than one level apart "
        f"(rounding allows {ROUNDING_MAX_LEVELS} and {ROUNDING_MAX_SHARE_OFF_BY_MORE_THAN_ONE:.0%})")
