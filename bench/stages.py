"""One place decides what each stage depends on.

A comparison is a set of training runs (method x concept x training seed). Each run passes three
stages, each keyed by exactly the config it reads, so a change re-does that stage and those after it,
and nothing else:

    training  model, concept data (its pixels and words), train, training seed, method  -> run_id
    images    + sweep                                                                   -> images_key
    scores    + metrics, the bytes of the embedded scorers it names, the held-out images -> scores_key
    curve     the checkpoints' weight-1 sweeps, scored (with train.checkpoints)         -> scores_key

The embedded scorers (micro CLIP, micro DINO, the oracle) are part of the scores key by content: retraining one
re-scores every sweep, where a key of config alone would keep rows judged by the old one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def digest(obj, n: int = 10) -> str:
    """A short, stable hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def plain(node) -> object:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) or OmegaConf.is_config(node) else node


WEIGHTS_KEY = "weights_digest"


def model_identity(model_cfg) -> dict:
    """What keys every stage that reads the base model: its config and a digest of its weights on disk
    (`io.weights_digest`). The config alone names the embedded model the same before and after the zoo is
    rebuilt, and a path to a replaced checkpoint the same as before: both would reuse runs of the old
    model. run.json records this identity (the report hashes it as recorded: `recorded_config_hash`)."""
    from bench.io import weights_digest
    from bench.models import model_path

    return {**plain(model_cfg), WEIGHTS_KEY: weights_digest(model_path(model_cfg))}


@lru_cache(maxsize=None)
def folder_digest(folder: Path) -> str:
    """A hash of every file's name and bytes in `folder` (an embedded model: a few MB)."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def scorers(metrics_cfg) -> dict:
    """The embedded scorers `metrics` uses, by content (an external CLIP is named by its spec in the config)."""
    from bench import zoo

    out = {}
    if metrics_cfg.get("clip", "micro") == "micro":
        out["clip"] = folder_digest(zoo.micro_clip_dir())
    if metrics_cfg.get("oracle", False) and zoo.oracle_dir().is_dir():
        out["oracle"] = folder_digest(zoo.oracle_dir())
    if metrics_cfg.get("dino") == "micro":
        out["dino"] = folder_digest(zoo.micro_dino_dir())
    return out


@dataclass(frozen=True)
class RunSpec:
    """One training run and the keys of its three stages."""

    method: str
    concept: str
    kind: str
    train_seed: int
    run_id: str  # training stage key
    config: str  # hash of the method's config alone: rows of different configs are never averaged
    sweep: str  # hash of the sweep config
    metrics: str  # hash of the metrics config and the embedded scorers it uses
    curves: bool = False  # whether training saves checkpoints (train.checkpoints), scored by a curve stage

    @property
    def stages(self) -> list[str]:
        """The run's stages, in order: training, scores and, with checkpoints, the learning curve."""
        return [f"train_{self.run_id}", f"scores_{self.scores_key}", *([f"curve_{self.scores_key}"] if self.curves else [])]

    @property
    def images_key(self) -> str:
        return f"{self.run_id}-{self.sweep}"

    @property
    def scores_key(self) -> str:
        return f"{self.images_key}-{self.metrics}"

    def ident(self, model: str) -> dict:
        """The columns that identify this run's rows in the tidy table."""
        return {"run_id": self.run_id, "model": model, "method": self.method, "config": self.config, "concept": self.concept, "kind": self.kind, "train_seed": self.train_seed}


def config_hash(cfg: DictConfig, method: str) -> str:
    """The `config` column: the hash of everything a run's numbers depend on but its concept, its data and
    its training seed: the model, the training settings and the method's config (a `train.steps=2` run
    and a `train.steps=40` run are two arms, never two replicates of one). The sweep and the metrics
    have keys of their own; a concept's data is checked apart (`stats.check_replicates`)."""
    return recorded_config_hash({"model": model_identity(cfg.model), "train": plain(cfg.get("train")), "method": {method: plain(cfg.method[method])}}, method)


def recorded_config_hash(config: dict, method: str) -> str:
    """`config_hash` of a config as a run recorded it in run.json (`config`: model identity with its
    weights' digest, train, method), without looking for the model on disk: a results dir can be reported
    where its model is not installed."""
    return digest({"model": config.get("model"), "train": config.get("train"), method: (config.get("method") or {})[method]}, 8)


def run_spec(cfg: DictConfig, method: str, concept, train_seed: int) -> RunSpec:
    """`concept` is a loaded ConceptData: its fingerprint (pixels, captions, words) keys the training."""
    method_cfg = plain(cfg.method[method])
    run_id = digest({"model": model_identity(cfg.model), "data": concept.fingerprint(), "train": plain(cfg.train), "seed": int(train_seed), "method": {method: method_cfg}})
    return RunSpec(
        method=method,
        concept=concept.name,
        kind=concept.kind,
        train_seed=int(train_seed),
        run_id=run_id,
        config=config_hash(cfg, method),
        sweep=digest(plain(cfg.sweep), 8),
        metrics=digest({"metrics": plain(cfg.metrics), "scorers": scorers(cfg.metrics),
                        # the validation loss reads the held-out images, which the training key does not hold
                        **({"holdout": concept.holdout_fingerprint()} if cfg.metrics.get("val_loss_timesteps") else {})}, 8),
        curves=bool(cfg.train.get("checkpoints")),
    )


# ---- where each stage's outputs live, relative to the results directory


def train_dir(results: Path, spec: RunSpec) -> Path:
    return Path(results) / "train" / spec.run_id


def images_dir(results: Path, run_id: str, sweep: str) -> Path:
    return Path(results) / "images" / f"{run_id}-{sweep}"


def curve_dir(results: Path, run_id: str, sweep: str) -> Path:
    """The learning curve's images: a folder per checkpoint step (bench.worker.curve_stage)."""
    return Path(results) / "images" / f"{run_id}-{sweep}-curve"


def image_name(prompt_id: str, seed: int, weight: float) -> str:
    """A sweep image's file name, e.g. instance_0_seed1_w+0.50.png (the final sweep's and a checkpoint's)."""
    return f"{prompt_id}_seed{int(seed)}_w{float(weight):+.2f}.png"


def image_file(results: Path, run_id: str, sweep: str, prompt_id: str, seed: int, weight: float) -> Path:
    """e.g. images/3f2a9c01d4-1b2c3d4e/instance_0_seed1_w+0.50.png"""
    return images_dir(results, run_id, sweep) / image_name(prompt_id, seed, weight)


def instance_dir(results: Path, concept) -> Path:
    """The concept's training images as the methods saw them (for the report), keyed by their content."""
    return Path(results) / "images" / "instance" / f"{concept.name}-{concept.fingerprint()[:8]}"


def base_image_file(results: Path, model_cfg, sweep_cfg, text: str, seed: int) -> Path:
    """The base model's image of one prompt and seed, keyed by everything that makes it. Each prompt's
    seeds are generated as one batch of their own (`bench.sweep.base_images`), so the seeds and batch size
    are part of the key and what else is generated never changes these pixels."""
    sampler = {k: plain(sweep_cfg)[k] for k in ("steps", "guidance", "seeds", "batch")}
    key = digest({"model": model_identity(model_cfg), "sampler": sampler, "text": text}, 12)
    return Path(results) / "images" / "base" / f"{key}_seed{int(seed)}.png"
