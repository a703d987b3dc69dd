"""Turn a method's sweep images into tidy metric rows (per image, per prompt and weight, per weight)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from bench.clip import ClipEncoder
from bench.data import ConceptData
from bench.sweep import SweepPrompt
from metrics import clip_score, cmmd, diversity, drift, fd

Images = dict[tuple[str, int, float], Image.Image]


def sweep_rows(
    encoder: ClipEncoder,
    data: ConceptData,
    prompts: list[SweepPrompt],
    images: Images,
    base: dict[tuple[str, int], Image.Image],
    base_equivalent: Callable[[str], str],
    inception: bool = False,
) -> list[dict]:
    """Rows for one method's sweep. `base` holds the base model's images by (prompt text, seed);
    `base_equivalent(text)` is the base-model prompt that weight 0 must reproduce."""
    by_id = {p.prompt_id: p for p in prompts}
    keys = sorted(images)
    feats = dict(zip(keys, encoder.images([images[k] for k in keys])))
    instance_feats = encoder.images(data.images)
    base_feats = dict(zip(base, encoder.images(list(base.values()))))
    rows: list[dict] = []
    scoring = [by_id[pid].scoring_text(data) for pid, _, _ in keys]
    clip_t_all = dict(zip(keys, clip_score.clip_t(encoder, [images[k] for k in keys], scoring).tolist()))
    for key in keys:
        pid, seed, weight = key
        p = by_id[pid]
        ident = {"prompt_id": pid, "seed": seed, "weight": weight}
        if p.kind == "unrelated":
            d = drift.drift(feats[key][None], base_feats[(p.text, seed)][None]).item()
            rows.append({**ident, "metric": drift.INFO.name, "value": d, "unit": drift.INFO.unit})
        else:
            rows.append({**ident, "metric": clip_score.CLIP_T.name, "value": clip_t_all[key], "unit": clip_score.CLIP_T.unit})
            ci = (feats[key] @ instance_feats.T).mean().item()
            rows.append({**ident, "metric": clip_score.CLIP_I.name, "value": ci, "unit": clip_score.CLIP_I.unit})
        if weight == 0:
            # Weight 0 must be the base model. Bit-exact only for the same batch layout: CPU matrix
            # kernels may round differently for another batch size, so this records the largest
            # pixel difference (0-255) from the base model's image of the same prompt and seed.
            reference = base[(base_equivalent(p.text), seed)]
            diff = np.abs(np.asarray(images[key], dtype=np.int16) - np.asarray(reference, dtype=np.int16)).max()
            rows.append({**ident, "metric": "base_pixel_diff", "value": float(diff), "unit": "px"})

    groups: dict[tuple[str, float], list[torch.Tensor]] = defaultdict(list)
    for (pid, seed, weight), f in feats.items():
        groups[(pid, weight)].append(f)
    for (pid, weight), fs in groups.items():
        if len(fs) >= 2:
            rows.append({"prompt_id": pid, "weight": weight, "metric": diversity.INFO.name, "value": diversity.diversity(torch.stack(fs)), "unit": diversity.INFO.unit})

    fd_info = fd.info(encoder.name)
    for weight in sorted({w for _, _, w in keys}):
        subject = [k for k in keys if k[2] == weight and by_id[k[0]].kind != "unrelated"]
        if len(subject) >= 2 and len(data.images) >= 2:
            value = fd.frechet_distance(encoder, [images[k] for k in subject], data.images)
            rows.append({"weight": weight, "metric": fd_info.name, "value": value, "unit": fd_info.unit})
            rows.append({"weight": weight, "metric": cmmd.INFO.name, "value": cmmd.cmmd(torch.stack([feats[k] for k in subject]), instance_feats), "unit": cmmd.INFO.unit})
            if inception:
                value = fd.inception_fid([images[k] for k in subject], data.images)
                rows.append({"weight": weight, "metric": "fid_inception", "value": value, "unit": "fd"})
    return rows
