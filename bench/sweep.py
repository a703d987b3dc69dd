"""Fixed-seed weight sweeps: the same prompts and seeds at every strength, for every method.

A (prompt, seed) pair starts from the same initial noise for every method and weight (bench.images
draws it from the seed alone), so images differ only by what the adapter does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from bench.data import ConceptData
from bench.images import generate

log = logging.getLogger(__name__)
KINDS = ("instance", "recontext", "unrelated")


class SweepError(RuntimeError):
    """A sweep that cannot be trusted, e.g. images that do not change with weight."""


@dataclass(frozen=True)
class SweepPrompt:
    prompt_id: str
    kind: str  # instance | recontext | unrelated
    text: str  # as a user writes it, with the concept's token

    def scoring_text(self, data: ConceptData) -> str:
        """The prompt CLIP-T scores against: without the rare token, which CLIP does not know."""
        return " ".join(w for w in self.text.split() if w != data.token)


def sweep_prompts(cfg, data: ConceptData) -> list[SweepPrompt]:
    """The sweep's prompt sets; templates may use {instance}, {token} and {class_word}."""
    out = []
    fields = {"instance": data.instance_prompt, "token": data.token, "class_word": data.class_word}
    for kind in KINDS:
        for i, template in enumerate(cfg.get(kind) or []):
            try:
                text = str(template).format(**fields)
            except KeyError as e:
                raise SweepError(f"sweep.{kind}[{i}]: unknown placeholder {e} in {template!r}; use {{instance}}, {{token}} or {{class_word}}") from None
            out.append(SweepPrompt(f"{kind}_{i}", kind, text))
    if not any(p.kind != "unrelated" for p in out):
        raise SweepError("sweep.instance: at least one instance or recontext prompt is needed")
    return out


def image_path(images_dir: Path, method: str, prompt_id: str, seed: int, weight: float | None) -> Path:
    """Names say method, prompt, seed and weight, e.g. images/lora/instance_0_seed1_w+0.50.png."""
    w = "base" if weight is None else f"w{weight:+.2f}"
    return images_dir / method / f"{prompt_id}_seed{seed}_{w}.png"


def sweep_method(pipe, method, artifact, data: ConceptData, prompts: list[SweepPrompt], cfg, progress: bool = True) -> dict[tuple[str, int, float], Image.Image]:
    """Images for every (prompt, seed, weight): several weights per denoising batch where the method
    allows it (and `sweep.batched`), else one weight applied at a time."""
    seeds = [int(s) for s in cfg.seeds]
    weights = [float(w) for w in cfg.weights]
    if method.batched_weights and cfg.get("batched", True):
        out = sweep_batched(pipe, method, artifact, data, prompts, seeds, weights, cfg, progress)
    else:
        out = sweep_one_weight_at_a_time(pipe, method, artifact, data, prompts, seeds, weights, cfg, progress)
    check_weight_changes_images(method.name, out, weights)
    return out


def sweep_one_weight_at_a_time(pipe, method, artifact, data, prompts, seeds, weights, cfg, progress) -> dict[tuple[str, int, float], Image.Image]:
    pairs = [(p, s) for p in prompts for s in seeds]
    out: dict[tuple[str, int, float], Image.Image] = {}
    for weight in tqdm(weights, desc=f"sweep {method.name}", disable=not progress, leave=False):
        method.apply(pipe, artifact, weight)
        try:
            images = generate(pipe, [method.prompt(p.text, data) for p, _ in pairs], [s for _, s in pairs], int(cfg.steps), float(cfg.guidance), int(cfg.batch))
        finally:
            method.remove(pipe)
        for (p, s), im in zip(pairs, images):
            out[(p.prompt_id, s, weight)] = im
    return out


def sweep_batched(pipe, method, artifact, data, prompts, seeds, weights, cfg, progress) -> dict[tuple[str, int, float], Image.Image]:
    """All weights at once: each denoising batch mixes weights, one per sample."""
    triples = [(w, p, s) for w in weights for p in prompts for s in seeds]
    batch = int(cfg.batch)
    out = {}
    method.apply_many(pipe, artifact, weights)
    try:
        for i in tqdm(range(0, len(triples), batch), desc=f"sweep {method.name} (batched)", disable=not progress, leave=False):
            chunk = triples[i : i + batch]
            method.set_sample_weights(pipe, [w for w, _, _ in chunk])
            texts = [method.prompt_at(p.text, data, w) for w, p, _ in chunk]
            images = generate(pipe, texts, [s for _, _, s in chunk], int(cfg.steps), float(cfg.guidance), batch)
            for (w, p, s), im in zip(chunk, images):
                out[(p.prompt_id, s, w)] = im
    finally:
        method.remove(pipe)
    return out


def check_weight_changes_images(method: str, images: dict[tuple[str, int, float], Image.Image], weights: list[float]) -> None:
    """The guard against an adapter that never got applied: some image must differ across weights."""
    if len(set(weights)) < 2:
        return
    lo, hi = min(weights), max(weights)
    keys = {(pid, s) for pid, s, _ in images}
    if all(np.array_equal(np.asarray(images[(pid, s, lo)]), np.asarray(images[(pid, s, hi)])) for pid, s in keys):
        raise SweepError(f"method {method}: images at weight {lo} and {hi} are identical for every prompt and seed; the adapter had no effect")


def base_images(pipe, texts_and_seeds: list[tuple[str, int]], cfg) -> list[Image.Image]:
    """The base model's images for (prompt text, seed) pairs, with the sweep's sampler settings."""
    return generate(pipe, [t for t, _ in texts_and_seeds], [s for _, s in texts_and_seeds], int(cfg.steps), float(cfg.guidance), int(cfg.batch))
