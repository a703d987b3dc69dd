"""CMMD: maximum mean discrepancy with a Gaussian RBF kernel on CLIP embeddings (Jayasumana et al. 2024).

Unbiased MMD² estimate, kernel `exp(-||x - y||² / (2 sigma²))` with sigma = 10, reported x1000 as in
the paper. No normality assumption, unlike Fréchet distance, so it behaves with few images.
"""

from __future__ import annotations

import torch

from metrics.base import MetricInfo, SweepScoring


def score(s: SweepScoring) -> list[dict]:
    """One set-level row per weight: that weight's subject images against the instance images."""
    rows = []
    for weight in s.weights():
        subject = s.subject(weight)
        if len(subject) >= 2 and len(s.data.images) >= 2:
            value = cmmd(torch.stack([s.features[k] for k in subject]), s.instance_features)
            rows.append({"weight": weight, "metric": INFO.name, "value": value, "unit": INFO.unit, "scorer": s.encoder.name})
    return rows


INFO = MetricInfo("cmmd", "mmd2x1000", False, "RBF-kernel MMD² (x1000) between generated and instance CLIP embeddings", title="CMMD", proxy=True, score=score)
SIGMA = 10.0
SCALE = 1000.0


def cmmd(x: torch.Tensor, y: torch.Tensor, sigma: float = SIGMA) -> float:
    """Unbiased MMD² x1000 between feature sets x [n, d] and y [m, d] (n, m >= 2)."""
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"CMMD needs at least 2 samples per set, got {len(x)} and {len(y)}")
    x, y = x.double(), y.double()
    gamma = 1.0 / (2 * sigma**2)
    kxx = torch.exp(-gamma * torch.cdist(x, x).pow(2))
    kyy = torch.exp(-gamma * torch.cdist(y, y).pow(2))
    kxy = torch.exp(-gamma * torch.cdist(x, y).pow(2))
    n, m = len(x), len(y)
    mmd2 = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean()
    return float(mmd2 * SCALE)
