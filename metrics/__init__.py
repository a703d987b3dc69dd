"""Quality metrics, each declared once in its module (`metrics.base.MetricInfo`: name, unit, direction,
title, what measures it, whether it is a fidelity proxy or regression-checked, how it is scored) and
registered here. Scoring (`bench.score`), the report's titles and definitions, metric validity and the
regression check read `REGISTRY` instead of keeping their own lists.

Adding a metric: a module with its `MetricInfo` (and `score` function), then one entry in REGISTRY.
"""

from __future__ import annotations

from metrics import blank, clip_score, cmmd, dino, diversity, drift, fd, presence, val_loss
from metrics.base import MetricInfo

# In the order tables and figures show them; fd.FAMILY stands for every Fréchet distance (fd_<space>).
REGISTRY: tuple[MetricInfo, ...] = (presence.INFO, clip_score.CLIP_T, clip_score.CLIP_I, dino.DINO_I, cmmd.INFO, drift.INFO, dino.DINO_DRIFT, diversity.INFO, blank.INFO,
                                   val_loss.INFO, fd.FAMILY)
QUALITY: dict[str, MetricInfo] = {i.name: i for i in REGISTRY if i is not fd.FAMILY}


def is_frechet(metric: str) -> bool:
    """Fréchet distances are named per feature space (`fd_<space>`, `fid_inception`; see metrics.fd.info)."""
    return metric.startswith(("fd_", "fid_"))


def info(metric: str) -> MetricInfo | None:
    """The declaration of a metric name a results table may hold (a Fréchet distance by its space)."""
    if metric in QUALITY:
        return QUALITY[metric]
    if is_frechet(metric):
        return fd.info(metric.split("_", 1)[1])
    return None


def higher_is_better(metric: str) -> bool | None:
    """The direction of a quality metric; None for names that are not quality metrics."""
    found = info(metric)
    return None if found is None else found.higher_is_better


def title(metric: str) -> str:
    """How tables and figures name a metric ('CLIP-I'; a name without a declaration, spaced)."""
    found = info(metric)
    return found.display if found is not None else metric.replace("_", " ")


def proxies() -> tuple[str, ...]:
    """The fidelity proxies with fixed names (every Fréchet distance found is one too)."""
    return tuple(i.name for i in QUALITY.values() if i.proxy)


def checked() -> tuple[str, ...]:
    """The quality metrics regression baselines hold (every Fréchet distance too)."""
    return tuple(i.name for i in QUALITY.values() if i.checked)
