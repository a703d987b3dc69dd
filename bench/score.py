"""Turn a method's sweep images into tidy metric rows (per image, per prompt and weight, per weight)."""

from __future__ import annotations

from collections import defaultdict

import torch
from PIL import Image

from bench.clip import ClipEncoder
from bench.data import ConceptData
from bench.sweep import SweepPrompt
from metrics import blank, clip_score, cmmd, diversity, drift, fd, presence

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
) -> list[dict]:
    """Rows for one run's sweep. `base` holds the base model's images by (prompt text, seed) (drift);
    `weight_zero_diffs` the largest pixel difference of each weight-0 image from the base model's;
    `oracle` (bench.oracle.Oracle) judges concept presence when the concept is one of the micro world's."""
    by_id = {p.prompt_id: p for p in prompts}
    keys = sorted(images)
    encoder.clear()  # the same features whichever runs this process scored before
    feats = dict(zip(keys, encoder.images([images[k] for k in keys])))
    instance_feats = encoder.images(data.images)
    unrelated = sorted({(p.text, seed) for (pid, seed, _) in keys for p in [by_id[pid]] if p.kind == "unrelated"})
    base_feats = dict(zip(unrelated, encoder.images([base[k] for k in unrelated])))
    space = encoder.name
    rows: list[dict] = []
    scoring = [by_id[pid].scoring_text(data) for pid, _, _ in keys]
    clip_t_all = dict(zip(keys, clip_score.clip_t(encoder, [images[k] for k in keys], scoring).tolist()))
    for key in keys:
        pid, seed, weight = key
        p = by_id[pid]
        ident = {"prompt_id": pid, "seed": seed, "weight": weight, "scorer": space}
        if p.kind == "unrelated":
            reference = base_feats[(p.text, seed)][None]
            rows.append({**ident, "metric": drift.INFO.name, "value": drift.drift(feats[key][None], reference).item(), "unit": drift.INFO.unit})
        else:
            rows.append({**ident, "metric": clip_score.CLIP_T.name, "value": clip_t_all[key], "unit": clip_score.CLIP_T.unit})
            ci = (feats[key] @ instance_feats.T).mean().item()
            rows.append({**ident, "metric": clip_score.CLIP_I.name, "value": ci, "unit": clip_score.CLIP_I.unit})
    for key, value in zip(keys, blank.blank([images[k] for k in keys])):
        pid, seed, weight = key
        rows.append({"prompt_id": pid, "seed": seed, "weight": weight, "metric": blank.INFO.name, "value": value, "unit": blank.INFO.unit, "scorer": "pixels"})
    if oracle is not None and data.world_concept is not None:
        subject = [k for k in keys if by_id[k[0]].kind != "unrelated"]
        for (pid, seed, weight), value in zip(subject, presence.presence(oracle, [images[k] for k in subject], data.world_concept)):
            rows.append({"prompt_id": pid, "seed": seed, "weight": weight, "metric": presence.INFO.name, "value": value, "unit": presence.INFO.unit, "scorer": "oracle"})
    for (pid, seed), diff in sorted(weight_zero_diffs.items()):
        rows.append({"prompt_id": pid, "seed": seed, "weight": 0.0, "metric": "base_pixel_diff", "value": float(diff), "unit": "px", "scorer": "pixels"})

    groups: dict[tuple[str, float], list[torch.Tensor]] = defaultdict(list)
    for (pid, seed, weight), f in feats.items():
        groups[(pid, weight)].append(f)
    for (pid, weight), fs in groups.items():
        if len(fs) >= 2:
            rows.append({"prompt_id": pid, "weight": weight, "metric": diversity.INFO.name, "value": diversity.diversity(torch.stack(fs)), "unit": diversity.INFO.unit, "scorer": space})

    fd_info = fd.info(encoder.name)
    for weight in sorted({w for _, _, w in keys}):
        subject = [k for k in keys if k[2] == weight and by_id[k[0]].kind != "unrelated"]
        if len(subject) >= 2 and len(data.images) >= 2:
            value = fd.frechet_distance(encoder, [images[k] for k in subject], data.images)
            rows.append({"weight": weight, "metric": fd_info.name, "value": value, "unit": fd_info.unit, "scorer": space})
            rows.append({"weight": weight, "metric": cmmd.INFO.name, "value": cmmd.cmmd(torch.stack([feats[k] for k in subject]), instance_feats), "unit": cmmd.INFO.unit, "scorer": space})
            if inception:
                value = fd.inception_fid([images[k] for k in subject], data.images)
                rows.append({"weight": weight, "metric": "fid_inception", "value": value, "unit": "fd", "scorer": "inception"})
    return rows
