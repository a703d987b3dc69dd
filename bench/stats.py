"""Statistics of a comparison, one module for the report and the regression check.

- **Unit of analysis: the training run** (concept x training seed). A run's value of a metric at a weight
  is the mean over its prompts and generation seeds; generation seeds are never treated as independent.
- **Arms**: rows are grouped by (model, method, method config hash, sweep config hash); two configs of a
  method are two arms and are never averaged together.
- **Intervals**: a hierarchical percentile bootstrap: resample concepts with replacement, then training
  seeds within each drawn concept; the statistic gives every concept equal weight. With one concept it
  reduces to resampling training seeds.
- **Paired differences**: two arms compared on the runs they share (same concept and training seed,
  hence the same instance images, noise and generation seeds); the same bootstrap on the per-run
  differences, the win rate (ties count half) and scipy's Wilcoxon signed-rank p-value. A difference is
  *resolved* when its interval excludes 0 and it rests on at least MIN_PAIRS pairs.
- **No double dipping**: a best weight is chosen on the even-positioned generation seeds and reported on
  the odd-positioned ones.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from metrics import higher_is_better

ARM = ["model", "method", "config", "sweep"]
# Fewer paired runs than this get no verdict: a percentile bootstrap of 3 or 4 differences is too narrow
# (and a Wilcoxon test on 3 pairs cannot reach p < 0.25).
MIN_PAIRS = 5
# ... and fewer concepts than this get none either: the interval resamples concepts, and k concepts have
# only C(2k-1, k) distinct resamples (2 concepts: 3; 3: 10; 4: 35), too few to place a 95 % interval's ends.
MIN_CONCEPTS = 4
# One decision rule for a paired difference, stated once: resolved when it rests on at least MIN_PAIRS
# runs of at least MIN_CONCEPTS concepts and its 95 % hierarchical bootstrap interval excludes 0. Its p-value
# comes from the same resamples (twice the smaller tail share beyond 0), so p < 0.05 exactly when the
# interval excludes 0: the verdict and the test cannot disagree.
DECISION_RULE = (f"resolved: at least {MIN_PAIRS} paired runs of at least {MIN_CONCEPTS} concepts, and the 95 % hierarchical bootstrap "
                 "interval of the mean difference excludes 0 (p, from the same resamples, is below 0.05 exactly then)")
UNIT = ["concept", "kind", "train_seed", "run_id"]
SCOPES = ("overall", "object", "style")


class StatsConfigError(ValueError):
    """A `stats` value no interval can be computed with; the message names the key."""


MIN_BOOT = 100  # fewer resamples cannot place the tails of a 95 % interval


@dataclass(frozen=True)
class Settings:
    confidence: float = 0.95
    n_boot: int = 2000
    seed: int = 0

    @classmethod
    def from_config(cls, cfg) -> "Settings":
        """The `stats` config, checked: one line naming the key for a value no interval can use."""
        confidence, n_boot = float(cfg.get("confidence", 0.95)), cfg.get("n_boot", 2000)
        if not 0.5 <= confidence < 1:
            raise StatsConfigError(f"stats.confidence: must be at least 0.5 and below 1 (e.g. 0.95), got {confidence}")
        if not isinstance(n_boot, int) or n_boot < MIN_BOOT:
            raise StatsConfigError(f"stats.n_boot: must be a whole number of at least {MIN_BOOT} resamples, got {n_boot!r}")
        return cls(confidence, n_boot)



# ------------------------------------------------------------------------------------------- units


def check_replicates(df: pd.DataFrame) -> None:
    """One run per arm, concept and training seed: two mean the concept's images changed between runs
    under one config (an edited data folder), and their numbers are not replicates of one another."""
    runs = df.dropna(subset=["run_id", "method"]).drop_duplicates("run_id")
    counts = runs.groupby(["model", "method", "config", "concept", "train_seed"], dropna=False).run_id.nunique()
    clashes = counts[counts > 1]
    if len(clashes):
        (_, method, _, concept, seed), n = clashes.index[0], int(clashes.iloc[0])
        raise StatsConfigError(f"results_dir: {n} runs of {method} on concept {concept!r}, training seed {seed}, under one config: the concept's "
                               "images changed between them (an edited data folder?), so they are not replicates; move the older runs "
                               "(train/, images/ and their rows/ files) out, or use a new results_dir")


def quality_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of finished sweeps (weight set, status ok)."""
    return df[df.weight.notna() & (df.status.fillna("ok") == "ok")]


def unit_values(df: pd.DataFrame, metric: str, weight: float, seeds: list[int] | None = None) -> pd.DataFrame:
    """One value per training run: `metric` at `weight`, averaged over prompts and generation seeds
    (only `seeds` when given; set-level metrics such as FD have no seed and ignore it)."""
    m = quality_rows(df)
    m = m[(m.metric == metric) & np.isclose(m.weight.astype(float), weight)]
    if seeds is not None and m.seed.notna().any():
        m = m[m.seed.isin(seeds)]
    if m.empty:
        return pd.DataFrame(columns=[*ARM, *UNIT, "value"])
    return m.groupby([*ARM, *UNIT], dropna=False).value.mean().reset_index()


def in_scope(units: pd.DataFrame, scope: str) -> pd.DataFrame:
    return units if scope == "overall" else units[units.kind == scope]


# ------------------------------------------------------------------------------------------- bootstrap


def hierarchical_bootstrap(groups: list[np.ndarray], settings: Settings = Settings()) -> tuple[float, float, float]:
    """(point estimate, low, high) of the mean of group means, resampling groups and then units inside
    each drawn group. The interval is NaN with a single unit in all."""
    return bootstrap_test(groups, settings)[:3]


def bootstrap_test(groups: list[np.ndarray], settings: Settings = Settings()) -> tuple[float, float, float, float]:
    """(point, low, high, p): `hierarchical_bootstrap`'s interval, and from the same resamples the two-sided
    p of 'the mean is 0' (twice the smaller share of resampled means on either side of 0; NaN without an
    interval)."""
    point, stat = _resampled(groups, settings)
    if stat is None:
        return point, math.nan, math.nan, math.nan
    alpha = (1 - settings.confidence) / 2
    p = float(min(1.0, 2 * min((stat <= 0).mean(), (stat >= 0).mean())))
    return point, float(np.quantile(stat, alpha)), float(np.quantile(stat, 1 - alpha)), p


def _resampled(groups: list[np.ndarray], settings: Settings) -> tuple[float, np.ndarray | None]:
    groups = [np.asarray(g, float)[np.isfinite(g)] for g in groups]
    groups = [g for g in groups if len(g)]
    if not groups:
        return math.nan, None
    point = float(np.mean([g.mean() for g in groups]))
    if sum(len(g) for g in groups) < 2:
        return point, None
    rng = np.random.default_rng(settings.seed)
    k, b = len(groups), settings.n_boot
    # means[c][i, j]: a within-group resample of group c for replicate i, draw slot j.
    means = np.stack([g[rng.integers(0, len(g), size=(b, k, len(g)))].mean(axis=2) for g in groups])  # [k, b, k]
    picks = rng.integers(0, k, size=(b, k))
    return point, means[picks, np.arange(b)[:, None], np.arange(k)[None, :]].mean(axis=1)


def by_concept(units: pd.DataFrame, column: str = "value") -> list[np.ndarray]:
    return [g[column].to_numpy(float) for _, g in units.groupby("concept", sort=True)]


# ------------------------------------------------------------------------------------------- summaries


def arms(df: pd.DataFrame) -> list[tuple]:
    """The (model, method, config, sweep) groups present in quality rows, in a stable order."""
    q = quality_rows(df)
    return sorted({tuple(r) for r in q[ARM].itertuples(index=False)}, key=lambda a: tuple(str(x) for x in a))


def summarize(df: pd.DataFrame, metric: str, weight: float = 1.0, seeds: list[int] | None = None, settings: Settings = Settings()) -> pd.DataFrame:
    """Per arm and scope: n concepts, n runs, mean and interval of `metric` at `weight`."""
    units = unit_values(df, metric, weight, seeds)
    rows = []
    for arm, g in units.groupby(ARM, dropna=False, sort=True):
        for scope in SCOPES:
            s = in_scope(g, scope)
            if s.empty or (scope != "overall" and s.kind.nunique() == g.kind.nunique() == 1):
                continue  # a kind-scope equal to 'overall' says nothing new
            mean, lo, hi = hierarchical_bootstrap(by_concept(s), settings)
            rows.append({**dict(zip(ARM, arm)), "scope": scope, "metric": metric, "weight": weight, "n_concepts": s.concept.nunique(), "n_runs": len(s), "mean": mean, "low": lo, "high": hi})
    return pd.DataFrame(rows)


def paired(df: pd.DataFrame, metric: str, weight: float = 1.0, seeds: list[int] | None = None, settings: Settings = Settings()) -> pd.DataFrame:
    """Every two arms of the same model and sweep, on the runs they share: difference a - b with interval,
    its p from the same resamples, the share of runs where a is better (ties half) and the ties, and the
    verdict by DECISION_RULE ('too few concepts' / 'too few pairs' where it cannot be given)."""
    units = unit_values(df, metric, weight, seeds)
    hib = higher_is_better(metric)
    rows = []
    for (model, sweep), g in units.groupby(["model", "sweep"], dropna=False, sort=True):
        arm_keys = sorted({(m, c) for m, c in zip(g.method, g.config)}, key=str)
        for a, b in itertools.combinations(arm_keys, 2):
            ua = g[(g.method == a[0]) & (g.config == a[1])].set_index(["concept", "kind", "train_seed"]).value
            ub = g[(g.method == b[0]) & (g.config == b[1])].set_index(["concept", "kind", "train_seed"]).value
            both = pd.concat({"a": ua, "b": ub}, axis=1).dropna().reset_index()
            if both.empty:
                continue
            both["d"] = both.a - both.b
            for scope in SCOPES:
                s = in_scope(both, scope)
                if s.empty or (scope != "overall" and both.kind.nunique() == 1):
                    continue
                mean, lo, hi, p = bootstrap_test(by_concept(s, "d"), settings)
                better = np.sign(s.d.to_numpy()) * (1 if hib else -1)
                win = float(((better > 0) + 0.5 * (better == 0)).mean())
                enough = "too few concepts" if s.concept.nunique() < MIN_CONCEPTS else ("too few pairs" if len(s) < MIN_PAIRS else "")
                resolved = bool(not enough and np.isfinite(lo) and (lo > 0 or hi < 0))
                rows.append({
                    "model": model, "sweep": sweep, "scope": scope, "metric": metric, "weight": weight,
                    "method_a": a[0], "config_a": a[1], "method_b": b[0], "config_b": b[1], "n_pairs": len(s), "n_concepts": s.concept.nunique(),
                    "diff": mean, "low": lo, "high": hi, "p": p, "a_wins": win,
                    "ties": int((better == 0).sum()), "resolved": resolved,
                    "better": (a[0] if (mean > 0) == hib else b[0]) if resolved else (enough or "unresolved"),
                })
    return pd.DataFrame(rows)


def verdict_words(pair) -> str:
    """A paired row's verdict as tables print it: resolved, not resolved, or what it needs to be judged."""
    if pair.resolved:
        return "resolved"
    return {"too few concepts": f"needs ≥ {MIN_CONCEPTS} concepts", "too few pairs": f"needs ≥ {MIN_PAIRS} pairs"}.get(pair.better, "not resolved")


def ranking(summary: pd.DataFrame, pairs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Arms of each scope ordered best first; each row says whether it is resolved against the next one
    down (paired interval excludes 0) and how many other arms it beats resolvedly."""
    hib = higher_is_better(metric)
    rows = []
    for (model, sweep, scope), g in summary.groupby(["model", "sweep", "scope"], sort=False):
        g = g.sort_values("mean", ascending=not hib, kind="stable").reset_index(drop=True)
        # Equal means (as printed, 3 decimals) share a rank: 1, 1, 3.
        shown = g["mean"].round(3)
        ranks = [1 + int((shown > v).sum() if hib else (shown < v).sum()) for v in shown]
        sp = pairs[(pairs.model == model) & (pairs.sweep == sweep) & (pairs.scope == scope)] if len(pairs) else pairs
        for i, r in g.iterrows():
            def pair(x, y):
                m = sp[((sp.method_a == x.method) & (sp.config_a == x.config) & (sp.method_b == y.method) & (sp.config_b == y.config))
                       | ((sp.method_a == y.method) & (sp.config_a == y.config) & (sp.method_b == x.method) & (sp.config_b == x.config))]
                return m.iloc[0] if len(m) else None

            nxt = pair(r, g.iloc[i + 1]) if i + 1 < len(g) else None
            beats = sum(1 for _, o in g.iterrows() if (o.method, o.config) != (r.method, r.config) and (p := pair(r, o)) is not None and p.resolved and p.better == r.method)
            rows.append({
                "model": model, "sweep": sweep, "scope": scope, "rank": ranks[i], "method": r.method, "config": r.config,
                "mean": r["mean"], "low": r.low, "high": r.high, "n_runs": r.n_runs,
                "vs_next": "" if nxt is None else verdict_words(nxt), "beats_resolved": beats,
            })
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------- learned


# "Learned" where the oracle judges: the concept drawn in at least this much larger a share of images at
# weight 1 than at the same run's weight 0 ...
LEARNED_MIN_GAIN = 0.25
LEARNED_RULE = (f"learned: presence at weight 1 minus presence at weight 0 (the same run's images: same prompts and seeds) "
                f"is at least {LEARNED_MIN_GAIN} on average over training runs, and its 95 % t-interval over runs excludes 0")


def t_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student's t-interval of the mean of `values` (NaN ends for fewer than 2).

    Used for per-(method, concept) verdicts, which rest on a concept's few training runs: a percentile
    bootstrap of 3 values can only return one of their means, so its interval is too narrow and its
    estimate sits on an end; the t-interval widens with small n as it should."""
    from scipy.stats import t

    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if not len(values):
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = float(t.ppf(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def judge_gain(gains: np.ndarray, min_gain: float = LEARNED_MIN_GAIN, confidence: float = 0.95) -> dict:
    """The learning verdict on per-run paired gains: mean and t-interval, `learned` when the mean is at least
    `min_gain` and the interval excludes 0 (LEARNED_RULE), and a one-word `verdict`."""
    gain, low, high = t_interval(gains, confidence)
    resolved = bool(np.isfinite(low) and (low > 0 or high < 0))
    ok = bool(resolved and gain >= min_gain and low > 0)
    n = int(np.isfinite(np.asarray(gains, float)).sum())
    verdict = "learned" if ok else ("one run: no interval" if n < 2 else ("not learned" if resolved or gain < min_gain else "unresolved"))
    return {"gain": gain, "low": low, "high": high, "learned": ok, "verdict": verdict}


def learned(df: pd.DataFrame, metric: str = "presence", min_gain: float = LEARNED_MIN_GAIN, confidence: float = 0.95) -> pd.DataFrame:
    """Per arm and concept: did the method learn it? The paired gain `metric`@1 - `metric`@0 of each training
    run (its own weight 0: the base model, or for Textual Inversion its initializer word), mean over runs
    with a t-interval; learned when the mean is at least `min_gain` and the interval excludes 0 (LEARNED_RULE)."""
    w1 = unit_values(df, metric, 1.0).set_index([*ARM, *UNIT]).value
    w0 = unit_values(df, metric, 0.0).set_index([*ARM, *UNIT]).value
    both = pd.concat({"at_1": w1, "at_0": w0}, axis=1).dropna().reset_index()
    rows = []
    for key, g in both.groupby([*ARM, "concept", "kind"], dropna=False, sort=True):
        rows.append({**dict(zip([*ARM, "concept", "kind"], key)), "metric": metric, "n_runs": len(g), "at_1": g.at_1.mean(), "at_0": g.at_0.mean(),
                     **judge_gain((g.at_1 - g.at_0).to_numpy(), min_gain, confidence)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------- best weight


def split_seeds(seeds: list[int]) -> tuple[list[int], list[int]]:
    """(selection seeds, report seeds): even and odd positions of the sorted generation seeds."""
    seeds = sorted(int(s) for s in seeds)
    return seeds[0::2], seeds[1::2]


def best_weights(df: pd.DataFrame, fidelity: str = "clip_i") -> pd.DataFrame:
    """Per arm: the weight with the best mean `fidelity` on the selection seeds (ties: the smaller |weight|);
    NaN where the curve has no maximum (every weight scores the same, e.g. presence 0 throughout)."""
    q = quality_rows(df)
    q = q[q.metric == fidelity]
    hib = higher_is_better(fidelity)
    rows = []
    for arm, g in q.groupby(ARM, dropna=False, sort=True):
        select, report = split_seeds(g.seed.dropna().unique().tolist())
        if not report:
            continue
        per_weight = g[g.seed.isin(select)].groupby(["weight", *UNIT], dropna=False).value.mean().groupby("weight").mean()
        order = sorted(per_weight.index, key=lambda w: ((-1 if hib else 1) * per_weight[w], abs(w)))
        flat = bool(np.isclose(per_weight.max(), per_weight.min()))
        rows.append({**dict(zip(ARM, arm)), "best_weight": math.nan if flat else float(order[0]), "selected_on": select, "reported_on": report})
    return pd.DataFrame(rows)


def at_best_weight(df: pd.DataFrame, metric: str, best: pd.DataFrame, settings: Settings = Settings()) -> pd.DataFrame:
    """`summarize` of `metric` at each arm's best weight, on the report seeds only."""
    parts = []
    for r in best.itertuples():
        if not np.isfinite(r.best_weight):
            continue  # a flat curve has no best weight to report
        sub = df[(df.model == r.model) & (df.method == r.method) & (df.config == r.config) & (df.sweep == r.sweep)]
        s = summarize(sub, metric, r.best_weight, list(r.reported_on), settings)
        if len(s):
            parts.append(s)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
