"""Fréchet distance between two image sets in a named feature space.

Computed by torchmetrics' `FrechetInceptionDistance` with a custom `feature=` module, so no Inception
weights are needed: `fd_microclip` uses micro CLIP image features (the default). `fid_inception` is the
classic FID, available when torchmetrics' Inception weights are present locally.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from bench.clip import CachedImageEncoder
from metrics.base import MetricInfo, SweepScoring


def info(space: str) -> MetricInfo:
    """The Fréchet distance in one feature space (`fd_<space>`, or the classic `fid_inception`); a DINO
    space's name says "dino" (metrics.dino.load_dino names it so)."""
    name = "fid_inception" if space == "inception" else f"fd_{space}"
    measured_by = "inception" if space == "inception" else ("dino" if "dino" in space.lower() else "clip")
    return MetricInfo(name, "fd", False, f"Fréchet distance between generated and instance images in {space} features",
                      measured_by=measured_by, proxy=True)


def score(s: SweepScoring) -> list[dict]:
    """One set-level row per weight in the run's CLIP space, its DINO space (`metrics.dino`) and
    Inception's (when asked for)."""
    rows = []
    space = info(s.encoder.name)
    for weight in s.weights():
        subject = [s.images[k] for k in s.subject(weight)]
        if len(subject) >= 2 and len(s.data.images) >= 2:
            rows.append({"weight": weight, "metric": space.name, "value": frechet_distance(s.encoder, subject, s.data.images), "unit": space.unit, "scorer": s.encoder.name})
            if s.dino is not None:
                dino = info(s.dino.name)
                value = frechet_distance(s.dino, subject, s.data.images)
                rows.append({"weight": weight, "metric": dino.name, "value": value, "unit": dino.unit, "scorer": s.dino.name})
            if s.inception:
                rows.append({"weight": weight, "metric": "fid_inception", "value": inception_fid(subject, s.data.images), "unit": "fd", "scorer": "inception"})
    return rows


# The family's entry in metrics.REGISTRY: scoring writes fd_<the run's CLIP space> (and fid_inception).
FAMILY = MetricInfo("fd_<space>", "fd", False, "Fréchet distance between generated and instance images in a feature space", proxy=True, score=score)


class ClipFeatures(torch.nn.Module):
    """torchmetrics feature extractor: uint8 image batch [N, 3, H, W] -> image features [N, D] of a
    `bench.clip.CachedImageEncoder` (CLIP, DINO)."""

    def __init__(self, encoder: CachedImageEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_features = encoder.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = [Image.fromarray(img.permute(1, 2, 0).cpu().numpy()) for img in x]
        return self.encoder.images(images).double()


def to_uint8(images: Sequence[Image.Image]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1) for im in images])


def frechet_distance(encoder: CachedImageEncoder, generated: Sequence[Image.Image], reference: Sequence[Image.Image]) -> float:
    """FD between the two sets in `encoder`'s features (each needs at least 2 images; few images give a noisy estimate)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    return _compute(FrechetInceptionDistance(feature=ClipFeatures(encoder), normalize=False), generated, reference)


def _compute(metric, generated: Sequence[Image.Image], reference: Sequence[Image.Image]) -> float:
    """Feed both sets to a torchmetrics Fréchet metric (reference as 'real') and read the distance."""
    if len(generated) < 2 or len(reference) < 2:
        raise ValueError(f"Fréchet distance needs at least 2 images per set, got {len(generated)} and {len(reference)}")
    metric.update(to_uint8(reference), real=True)
    metric.update(to_uint8(generated), real=False)
    return float(metric.compute())


class InceptionUnavailable(RuntimeError):
    """Inception weights (torchmetrics / torch-fidelity) are not available on this machine."""


def inception_metric():
    """torchmetrics' Inception FID, or InceptionUnavailable naming the config key."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    try:
        return FrechetInceptionDistance(feature=2048)
    except Exception as e:  # missing package, or weights that would have to be downloaded
        raise InceptionUnavailable(f"metrics.inception: Inception weights are not available locally ({type(e).__name__}: {e})") from None


def inception_fid(generated: Sequence[Image.Image], reference: Sequence[Image.Image]) -> float:
    """Classic FID in Inception-v3 pool features; needs torch-fidelity's weights in the local torch cache."""
    return _compute(inception_metric(), generated, reference)
