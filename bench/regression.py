"""Regression checks of adapter quality against a stored baseline.

`mode=baseline` turns a run's table into a JSON baseline: per method (and method-config hash) and metric,
each training run's value at weight 1 (concept x training seed; generation seeds averaged inside), their
mean, and the spread across training seeds within a concept. `mode=check` runs the same comparison and
compares the new mean with the baseline's.

The allowance comes from that measured spread, not from fixed numbers: a difference of two means of
n_b and n_c runs, matched by concept, has standard error s_w * sqrt(1/n_b + 1/n_c), where s_w is the
pooled within-concept standard deviation across training seeds (across all runs when no concept has two
seeds). A metric regresses when it moves in its bad direction by more than the one-sided Student-t
quantile (`check.confidence`, df = baseline runs - concepts) times that error, and by more than the
floor in `check.tolerances` (which keeps numerical noise from failing a check with no spread). File size
and trainable parameters are exact. Exit 0 (within allowance), 1 (something regressed) or 2 (usage
error: missing or malformed baseline).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pandas as pd

from bench import stats
from bench.stages import plain
from bench.io import atomic_write_text
from metrics import higher_is_better, is_frechet

FORMAT = "adapterbench-baseline/2"
# The cost metrics a baseline holds (smaller is better): those that do not depend on the machine.
# Time and memory are left out because CI machines differ.
COST_METRICS = {"artifact_bytes", "trainable_params"}
QUALITY_METRICS = ("clip_i", "clip_t", "drift", "cmmd")  # plus every Fréchet distance present
CONFIG_KEYS = ("model", "data", "train", "seeds", "sweep", "metrics", "method")


class BaselineError(ValueError):
    """A missing or malformed baseline file (exit status 2)."""


@dataclass
class Comparison:
    method: str
    metric: str
    baseline: float
    current: float
    allowed: float  # how far it may move in the bad direction
    higher_is_better: bool
    basis: str = ""  # how `allowed` was set, for the printed table

    @property
    def change(self) -> float:
        return self.current - self.baseline

    @property
    def regressed(self) -> bool:
        if not math.isfinite(self.current):
            return True
        worse_by = -self.change if self.higher_is_better else self.change
        return worse_by > self.allowed

    @property
    def direction(self) -> str:
        if self.change == 0:
            return "same"
        better = (self.change > 0) == self.higher_is_better
        return "better" if better else "worse"


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


def write_baseline(df: pd.DataFrame, path: Path, cfg=None, weight: float = 1.0) -> dict:
    summary = summarize(df, weight)
    if not any(m["metrics"] for m in summary.values()):
        raise BaselineError(f"baseline: the run has no scored rows to baseline (needs sweep rows at weight {weight})")
    doc = {"format": FORMAT, "weight": weight, "methods": summary}
    if cfg is not None:
        doc["config"] = {k: plain(cfg.get(k)) for k in CONFIG_KEYS}
    atomic_write_text(Path(path), json.dumps(doc, indent=2, sort_keys=True))
    return doc


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
    for method, entry in doc["methods"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("metrics"), dict):
            raise BaselineError(f"baseline: {path}: methods.{method} needs a 'metrics' mapping")
        for metric, m in entry["metrics"].items():
            if not isinstance(m, dict) or not isinstance(m.get("value"), (int, float)) or not isinstance(m.get("higher_is_better"), bool):
                raise BaselineError(f"baseline: {path}: methods.{method}.metrics.{metric} needs a numeric 'value' and a boolean 'higher_is_better'")
    return doc


def config_differences(doc: dict, cfg) -> list[str]:
    """The config keys where this check differs from the baseline's run (each a line to print)."""
    base = doc.get("config")
    if not base:
        return ["the baseline stores no config; it cannot say whether this check runs the same comparison"]
    out = []
    for key in CONFIG_KEYS:
        now = plain(cfg.get(key))
        if json.dumps(now, sort_keys=True, default=str) != json.dumps(base.get(key), sort_keys=True, default=str):
            out.append(f"{key} differs from the baseline's ({json.dumps(base.get(key), default=str)[:120]} -> {json.dumps(now, default=str)[:120]})")
    return out


def floor(metric: str, baseline: float, tolerances: dict) -> float:
    """The larger of the metric's absolute and relative floor (config `check.tolerances`)."""
    tol = tolerances.get(metric) or (tolerances.get("fd") if is_frechet(metric) else None) or tolerances.get("default") or {}
    return max(float(tol.get("abs", 0.0)), float(tol.get("rel", 0.0)) * abs(baseline))


def allowance(entry: dict, n_current: int, metric: str, check: dict) -> tuple[float, str]:
    """(allowed move in the bad direction, how it was set)."""
    base_floor = floor(metric, float(entry["value"]), check.get("tolerances") or {})
    sd, n_b = entry.get("within_sd"), int(entry.get("n_runs") or 0)
    if metric in COST_METRICS or sd is None or n_b < 2 or n_current < 1:
        return base_floor, "floor"
    from scipy.stats import t

    dof = max(1, n_b - int(entry.get("n_concepts") or 1))
    q = float(t.ppf(float(check.get("confidence", 0.99)), dof))
    spread = q * float(sd) * math.sqrt(1 / n_b + 1 / n_current)
    return (spread, f"t={q:.2f} x sd {sd:.3g}") if spread >= base_floor else (base_floor, "floor")


def compare(doc: dict, df: pd.DataFrame, check: dict) -> list[Comparison]:
    """Every baselined (method, metric) against this run's table; `check` is the `check` config."""
    current = summarize(df, float(doc.get("weight", 1.0)))
    out = []
    for method, entry in sorted(doc["methods"].items()):
        for metric, m in sorted(entry["metrics"].items()):
            now = current.get(method, {}).get("metrics", {}).get(metric, {})
            allowed, basis = allowance(m, int(now.get("n_runs", 0)), metric, check)
            out.append(Comparison(method, metric, float(m["value"]), float(now.get("value", float("nan"))), allowed, bool(m["higher_is_better"]), basis))
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
                "allowed": c.allowed,
                "from": c.basis,
                "direction": c.direction,
                "result": "REGRESSED" if c.regressed else "ok",
            }
            for c in comparisons
        ]
    )
    return table.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def write_junit(comparisons: list[Comparison], path: Path) -> None:
    suite = ET.Element("testsuite", name="adapterbench.regression", tests=str(len(comparisons)), failures=str(sum(c.regressed for c in comparisons)))
    for c in comparisons:
        case = ET.SubElement(suite, "testcase", classname=f"adapterbench.{c.method}", name=c.metric)
        if c.regressed:
            failure = ET.SubElement(case, "failure", message=f"{c.metric} moved {c.change:+.4g} ({c.direction}); allowed {c.allowed:.4g}")
            failure.text = f"baseline {c.baseline:.6g}, current {c.current:.6g}, higher_is_better={c.higher_is_better}"
    atomic_write_text(Path(path), ET.tostring(suite, encoding="unicode"))
