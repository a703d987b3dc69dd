"""Regression checks of adapter quality against a stored baseline.

`mode=baseline` turns a run's table into a JSON baseline: per method (and method-config hash) and metric,
each training run's value at weight 1 (concept x training seed; the generation seeds of the sweep averaged
inside), their mean, and the spread across training seeds within a concept. `mode=check` runs the same
comparison and asks, per method and metric, whether the current runs are worse than the baseline's by
more than the metric's margin (`check.tolerances`: a change too small to matter), one-sided, with every
(method, metric) test of one check in one family whose chance of any false alarm is at most `check.alpha`:

- **paired** where the check has the baseline's runs (same concept and training seed, hence the same
  instance images, noise and generation seeds): each test's statistic is Student's t of the per-run
  differences, and the family is controlled by **Romano and Wolf's step-down maxT** over sign flips of
  the runs' centred differences (each run's differences, every method and metric at once, flipped
  together; centred on their means, so every resample holds the null whatever truly changed, and a
  metric that improved cannot hide one that fell). The metrics of a method move together (CLIP-I, CMMD
  and FD read the same images), which maxT uses and Holm's procedure ignores: at the default's six runs
  a method whose CLIP-I fell in every run is caught (p = 1/65 for the family), where Holm over 28 tests
  needed p < 0.0018 from a t-test on five degrees of freedom.
- **unpaired** otherwise (e.g. other training seeds): the difference of the two means over its standard
  error from the pooled within-concept spread, and maxT over permutations of which runs are the
  baseline's, within each concept (all methods and metrics of a run move together).
- a check that mixes both (some methods share the baseline's runs, some do not), or has too few runs for a
  resampling p of `alpha` to exist (two paired runs have four sign flips: p >= 0.25), falls back to
  the t-tests (the margin in their null) with Holm's step-down procedure over the family.

A (method, metric) **regressed** when its family-adjusted p is at most `check.alpha` **and** its mean
is worse than the baseline's by more than the margin (significant, and large enough to matter); a method
regressed when any of its metrics did, or its file grew / its trainable parameters changed (exact checks).
Where the oracle judges, presence (ground truth) is among the checked metrics. Exit 0 (no method
regressed), 1 (a method regressed) or 2 (usage error: missing or malformed baseline).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pandas as pd

from bench import stats
from bench.io import atomic_write_text, folder_error
from bench.stages import plain
from metrics import checked, higher_is_better, is_frechet

FORMAT = "adapterbench-baseline/2"
# The cost metrics a baseline holds (smaller is better): those that do not depend on the machine.
# Time and memory are left out because CI machines differ.
COST_METRICS = {"artifact_bytes", "trainable_params"}
QUALITY_METRICS = checked()  # the declared regression-checked metrics (metrics.REGISTRY), plus every Fréchet distance present
CONFIG_KEYS = ("model", "data", "train", "seeds", "sweep", "metrics", "method")


class BaselineError(ValueError):
    """A missing or malformed baseline file (exit status 2)."""


@dataclass
class Comparison:
    """One (method, metric) test of a check."""

    method: str
    metric: str
    baseline: float
    current: float
    higher_is_better: bool
    margin: float = 0.0  # a move in the bad direction up to this is no regression
    p: float = math.nan  # one-sided p of this test alone ('worse than the baseline')
    test: str = ""  # how p was computed (or why nothing was compared)
    p_adjusted: float = math.nan  # p adjusted over the whole check (maxT, or Holm's procedure: `test` says)
    shortfall: float = math.nan  # mean change in the good direction plus the margin: below 0 is worse than the margin allows
    regressed: bool = False

    @property
    def change(self) -> float:
        return self.current - self.baseline

    @property
    def compared(self) -> bool:
        return math.isfinite(self.baseline) and math.isfinite(self.current)

    @property
    def direction(self) -> str:
        if not self.compared:
            return "-"
        if self.change == 0:
            return "same"
        better = (self.change > 0) == self.higher_is_better
        return "better" if better else "worse"

    @property
    def result(self) -> str:
        if self.regressed:
            return "REGRESSED"
        return "ok" if self.compared else "NOT COMPARED"


def direction_of(metric: str) -> bool | None:
    """Higher is better? None: not a metric a baseline holds."""
    return False if metric in COST_METRICS else higher_is_better(metric)


def within_sd(units: pd.DataFrame) -> float:
    """Pooled within-concept standard deviation of per-run values (across training seeds); with no concept
    having two runs, the standard deviation across all runs; NaN with fewer than two runs."""
    groups = [g.value.to_numpy(float) for _, g in units.groupby("concept")]
    dof = sum(len(g) - 1 for g in groups)
    if dof > 0:
        return float(math.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups) / dof))
    values = units.value.to_numpy(float)
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def summarize(df: pd.DataFrame, weight: float = 1.0) -> dict[str, dict]:
    """{method: {"config": hash, "metrics": {metric: {value, units, within_sd, n_runs, n_concepts, higher_is_better}}}}."""
    ok = df[df.status.fillna("ok") == "ok"]
    out: dict[str, dict] = {}
    metrics = [m for m in ok.metric.dropna().unique() if m in QUALITY_METRICS or is_frechet(m)]
    for metric in metrics:
        units = stats.unit_values(ok, metric, weight)
        for (method, config), g in units.groupby(["method", "config"], dropna=False):
            _put(out, method, config, metric, g)
    cost = ok[ok.metric.isin(COST_METRICS) & ok.step.isna() & ok.weight.isna()]
    for (method, config, metric), g in cost.groupby(["method", "config", "metric"], dropna=False):
        _put(out, method, config, metric, g.groupby(["concept", "train_seed"]).value.mean().reset_index())
    return out


def _put(out: dict, method: str, config, metric: str, units: pd.DataFrame) -> None:
    entry = out.setdefault(str(method), {"config": None if pd.isna(config) else str(config), "metrics": {}})
    if entry["config"] is not None and not pd.isna(config) and str(config) != entry["config"]:
        raise BaselineError(f"baseline: method {method} has rows of two configs ({entry['config']}, {config}); baseline one config per method")
    sd = within_sd(units)
    entry["metrics"][metric] = {
        "value": float(units.value.mean()),
        "units": {f"{r.concept}/{int(r.train_seed)}": float(r.value) for r in units.itertuples()},
        "within_sd": None if not math.isfinite(sd) else sd,
        "n_runs": int(len(units)),
        "n_concepts": int(units.concept.nunique()),
        "higher_is_better": bool(direction_of(metric)),
    }


def output_file_error(path: Path, key: str) -> str | None:
    """Why a file this mode writes at the end (the baseline, the JUnit XML) could not be written there,
    checked before the run's work (None: it can): the verdict must not be lost after the training."""
    path = Path(path).absolute()
    if path.is_dir():
        return f"{key}: {path} is a folder; name a file (e.g. {path / 'baseline.json'})"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{key}: {path} is not writable"
    return folder_error(path.parent, key, path, "written")


def write_baseline(df: pd.DataFrame, path: Path, cfg=None, weight: float = 1.0) -> dict:
    summary = summarize(df, weight)
    if not any(m["metrics"] for m in summary.values()):
        raise BaselineError(f"baseline: the run has no scored rows to baseline (needs sweep rows at weight {weight})")
    doc = {"format": FORMAT, "weight": weight, "methods": summary}
    if cfg is not None:
        doc["config"] = {k: plain(cfg.get(k)) for k in CONFIG_KEYS}
    atomic_write_text(Path(path), json.dumps(doc, indent=2, sort_keys=True))
    return doc


def baseline_concepts(doc: dict) -> list[str]:
    """The concepts a baseline's runs trained on (its unit keys are 'concept/training seed')."""
    return sorted({key.rsplit("/", 1)[0] for m in doc.get("methods", {}).values() for metric in m.get("metrics", {}).values() for key in metric.get("units") or {}})


def read_baseline(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BaselineError(f"baseline: file {path} does not exist (write one with mode=baseline)")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BaselineError(f"baseline: {path} is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("methods"), dict):
        raise BaselineError(f"baseline: {path} is not an adapterbench baseline (expected format {FORMAT!r}; rewrite it with mode=baseline)")
    if not doc["methods"]:
        raise BaselineError(f"baseline: {path} holds no methods; rewrite it with mode=baseline")
    for method, entry in doc["methods"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("metrics"), dict):
            raise BaselineError(f"baseline: {path}: methods.{method} needs a 'metrics' mapping")
        for metric, m in entry["metrics"].items():
            if not isinstance(m, dict) or not isinstance(m.get("value"), (int, float)) or not isinstance(m.get("higher_is_better"), bool):
                raise BaselineError(f"baseline: {path}: methods.{method}.metrics.{metric} needs a numeric 'value' and a boolean 'higher_is_better'")
            if not math.isfinite(m["value"]) or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (m.get("units") or {}).values()):
                raise BaselineError(f"baseline: {path}: methods.{method}.metrics.{metric} holds a value that is not a finite number")
    return doc


def _leaves(value, prefix: str) -> dict[str, object]:
    """A nested config as {dotted key: value}; lists and scalars are leaves."""
    if isinstance(value, dict) and value:
        return {k: v for key, sub in value.items() for k, v in _leaves(sub, f"{prefix}.{key}").items()}
    return {prefix: value}


def config_differences(doc: dict, cfg) -> list[str]:
    """Each config key (dotted, as a user types it) where this check differs from the baseline's run, with
    the baseline's value and this run's: one line each."""
    base = doc.get("config")
    if not base:
        return ["the baseline stores no config; it cannot say whether this check runs the same comparison"]
    missing = "(not set)"
    out = []
    for key in CONFIG_KEYS:
        was, now = _leaves(base.get(key), key), _leaves(plain(cfg.get(key)), key)
        for leaf in sorted(set(was) | set(now)):
            a, b = (json.dumps(d[leaf], sort_keys=True, default=str) if leaf in d else missing for d in (was, now))
            if a != b:
                out.append(f"{leaf} differs from the baseline's: {a} -> {b}")
    return out


def check_settings(check: dict) -> None:
    """The `check` config, before any work: one line naming the key."""
    alpha = check.get("alpha", 0.05)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise BaselineError(f"check.alpha: the family-wise false-alarm rate must be between 0 and 1 (e.g. 0.05), got {alpha!r}")
    for metric, tol in (check.get("tolerances") or {}).items():
        if not isinstance(tol, dict) or not all(k in ("abs", "rel") and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for k, v in tol.items()):
            raise BaselineError(f"check.tolerances.{metric}: a mapping of abs and/or rel to non-negative numbers, got {tol!r}")


def margin(metric: str, baseline: float, tolerances: dict) -> float:
    """The larger of the metric's absolute and relative margin (config `check.tolerances`)."""
    tol = tolerances.get(metric) or (tolerances.get("fd") if is_frechet(metric) else None) or tolerances.get("default") or {}
    return max(float(tol.get("abs", 0.0)), float(tol.get("rel", 0.0)) * abs(baseline))


def _units(entry: dict) -> pd.DataFrame:
    """A baseline metric's per-run values as a frame (concept, train_seed, value)."""
    rows = []
    for key, value in (entry.get("units") or {}).items():
        concept, _, seed = key.rpartition("/")
        rows.append({"concept": concept, "train_seed": int(seed), "value": float(value)})
    return pd.DataFrame(rows, columns=["concept", "train_seed", "value"])


def worse_p(base: pd.DataFrame, now: pd.DataFrame, hib: bool, delta: float) -> tuple[float, str]:
    """One-sided p-value of H1 'now is worse than base by more than `delta`', and how it was computed.

    Paired (Student t on per-run differences) over the runs both have; unpaired (pooled within-concept
    spread) when they share fewer than two runs. A difference with no spread at all is decided exactly."""
    from scipy.stats import t

    sign = 1.0 if hib else -1.0  # 'worse' is a negative signed difference
    both = base.merge(now, on=["concept", "train_seed"], suffixes=("_b", "_c"))
    if len(both) >= 2:
        d = sign * (both.value_c - both.value_b).to_numpy(float)
        shortfall = d.mean() + delta  # below 0: worse by more than the margin
        se = d.std(ddof=1) / math.sqrt(len(d))
        if se == 0:
            return (0.0 if shortfall < 0 else 1.0), f"paired, {len(d)} runs, no spread"
        return float(t.cdf(shortfall / se, len(d) - 1)), f"paired t, {len(d)} runs"
    n_b, n_c = len(base), len(now)
    if n_b < 1 or n_c < 1:
        return math.nan, "no runs"
    sd_pool = within_sd(pd.concat([base.assign(side="b"), now.assign(side="c")]).assign(concept=lambda f: f.concept + "/" + f.side))
    dof = n_b + n_c - base.concept.nunique() - now.concept.nunique()
    shortfall = sign * (now.value.mean() - base.value.mean()) + delta
    if not math.isfinite(sd_pool) or dof < 1:
        return math.nan, f"unpaired, {n_b} vs {n_c} runs: no spread to test with"
    se = sd_pool * math.sqrt(1 / n_b + 1 / n_c)
    if se == 0:
        return (0.0 if shortfall < 0 else 1.0), f"unpaired, {n_b} vs {n_c} runs, no spread"
    return float(t.cdf(shortfall / se, dof)), f"unpaired t, {n_b} vs {n_c} runs"


def holm(p: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted in the family)."""
    idx = [i for i, v in enumerate(p) if math.isfinite(v)]
    m = len(idx)
    out = [math.nan] * len(p)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: p[i])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def exact_check(base: pd.DataFrame, now: pd.DataFrame, hib: bool, margin: float) -> tuple[str, bool]:
    """A machine-independent cost (file bytes, trainable parameters), compared concept by concept: a file
    holds its concept's name, so means over different mixes of concepts differ by a few bytes without
    anything having grown. Regressed when any shared concept's mean got worse by more than the margin."""
    b, n = base.groupby("concept").value.mean(), now.groupby("concept").value.mean()
    shared = b.index.intersection(n.index)
    if len(shared):
        worse = ((b[shared] - n[shared]) if hib else (n[shared] - b[shared])).max()
        return f"exact, {len(shared)} concept(s)", bool(worse > margin)
    worse = (b.mean() - n.mean()) if hib else (n.mean() - b.mean())
    return "exact, over all runs (no shared concept)", bool(worse > margin)


MAX_RESAMPLES = 4096  # all sign flips / permutations up to this many; else this many drawn (seeded) at random


def _t_worse(x: np.ndarray) -> np.ndarray:
    """Per column of `x` (runs x tests, NaN where a run lacks a test): Student's t of 'the mean is below 0'
    (a positive t: worse). No spread: 0 for a mean of 0, +-inf otherwise (an exact decision)."""
    n = np.sum(np.isfinite(x), axis=-2)
    mean = np.nanmean(x, axis=-2)
    sd = np.nanstd(x, axis=-2, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = -mean / (sd / np.sqrt(n))
    out = np.where(sd > 0, out, np.where(mean == 0, 0.0, np.where(mean < 0, np.inf, -np.inf)))
    return np.where(n >= 2, out, np.nan)


def _step_down_maxt(observed: np.ndarray, resampled: np.ndarray, observed_among_resamples: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Step-down maxT: (raw p, adjusted p) per test from `observed` statistics [tests] and the statistics of
    every resample [resamples x tests]. `observed_among_resamples`: the observed data is one of the
    resamples (Westfall and Young's permutations: p = share of resamples at least as large); otherwise the
    resamples are of data with the null imposed (Romano and Wolf's centring) and p = (1 + count) / (1 +
    resamples). NaN statistics are left out of the family."""
    tests = np.flatnonzero(~np.isnan(observed))  # +-inf: a change with no spread, decided like any other
    raw, adjusted = np.full(observed.shape, np.nan), np.full(observed.shape, np.nan)
    if not len(tests):
        return raw, adjusted
    null = np.nan_to_num(resampled[:, tests], nan=-np.inf, posinf=np.inf, neginf=-np.inf)  # a test a resample cannot form counts as no evidence
    extra = 0 if observed_among_resamples else 1

    def share(at_least: np.ndarray) -> np.ndarray:
        return (np.sum(at_least, axis=0) + extra) / (len(null) + extra)

    raw[tests] = share(null >= observed[tests])
    # Hypotheses from the largest observed statistic down; the k-th is judged against the maximum, per
    # resample, over itself and every hypothesis after it: a running maximum from the last one back.
    order = np.argsort(-observed[tests], kind="stable")
    successive = np.maximum.accumulate(null[:, order[::-1]], axis=1)[:, ::-1]
    p = share(successive >= observed[tests][order])
    adjusted[tests[order]] = np.maximum.accumulate(p)  # adjusted p never falls down the list
    return raw, adjusted


def _rounding_floor(values: np.ndarray, relative: float) -> np.ndarray:
    """Per test (column of `values`: runs x tests), the size below which a difference or spread computed
    from those values is float rounding, not data: `relative` times their largest magnitude."""
    scale = np.nanmax(np.abs(values), axis=0, initial=0.0) if values.size else np.ones(values.shape[1:])
    return relative * np.maximum(scale, 1e-12)


def _sign_flips(n: int, rng: np.random.Generator) -> np.ndarray:
    """Every pattern of n signs (the identity first), or MAX_RESAMPLES of them drawn at random."""
    if 2 ** n <= MAX_RESAMPLES:
        return 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
    return np.vstack([np.ones(n, int), rng.choice([-1, 1], size=(MAX_RESAMPLES - 1, n))])


def _paired_maxt(pairs: list[tuple[pd.DataFrame, bool]]) -> tuple[np.ndarray, np.ndarray, int]:
    """Sign-flip maxT over paired tests; `pairs`: per test its merged (concept, train_seed, value_b, value_c)
    frame and direction. Runs are flipped together across tests (by concept and training seed)."""
    keys = sorted({(r.concept, int(r.train_seed)) for both, _ in pairs for r in both.itertuples()})
    index = {k: i for i, k in enumerate(keys)}
    d = np.full((len(keys), len(pairs)), np.nan)
    for j, (both, hib) in enumerate(pairs):
        sign = 1.0 if hib else -1.0  # 'worse' is a negative signed difference
        for r in both.itertuples():
            d[index[(r.concept, int(r.train_seed))], j] = sign * (r.value_c - r.value_b)
    flips = _sign_flips(len(keys), np.random.default_rng(0))
    # Romano and Wolf: the sign flips act on each test's differences centred on their mean, so the null
    # holds in every resample whatever the true changes are. Flipping the raw differences (Westfall and
    # Young) turns a metric that clearly improved into a clearly "worse" one in the flipped resamples,
    # and that maximum hid a real fall: DreamBooth at a tenth of its learning rate lost presence and
    # CLIP-I in all six runs while its drift and CLIP-T improved in all six, family p 0.0625.
    centred = d - np.nanmean(d, axis=0)
    centred = np.where(np.abs(centred) <= _rounding_floor(d, 1e-9), 0.0, centred)  # equal runs: no spread left, not 1e-17
    resampled = _t_worse(flips[:, :, None] * centred[None, :, :])
    raw, adjusted = _step_down_maxt(_t_worse(d), resampled, observed_among_resamples=False)
    return raw, adjusted, len(flips)


def _within_concept_t(values: np.ndarray, is_now: np.ndarray, concept: np.ndarray) -> np.ndarray:
    """Per labelling (rows of `is_now`: resamples x runs, True for the check's runs) and test (columns of
    `values`: runs x tests, NaN where a run lacks a test): the unpaired t of 'now worse than the baseline',
    the difference of the two means over its standard error from the pooled within-concept spread of both
    sides (each concept's runs on each side a group). All labellings at once, as sums over groups."""
    present = np.isfinite(values).astype(float)
    v = np.nan_to_num(values)
    onehot = (concept[:, None] == np.unique(concept)[None, :]).astype(float)  # runs x concepts
    out = {}
    for side, labels in (("now", is_now.astype(float)), ("base", (~is_now).astype(float))):
        n = np.einsum("rn,nk,nt->rkt", labels, onehot, present)
        s = np.einsum("rn,nk,nt->rkt", labels, onehot, v)
        sq = np.einsum("rn,nk,nt->rkt", labels, onehot, v * v)
        with np.errstate(divide="ignore", invalid="ignore"):
            ss = np.where(n > 0, sq - s * s / np.where(n > 0, n, 1), 0.0)
        out[side] = (n.sum(axis=1), s.sum(axis=1), np.clip(ss, 0, None).sum(axis=1), np.clip(n - 1, 0, None).sum(axis=1))
    (n_now, s_now, ss_now, dof_now), (n_base, s_base, ss_base, dof_base) = out["now"], out["base"]
    dof = dof_now + dof_base
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = np.sqrt((ss_now + ss_base) / dof)
        diff = s_now / n_now - s_base / n_base
        t_now = -diff / (sd * np.sqrt(1 / n_now + 1 / n_base))
    # Float sums leave ~1e-17 where a group's runs are equal: spread below that of the values' scale is none.
    flat = ~(sd > _rounding_floor(values, 1e-9))
    diff = np.where(np.abs(diff) <= _rounding_floor(values, 1e-12), 0.0, diff)
    t_now = np.where(flat, np.where(diff == 0, 0.0, np.where(diff < 0, np.inf, -np.inf)), t_now)
    return np.where((dof >= 1) & (n_now >= 1) & (n_base >= 1), t_now, np.nan)


def _unpaired_maxt(sides: list[tuple[pd.DataFrame, pd.DataFrame, bool]]) -> tuple[np.ndarray, np.ndarray, int]:
    """Permutation maxT over unpaired tests: which runs of a concept are the baseline's is permuted within
    the concept, every method and metric of a run (concept, training seed, side) moving together."""
    import itertools

    keys = sorted({(r.concept, int(r.train_seed), side) for base, now, _ in sides for side, f in (("b", base), ("c", now)) for r in f.itertuples()})
    index = {k: i for i, k in enumerate(keys)}
    values = np.full((len(keys), len(sides)), np.nan)
    for j, (base, now, hib) in enumerate(sides):
        sign = 1.0 if hib else -1.0
        for side, f in (("b", base), ("c", now)):
            for r in f.itertuples():
                values[index[(r.concept, int(r.train_seed), side)], j] = sign * r.value
    concept = np.array([k[0] for k in keys])
    observed = np.array([k[2] == "c" for k in keys])
    # Every relabelling within concepts (the observed one first), or MAX_RESAMPLES drawn at random.
    per_concept = []
    for c in dict.fromkeys(concept):
        members = np.flatnonzero(concept == c)
        per_concept.append((members, int(observed[members].sum())))
    total = math.prod(math.comb(len(m), k) for m, k in per_concept)
    rng = np.random.default_rng(0)
    if total <= MAX_RESAMPLES:
        choices = itertools.product(*[itertools.combinations(m, k) for m, k in per_concept])
        labels = []
        for choice in choices:
            row = np.zeros(len(keys), bool)
            for picked in choice:
                row[list(picked)] = True
            labels.append(row)
        labels.sort(key=lambda row: not np.array_equal(row, observed))
    else:
        labels = [observed]
        for _ in range(MAX_RESAMPLES - 1):
            row = np.zeros(len(keys), bool)
            for m, k in per_concept:
                row[rng.choice(m, size=k, replace=False)] = True
            labels.append(row)
    labels = np.array(labels)
    resampled = _within_concept_t(values, labels, concept)
    raw, adjusted = _step_down_maxt(resampled[0], resampled)
    return raw, adjusted, len(labels)


def compare(doc: dict, df: pd.DataFrame, check: dict) -> list[Comparison]:
    """Every baselined (method, metric) against this run's table, tested as one family (module docstring);
    `check` is the `check` config (`alpha`, `tolerances`)."""
    weight = float(doc.get("weight", 1.0))
    current = summarize(df, weight)
    tolerances = check.get("tolerances") or {}
    alpha = float(check.get("alpha", 0.05))
    out, tested = [], []
    for method, entry in sorted(doc["methods"].items()):
        for metric, m in sorted(entry["metrics"].items()):
            now = current.get(method, {}).get("metrics", {}).get(metric)
            hib = bool(m["higher_is_better"])
            c = Comparison(method, metric, float(m["value"]), float(now["value"]) if now else math.nan, hib, margin(metric, float(m["value"]), tolerances))
            if now is None:
                c.test = "not in this run"
            elif metric in COST_METRICS:
                c.test, c.regressed = exact_check(_units(m), _units(now), hib, c.margin)
            else:
                c.shortfall = (c.change if hib else -c.change) + c.margin
                base, cur = _units(m), _units(now)
                tested.append((c, base, cur, base.merge(cur, on=["concept", "train_seed"], suffixes=("_b", "_c"))))
            out.append(c)
    done = False
    if tested and all(len(both) >= 2 for *_, both in tested):
        raw, adjusted, n = _paired_maxt([(both, c.higher_is_better) for c, _, _, both in tested])
        if alpha * (n + 1) >= 1:  # enough sign flips for a p of alpha to exist (p >= 1 / (flips + 1); 2 runs give 4)
            for (c, _, _, both), p, q in zip(tested, raw, adjusted):
                c.p, c.p_adjusted, c.test = float(p), float(q), f"paired t, {len(both)} runs; maxT over {n} sign flips"
            done = True
    elif tested and all(len(both) < 2 for *_, both in tested):
        raw, adjusted, n = _unpaired_maxt([(base, cur, c.higher_is_better) for c, base, cur, _ in tested])
        if n * alpha >= 1:
            for (c, base, cur, _), p, q in zip(tested, raw, adjusted):
                c.p, c.p_adjusted, c.test = float(p), float(q), f"unpaired t, {len(base)} vs {len(cur)} runs; maxT over {n} permutations"
            done = True
    if not done:
        # Runs paired for some methods and not others, or too few runs for a resampling p of alpha to
        # exist: the t-tests (margin included) with Holm's procedure, which lean on normality instead.
        for c, base, cur, _ in tested:
            c.p, c.test = worse_p(base, cur, c.higher_is_better, c.margin)
            c.test += "; Holm"
        for (c, *_), adjusted in zip(tested, holm([c.p for c, *_ in tested])):
            c.p_adjusted = adjusted
    for c, *_ in tested:
        c.regressed = bool(math.isfinite(c.p_adjusted) and c.p_adjusted <= alpha and c.shortfall < 0)
    return out


def family_procedure(comparisons: list[Comparison]) -> str:
    """How the check's family was controlled, for the console's last line."""
    tests = " ".join(c.test for c in comparisons)
    if "sign flips" in tests:
        return "Romano-Wolf step-down maxT over sign flips of the paired runs' centred differences"
    if "permutations" in tests:
        return "Westfall-Young step-down maxT over permutations of the runs within concepts"
    return "Holm's step-down procedure"


def method_decisions(comparisons: list[Comparison]) -> dict[str, str]:
    """One decision per method: 'REGRESSED' (naming the metrics), 'ok', or 'NOT COMPARED' (naming why)."""
    out = {}
    for method in dict.fromkeys(c.method for c in comparisons):
        mine = [c for c in comparisons if c.method == method]
        bad = [c.metric for c in mine if c.regressed]
        missing = [c.metric for c in mine if not c.compared]
        out[method] = f"REGRESSED ({', '.join(bad)})" if bad else ("ok" if not missing else f"NOT COMPARED ({', '.join(missing)})")
    return out


def format_comparisons(comparisons: list[Comparison]) -> str:
    table = pd.DataFrame(
        [
            {
                "method": c.method,
                "metric": c.metric,
                "baseline": c.baseline,
                "current": c.current,
                "change": c.change,
                "margin": c.margin,
                "test": c.test,
                "p": c.p,
                "p (family)": c.p_adjusted,
                "direction": c.direction,
                "result": c.result,
            }
            for c in comparisons
        ]
    )
    return table.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def write_junit(comparisons: list[Comparison], path: Path) -> None:
    """One test case per method (its decision), with each metric's line in the case's text."""
    decisions = method_decisions(comparisons)
    failed = [m for m, d in decisions.items() if d != "ok"]
    suite = ET.Element("testsuite", name="adapterbench.regression", tests=str(len(decisions)), failures=str(len(failed)))
    for method, decision in decisions.items():
        case = ET.SubElement(suite, "testcase", classname="adapterbench.regression", name=method)
        lines = [f"{c.metric}: baseline {c.baseline:.6g}, current {c.current:.6g}, margin {c.margin:.4g}, {c.test}, p {c.p:.3g}, family-adjusted p {c.p_adjusted:.3g}: {c.result}"
                 for c in comparisons if c.method == method]
        if decision != "ok":
            failure = ET.SubElement(case, "failure", message=f"{method}: {decision}")
            failure.text = "\n".join(lines)
        else:
            ET.SubElement(case, "system-out").text = "\n".join(lines)
    atomic_write_text(Path(path), ET.tostring(suite, encoding="unicode"))
