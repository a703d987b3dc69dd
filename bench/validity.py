"""Do the proxy metrics agree with ground truth? Their rank agreement with the oracle's presence rate.

A cell is one (arm, concept, weight): a metric's mean over that concept's training runs (each run
already averaged over its prompts and generation seeds). Across all cells of a comparison, Spearman's
rho between a proxy (signed so that higher means better: FD and CMMD are negated) and the oracle's
presence rate says whether ranking by the proxy ranks by what is really drawn. The interval resamples
concepts (cells of one concept share instance images and are not independent). Beside the pooled rho,
the mean of the per-concept rhos: agreement that does not come from some concepts simply scoring
higher than others.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from bench import stats
import metrics
from metrics import higher_is_better, is_frechet

GROUND_TRUTH = "presence"
PROXIES = metrics.proxies()  # the declared fidelity proxies (metrics.REGISTRY), and every Fréchet distance found
AGREES = 0.5  # rho a proxy must reach, with its interval above 0, to count as agreeing


def proxies(df: pd.DataFrame) -> list[str]:
    found = set(df.metric.dropna().unique())
    return [m for m in PROXIES if m in found] + sorted(m for m in found if is_frechet(m))


def cells(df: pd.DataFrame, metric: str) -> pd.Series:
    """(arm..., concept, weight) -> mean over the concept's training runs of `metric` (higher is better)."""
    q = stats.quality_rows(df)
    weights = sorted(q[q.metric == metric].weight.unique())
    if not weights:
        return pd.Series(dtype=float)
    # A run's value at a weight is stats.unit_values' (its prompts and generation seeds averaged).
    units = pd.concat([stats.unit_values(df, metric, float(w)).assign(weight=w) for w in weights], ignore_index=True)
    out = units.groupby([*stats.ARM, "concept", "weight"], dropna=False).value.mean()
    return out if higher_is_better(metric) else -out


def _rho(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


def agreement(df: pd.DataFrame, settings: stats.Settings = stats.Settings()) -> pd.DataFrame:
    """One row per proxy metric: pooled and within-concept Spearman rho with the presence rate [interval]."""
    truth = cells(df, GROUND_TRUTH)
    if truth.empty:
        return pd.DataFrame()
    rows = []
    for metric in proxies(df):
        both = pd.concat({"proxy": cells(df, metric), "truth": truth}, axis=1).dropna()
        if len(both) < 3:
            continue
        concepts = both.index.get_level_values("concept")
        names = sorted(set(concepts))
        # Per concept its (proxy, truth) cells as arrays: the bootstrap below only concatenates them.
        by = [(both.proxy.to_numpy()[concepts == c], both.truth.to_numpy()[concepts == c]) for c in names]
        pooled = _rho(both.proxy.to_numpy(), both.truth.to_numpy())
        within = np.array([_rho(p, t) for p, t in by])
        rng = np.random.default_rng(settings.seed)
        boot_pooled, boot_within = [], []
        for _ in range(settings.n_boot):
            pick = rng.integers(0, len(names), len(names))
            boot_pooled.append(_rho(np.concatenate([by[i][0] for i in pick]), np.concatenate([by[i][1] for i in pick])))
            drawn = within[pick]
            boot_within.append(float(np.nanmean(drawn)) if np.isfinite(drawn).any() else math.nan)
        alpha = (1 - settings.confidence) / 2

        # As for a paired difference (stats.DECISION_RULE): k concepts have only C(2k-1, k) distinct
        # resamples (2 concepts: 3), too few to place an interval's ends (the estimate lands on one), so
        # below MIN_CONCEPTS there is no interval and no verdict, only "needs >= 4 concepts".
        enough = len(names) >= stats.MIN_CONCEPTS

        def interval(values: list[float]) -> tuple[float, float]:
            v = np.asarray(values, float)
            v = v[np.isfinite(v)]
            return (float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))) if len(v) and enough else (math.nan, math.nan)

        lo, hi = interval(boot_pooled)
        wlo, whi = interval(boot_within)
        rows.append({
            "metric": metric, "higher_is_better": bool(higher_is_better(metric)), "cells": len(both), "concepts": len(names),
            "rho": pooled, "low": lo, "high": hi, "rho_within": float(np.nanmean(within)) if np.isfinite(within).any() else math.nan,
            "within_low": wlo, "within_high": whi,
            # True / False, or None where too few concepts stand behind the interval for a verdict.
            "agrees": bool(np.isfinite(pooled) and pooled >= AGREES and lo > 0) if enough else None,
        })
    return pd.DataFrame(rows)


def best_proxy(table: pd.DataFrame) -> str | None:
    """The proxy that agrees best with the oracle (highest pooled rho among those that agree)."""
    ok = table[table.agrees.eq(True)] if len(table) else table
    return None if ok.empty else str(ok.loc[ok.rho.idxmax(), "metric"])


# The proxy a comparison without an oracle (a real model, a user's folder) leads with: the one that
# agreed best with the oracle on the micro world's suite (results/benchmarks/metric_validity.md).
PROXY_WITHOUT_ORACLE = "clip_i"


def headline(df: pd.DataFrame, configured: str = "auto") -> str:
    """The fidelity metric tables and best weights lead with: the configured one, or with 'auto' ground
    truth where the oracle judged the images and the best-agreeing proxy where it could not."""
    if configured != "auto":
        return configured
    return GROUND_TRUTH if (df.metric == GROUND_TRUTH).any() else PROXY_WITHOUT_ORACLE
