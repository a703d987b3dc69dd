"""Fixed-seed weight sweeps: the same prompts and seeds at every strength, for every method.

A (prompt, seed) pair starts from the same initial noise for every method and weight (bench.images
draws it from the seed alone), so images differ only by what the adapter does.
"""

from __future__ import annotations

import logging
import math
import re
import string
from dataclasses import dataclass

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from bench.data import ConceptData
from bench.images import generate

log = logging.getLogger(__name__)
KINDS = ("instance", "recontext", "unrelated")


class SweepError(RuntimeError):
    """A sweep that cannot be trusted, e.g. images that do not change with weight."""


# AUTOMATIC1111's extra-network tags, and the methods each one's strength applies to (the web UI loads
# LyCORIS files through <lora:...> too, and <lyco:...> was the LyCORIS extension's name for the same).
A1111_TAG = re.compile(r"<(lora|lyco|hypernet):([^:<>]+):([^:<>]+)>")


@dataclass(frozen=True)
class SweepPrompt:
    prompt_id: str
    kind: str  # instance | recontext | unrelated
    text: str  # what the model reads: with the concept's token, AUTOMATIC1111 tags resolved
    written: str = ""  # as the user wrote it (AUTOMATIC1111 tags included)
    tags: tuple[tuple[str, float], ...] = ()  # (tag kind, strength) of each <lora:NAME:W>-style tag

    def scoring_text(self, data: ConceptData) -> str:
        """The prompt CLIP-T scores against: without the rare token, which CLIP does not know."""
        return " ".join(w for w in self.text.split() if w != data.token)

    def scale_for(self, method) -> float:
        """The strength the prompt's tags give `method`'s adapter (a Method: its `a1111_tags`), a multiplier
        of the sweep weight (1 without a tag of its kind: <hypernet:...> leaves LoRA alone, as the web UI does)."""
        scale = 1.0
        for kind, strength in self.tags:
            if kind in method.a1111_tags:
                scale *= strength
        return scale


def resolve_a1111(text: str, data: ConceptData, key: str) -> tuple[str, tuple[tuple[str, float], ...]]:
    """A prompt pasted from the web UI: `<lora:NAME:W>`, `<lyco:NAME:W>` and `<hypernet:NAME:W>` name this
    run's artifact by its concept's name (the file name there) and set its strength W (removed from the
    text); an embedding's name used as a word (the concept's name) becomes the concept's token."""
    tags = []
    for kind, name, weight in A1111_TAG.findall(text):
        if name.strip() != data.name:
            raise SweepError(f"{key}: <{kind}:{name}:{weight}> names no trained artifact of this run (its concept is {data.name!r}); "
                             f"prompt {text!r}")
        try:
            strength = float(weight)
        except ValueError:
            raise SweepError(f"{key}: <{kind}:{name}:{weight}>: the strength {weight!r} is not a number; prompt {text!r}") from None
        if not math.isfinite(strength):
            raise SweepError(f"{key}: <{kind}:{name}:{weight}>: the strength must be finite; prompt {text!r}")
        tags.append((kind, strength))
    rest = A1111_TAG.sub(" ", text)
    if re.search(r"<\w+:", rest):
        raise SweepError(f"{key}: a <...> tag other than <lora:NAME:W>, <lyco:NAME:W>, <hypernet:NAME:W> in {text!r}")
    words = [data.token if w == data.name else w for w in rest.split()]
    return " ".join(words), tuple(tags)


def fill_template(template: str, fields: dict[str, str], key: str) -> str:
    """`template` with its {name} placeholders filled from `fields`. Only bare names: str.format would also
    read '{0}', '{instance.__class__}' or '{instance:>9}', and turn them into a prompt or a traceback."""
    known = ", ".join(f"{{{name}}}" for name in fields)
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise SweepError(f"{key}: {template!r} is not a prompt template ({e}); write a literal brace as {{{{ or }}}}") from None
    out = []
    for literal, name, spec, conversion in parts:
        out.append(literal)
        if name is None:
            continue
        if name not in fields or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise SweepError(f"{key}: unknown placeholder {shown} in {template!r}; use {known}")
        out.append(fields[name])
    return "".join(out)


def sweep_prompts(cfg, data: ConceptData) -> list[SweepPrompt]:
    """The sweep's prompt sets; templates may use {instance}, {token} and {class_word}, and AUTOMATIC1111's
    `<lora:NAME:W>`-style tags and embedding names (`resolve_a1111`)."""
    out = []
    fields = {"instance": data.instance_prompt, "token": data.token, "class_word": data.class_word}
    for kind in KINDS:
        for i, template in enumerate(cfg.get(kind) or []):
            written = fill_template(str(template), fields, f"sweep.{kind}[{i}]")
            text, tags = resolve_a1111(written, data, f"sweep.{kind}[{i}]")
            out.append(SweepPrompt(f"{kind}_{i}", kind, text, written, tags))
    if not any(p.kind != "unrelated" for p in out):
        raise SweepError("sweep.instance: at least one instance or recontext prompt is needed")
    return out


def check_sweep_config(cfg) -> None:
    """Everything a sweep config can get wrong, before any work: one line naming the key."""
    weights, seeds = list(cfg.weights or []), list(cfg.seeds or [])
    if not weights:
        raise SweepError("sweep.weights: empty; list the adapter strengths to generate at, e.g. [0.0, 1.0]")
    if not any(float(w) == 1.0 for w in weights):
        raise SweepError(f"sweep.weights: {weights} lacks 1.0, the strength the primary tables report")
    if len(set(map(float, weights))) != len(weights):
        raise SweepError(f"sweep.weights: {weights} lists a weight twice")
    if not seeds:
        raise SweepError("sweep.seeds: empty; list at least one generation seed (two or more for intervals and best weights)")
    if len(set(map(int, seeds))) != len(seeds):
        raise SweepError(f"sweep.seeds: {seeds} lists a seed twice")
    if not all(0 <= int(s) < 2**32 for s in seeds):  # the range every generator the harness seeds accepts
        raise SweepError(f"sweep.seeds: {seeds} holds a seed outside 0..2**32-1")
    if not all(math.isfinite(float(w)) for w in weights):
        raise SweepError(f"sweep.weights: {weights} holds a value that is not a finite number")
    for key in ("steps", "batch"):
        if int(cfg[key]) <= 0:
            raise SweepError(f"sweep.{key}: must be a positive whole number, got {cfg[key]}")
    if not math.isfinite(float(cfg.guidance)) or float(cfg.guidance) < 0:
        raise SweepError(f"sweep.guidance: must be a finite number >= 0 (1 or less turns classifier-free guidance off), got {cfg.guidance}")


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
    # Prompts whose AUTOMATIC1111 tags scale this method's strength go in a group of their own.
    groups: dict[float, list[SweepPrompt]] = {}
    for p in prompts:
        groups.setdefault(p.scale_for(method), []).append(p)
    out: dict[tuple[str, int, float], Image.Image] = {}
    for weight in tqdm(weights, desc=f"sweep {method.name}", disable=not progress, leave=False):
        for scale, group in groups.items():
            pairs = [(p, s) for p in group for s in seeds]
            method.apply(pipe, artifact, weight * scale)
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
    method.apply_many(pipe, artifact, list(dict.fromkeys(w * p.scale_for(method) for w, p, _ in triples)))
    try:
        for i in tqdm(range(0, len(triples), batch), desc=f"sweep {method.name} (batched)", disable=not progress, leave=False):
            chunk = triples[i : i + batch]
            method.set_sample_weights(pipe, [w * p.scale_for(method) for w, p, _ in chunk])
            texts = [method.prompt_at(p.text, data, w * p.scale_for(method)) for w, p, _ in chunk]
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


def base_images(pipe, texts: list[str], cfg) -> dict[tuple[str, int], Image.Image]:
    """The base model's images of each text at every sweep seed. Each text's seeds are one batch of their
    own, so an image never depends on which other texts are generated with it (a resumed run and a fresh
    one give the same pixels)."""
    seeds = [int(s) for s in cfg.seeds]
    out = {}
    for text in texts:
        for seed, im in zip(seeds, generate(pipe, [text] * len(seeds), seeds, int(cfg.steps), float(cfg.guidance), int(cfg.batch))):
            out[(text, seed)] = im
    return out


def check_weight_zero(method: str, images: dict[tuple[str, int, float], Image.Image], base: dict[tuple[str, int], Image.Image], base_text: dict[str, str], max_levels: int = 1) -> dict[tuple[str, int], int]:
    """Weight 0 must be the base model: each weight-0 image within `max_levels` pixel levels of the base
    model's image of the same prompt and seed (CPU matrix kernels may round one level differently for
    another batch layout). Returns the largest difference per (prompt, seed); raises SweepError past it."""
    diffs = {}
    for (pid, seed, weight), im in images.items():
        if weight != 0:
            continue
        reference = base[(base_text[pid], seed)]
        diffs[(pid, seed)] = int(np.abs(np.asarray(im, dtype=np.int16) - np.asarray(reference, dtype=np.int16)).max())
    worst = max(diffs.items(), key=lambda kv: kv[1], default=None)
    if worst is not None and worst[1] > max_levels:
        (pid, seed), diff = worst
        raise SweepError(f"method {method}: at weight 0 the image of {pid} (seed {seed}) differs from the base model's by {diff} pixel levels (allowed: {max_levels}); weight 0 must reproduce the base model")
    return diffs
