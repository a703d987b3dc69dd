"""Quality metrics. Each module declares a `MetricInfo` (name, unit, direction); this package answers
"is higher better?" for any metric name a results table may hold, so reports and regression checks
read one declaration instead of keeping their own lists."""

from __future__ import annotations

from metrics import blank, clip_score, cmmd, diversity, drift, presence
from metrics.base import MetricInfo

QUALITY: dict[str, MetricInfo] = {
    i.name: i for i in (clip_score.CLIP_T, clip_score.CLIP_I, presence.INFO, cmmd.INFO, drift.INFO, diversity.INFO, blank.INFO)
}


def is_frechet(metric: str) -> bool:
    """Fréchet distances are named per feature space (`fd_<space>`, `fid_inception`; see metrics.fd.info)."""
    return metric.startswith(("fd_", "fid_"))


def higher_is_better(metric: str) -> bool | None:
    """The direction of a quality metric; None for names that are not quality metrics."""
    if metric in QUALITY:
        return QUALITY[metric].higher_is_better
    if is_frechet(metric):
        return False
    return None
