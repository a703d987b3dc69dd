"""Regression checks of adapter quality against a stored baseline.

`mode=baseline` turns a run's table into a JSON baseline: per method and metric the value at weight 1
(cost metrics: per run), its 95 % interval where there are several seeds, and the direction. `mode=check`
compares a run with it under per-metric tolerances and exits 0 (all within tolerance), 1 (something
regressed) or 2 (usage error: missing or malformed baseline).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pandas as pd

from bench.io import atomic_write_text
from bench.report import bootstrap_ci
from metrics import higher_is_better, is_frechet

FORMAT = "adapterbench-baseline/1"
# The cost metrics a baseline holds (smaller is better): those that do not depend on the machine.
# Time and memory are left out because CI machines differ.
COST_METRICS = {"artifact_bytes", "trainable_params"}


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


def summarize(df: pd.DataFrame, weight: float = 1.0) -> dict[str, dict[str, dict]]:
    """{method: {metric: {value, ci_low, ci_high, n, higher_is_better}}} from a results table."""
    out: dict[str, dict[str, dict]] = {}
    ok = df[df.status.fillna("ok") == "ok"]
    for (method, metric), g in ok.groupby(["method", "metric"]):
        hib = direction_of(metric)
        if hib is None:
            continue
        if metric in COST_METRICS:
            per_unit = g[g.step.isna()].groupby("run_id").value.mean()
        else:
            at_w = g[np.isclose(g.weight.astype(float), weight)]
            if at_w.empty:
                continue
            per_unit = at_w.groupby(["run_id", "seed"], dropna=False).value.mean()
        mean, lo, hi = bootstrap_ci(per_unit.to_numpy())
        out.setdefault(method, {})[metric] = {"value": mean, "ci_low": lo if math.isfinite(lo) else None, "ci_high": hi if math.isfinite(hi) else None, "n": int(len(per_unit)), "higher_is_better": hib}
    return out


def write_baseline(df: pd.DataFrame, path: Path, weight: float = 1.0) -> dict:
    summary = summarize(df, weight)
    if not summary:
        raise BaselineError(f"baseline: the run has no scored rows to baseline (needs sweep rows at weight {weight})")
    doc = {"format": FORMAT, "weight": weight, "methods": summary}
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
        raise BaselineError(f"baseline: {path} is not an adapterbench baseline (expected format {FORMAT!r})")
    for method, metrics in doc["methods"].items():
        if not isinstance(metrics, dict):
            raise BaselineError(f"baseline: {path}: methods.{method} is not a mapping")
        for metric, entry in metrics.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("value"), (int, float)) or not isinstance(entry.get("higher_is_better"), bool):
                raise BaselineError(f"baseline: {path}: methods.{method}.{metric} needs a numeric 'value' and a boolean 'higher_is_better'")
    return doc


def allowed_move(metric: str, baseline: float, tolerances: dict) -> float:
    """The larger of the metric's absolute and relative tolerance (config `check.tolerances`)."""
    tol = tolerances.get(metric) or (tolerances.get("fd") if is_frechet(metric) else None) or tolerances.get("default") or {}
    return max(float(tol.get("abs", 0.0)), float(tol.get("rel", 0.0)) * abs(baseline))


def compare(doc: dict, df: pd.DataFrame, tolerances: dict) -> list[Comparison]:
    current = summarize(df, float(doc.get("weight", 1.0)))
    out = []
    for method, metrics in sorted(doc["methods"].items()):
        for metric, entry in sorted(metrics.items()):
            now = current.get(method, {}).get(metric, {}).get("value", float("nan"))
            out.append(Comparison(method, metric, float(entry["value"]), float(now), allowed_move(metric, float(entry["value"]), tolerances), bool(entry["higher_is_better"])))
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
