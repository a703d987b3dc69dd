"""Regression checks of adapter quality against a stored baseline.

`mode=baseline` turns a run's table into a JSON baseline: per method (and method-config hash) and metric,
each training run's value at weight 1 (concept x training seed; the generation seeds of the sweep averaged
inside), their mean, and the spread across training seeds within a concept. `mode=check` runs the same
comparison and asks, per method and metric, whether the current runs are worse than the baseline's by
more than the metric's margin (`check.tolerances`: a change too small to matter), with a one-sided test:

- **paired** where the check has the baseline's runs (same concept and training seed, hence the same
  instance images, noise and generation seeds): Student's t on the per-run differences;
- **unpaired** otherwise (e.g. other training seeds): the difference of the two means against its standard
  error from the pooled within-concept spread across training seeds (df = runs - concepts on both sides).

Every (method, metric) test of one check is one family: Holm's step-down procedure keeps the chance of
any false alarm in the whole check at most `check.alpha`. A method **regressed** when any of its metrics
is rejected after Holm's correction, or its file grew / its trainable parameters changed (exact checks).
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
    p: float = math.nan  # one-sided p of 'worse than the baseline by more than the margin'
    test: str = ""  # how p was computed (or why nothing was compared)
    p_holm: float = math.nan  # p adjusted by Holm's procedure over the whole check
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


def compare(doc: dict, df: pd.DataFrame, check: dict) -> list[Comparison]:
    """Every baselined (method, metric) against this run's table, tested and Holm-corrected as one family;
    `check` is the `check` config (`alpha`, `tolerances`)."""
    weight = float(doc.get("weight", 1.0))
    current = summarize(df, weight)
    tolerances = check.get("tolerances") or {}
    alpha = float(check.get("alpha", 0.05))
    out = []
    for method, entry in sorted(doc["methods"].items()):
        for metric, m in sorted(entry["metrics"].items()):
            now = current.get(method, {}).get("metrics", {}).get(metric)
            hib = bool(m["higher_is_better"])
            c = Comparison(method, metric, float(m["value"]), float(now["value"]) if now else math.nan, hib, margin(metric, float(m["value"]), tolerances))
            if now is None:
                c.test = "not in this run"
            elif metric in COST_METRICS:
                c.test = "exact"
                c.regressed = (c.baseline - c.current if hib else c.current - c.baseline) > c.margin
            else:
                c.p, c.test = worse_p(_units(m), _units(now), hib, c.margin)
            out.append(c)
    for c, adjusted in zip(out, holm([c.p for c in out])):
        c.p_holm = adjusted
        if math.isfinite(adjusted):
            c.regressed = adjusted <= alpha
    return out


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
                "p (Holm)": c.p_holm,
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
        lines = [f"{c.metric}: baseline {c.baseline:.6g}, current {c.current:.6g}, margin {c.margin:.4g}, {c.test}, p {c.p:.3g}, Holm p {c.p_holm:.3g}: {c.result}"
                 for c in comparisons if c.method == method]
        if decision != "ok":
            failure = ET.SubElement(case, "failure", message=f"{method}: {decision}")
            failure.text = "\n".join(lines)
        else:
            ET.SubElement(case, "system-out").text = "\n".join(lines)
    atomic_write_text(Path(path), ET.tostring(suite, encoding="unicode"))
