"""What every metric declares, once: its name, unit, direction, what measures it, how tables title and
define it, whether it is a fidelity proxy (checked against the oracle) and a regression-checked metric,
and how it is computed from one run's sweep. Scoring, the report, metric validity and the regression
check all read these declarations (`metrics.REGISTRY`); adding a metric is a module and one entry there."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, int, float]  # (prompt_id, generation seed, adapter weight)


@dataclass
class SweepScoring:
    """One training run's sweep, as every metric's `score` reads it: the images by (prompt, seed, weight),
    the base model's images, and the features every CLIP-space metric shares, encoded once and in one
    order (a feature depends in its last bits on the batch it was encoded in)."""

    encoder: Any  # bench.clip.ClipEncoder: the run's CLIP space
    data: Any  # bench.data.ConceptData: instance images, token, world concept
    prompts: dict[str, Any]  # prompt_id -> bench.sweep.SweepPrompt
    images: dict[Key, Any]
    base: dict[tuple[str, int], Any]  # the base model's images by (prompt text, seed)
    oracle: Any = None  # bench.oracle.Oracle where the concept is one of the micro world's
    inception: bool = False  # also the classic Inception FID
    dino: Any = None  # metrics.dino.DinoEncoder: DINO-I, DINO drift and FD in its space, when metrics.dino names one
    keys: list[Key] = field(init=False)
    features: dict[Key, Any] = field(init=False)
    instance_features: Any = field(init=False)
    base_features: dict[tuple[str, int], Any] = field(init=False)
    dino_features: dict[Key, Any] = field(init=False, default_factory=dict)
    dino_instance: Any = field(init=False, default=None)
    dino_base: dict[tuple[str, int], Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.keys = sorted(self.images)
        self.encoder.clear()  # the same features whichever runs this process scored before
        self.features = dict(zip(self.keys, self.encoder.images([self.images[k] for k in self.keys])))
        self.instance_features = self.encoder.images(self.data.images)
        unrelated = sorted({(self.prompts[pid].text, seed) for pid, seed, _ in self.keys if self.prompts[pid].kind == "unrelated"})
        self.base_features = dict(zip(unrelated, self.encoder.images([self.base[k] for k in unrelated])))
        if self.dino is not None:  # the same images, in the same order, through DINO
            self.dino.clear()
            self.dino_features = dict(zip(self.keys, self.dino.images([self.images[k] for k in self.keys])))
            self.dino_instance = self.dino.images(self.data.images)
            self.dino_base = dict(zip(unrelated, self.dino.images([self.base[k] for k in unrelated])))

    def subject(self, weight: float | None = None) -> list[Key]:
        """Keys of images whose prompt shows the concept (instance, recontext), at `weight` if given."""
        return [k for k in self.keys if self.prompts[k[0]].kind != "unrelated" and (weight is None or k[2] == weight)]

    def unrelated(self) -> list[Key]:
        return [k for k in self.keys if self.prompts[k[0]].kind == "unrelated"]

    def weights(self) -> list[float]:
        return sorted({w for _, _, w in self.keys})

    def row(self, key: Key, info: "MetricInfo", value: float, scorer: str) -> dict:
        pid, seed, weight = key
        return {"prompt_id": pid, "seed": seed, "weight": weight, "metric": info.name, "value": value, "unit": info.unit, "scorer": scorer}


@dataclass(frozen=True)
class MetricInfo:
    name: str
    unit: str
    higher_is_better: bool
    description: str
    title: str = ""  # how tables and figures name it ("CLIP-I"); the name when empty
    measured_by: str = "clip"  # what measures it: the run's CLIP space, the oracle, the pixels, Inception, the model itself
    proxy: bool = False  # a fidelity proxy: its agreement with the oracle is measured (bench.validity)
    checked: bool = True  # held by regression baselines and tested by mode=check
    score: Callable[[SweepScoring], list[dict]] | None = field(default=None, compare=False, repr=False)  # one run's rows (None: the model scores it)

    @property
    def display(self) -> str:
        return self.title or self.name.replace("_", " ")
