"""CLIP-T (prompt-image alignment) and CLIP-I (similarity to the subject's instance images).

CLIP-T follows torchmetrics' CLIPScore convention, `100 * max(cos(image, text), 0)`; CLIP-I is the
DreamBooth paper's: the mean cosine similarity between a generated image and each real instance image.
Both work in any `bench.clip.ClipEncoder` feature space (micro CLIP by default).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from bench.clip import ClipEncoder
from metrics.base import MetricInfo, SweepScoring


def score_clip_t(s: SweepScoring) -> list[dict]:
    """Each subject image against its prompt without the rare token (`SweepPrompt.scoring_text`). Encoded
    for every image of the sweep in one call, so a value does not depend on which images are scored."""
    values = dict(zip(s.keys, clip_t(s.encoder, [s.images[k] for k in s.keys], [s.prompts[k[0]].scoring_text(s.data) for k in s.keys]).tolist()))
    return [s.row(k, CLIP_T, values[k], s.encoder.name) for k in s.subject()]


def score_clip_i(s: SweepScoring) -> list[dict]:
    """Each subject image's mean cosine similarity to the instance images."""
    return [s.row(k, CLIP_I, (s.features[k] @ s.instance_features.T).mean().item(), s.encoder.name) for k in s.subject()]


CLIP_T = MetricInfo("clip_t", "score", True, "100 * max(cos(image, prompt), 0) in CLIP space", title="CLIP-T", proxy=True, score=score_clip_t)
CLIP_I = MetricInfo("clip_i", "cos", True, "mean cosine similarity to the instance images in CLIP space", title="CLIP-I", proxy=True, score=score_clip_i)


def clip_t(encoder: ClipEncoder, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
    """Per-image CLIP-T against its own prompt."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    cos = (encoder.images(images) * encoder.texts(prompts)).sum(-1)
    return 100 * cos.clamp(min=0)


def clip_i(encoder: ClipEncoder, images: Sequence[Image.Image], references: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
    """Per-image mean cosine similarity to the reference images (or to precomputed unit features)."""
    ref = references if isinstance(references, torch.Tensor) else encoder.images(references)
    return (encoder.images(images) @ ref.T).mean(dim=1)
