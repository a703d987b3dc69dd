"""How the report names what it shows: an arm (model, method, config, sweep) by its method and, where a method has several configs, by what differs ('lora rank=16'); the runs' recorded configs."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench import stages, stats
from bench.plots import method_rank

log = logging.getLogger(__name__)


def ordered(methods) -> list[str]:
    return sorted(set(methods), key=method_rank)



def _flat(d, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return out



def config_descriptions(runs: list[dict]) -> dict[str, str]:
    """Config hash -> the hyper-parameters that tell it apart from the same method's other configs in these
    runs, e.g. 'rank=16' for a `method.lora.rank=1,4,16` multirun (a family of one method)."""
    by_method: dict[str, dict[str, dict]] = {}
    for r in runs:
        method, config = r.get("method"), r.get("config") or {}
        mcfg = (config.get("method") or {}).get(method)
        if method and isinstance(mcfg, dict):
            # The method's keys as they are ('rank=16'); the training settings and the model prefixed ('train.steps=40').
            flat = {**_flat(mcfg), **_flat(config.get("train"), "train."), **_flat(config.get("model"), "model.")}
            by_method.setdefault(method, {})[stages.recorded_config_hash(config, method)] = flat
    out = {}
    for configs in by_method.values():
        if len(configs) < 2:
            continue
        keys = sorted({k for c in configs.values() for k in c})
        differ = [k for k in keys if len({c.get(k) for c in configs.values()}) > 1 and not k.endswith("_target_")]
        for h, c in configs.items():
            out[h] = ", ".join(f"{k.removeprefix('adapter.')}={c.get(k, '-')}" for k in differ)
    return out



def arm_labels(df: pd.DataFrame, descriptions: Mapping[str, str] | None = None) -> dict[tuple, str]:
    """A readable name per (model, method, config, sweep): the method, plus what tells arms apart (the
    differing hyper-parameters, `descriptions` by config hash (`config_descriptions`), else the hash)."""
    keys = {tuple(None if pd.isna(x) else x for x in r) for r in df[stats.ARM].dropna(subset=["method"]).itertuples(index=False)}
    many_models = len({k[0] for k in keys}) > 1
    configs = pd.Series([k[2] for k in keys]).groupby([k[1] for k in keys]).nunique() if keys else pd.Series(dtype=int)
    many_sweeps = len({k[3] for k in keys if isinstance(k[3], str)}) > 1
    described = descriptions or {}
    out = {}
    for model, method, config, sweep in keys:
        label = method
        if configs.get(method, 1) > 1:
            label += f" {described[config]}" if described.get(config) else f" [{config}]"
        if many_models:
            label = f"{model}: {label}"
        if many_sweeps and isinstance(sweep, str):
            label += f" (sweep {sweep})"
        out[(model, method, config, sweep)] = label
    return out



@dataclass(frozen=True)
class ReportContext:
    """What every table and figure of one report reads besides its rows, made once per report: the
    statistics settings, and how arms are named (what tells a method's configs apart, from the runs'
    recorded configs: 'lora rank=16', not a config hash)."""

    settings: stats.Settings = field(default_factory=stats.Settings)
    descriptions: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of_runs(cls, runs: list[dict], settings: stats.Settings | None = None) -> "ReportContext":
        return cls(settings or stats.Settings(), config_descriptions(runs))

    def labels(self, df: pd.DataFrame) -> dict[tuple, str]:
        return arm_labels(df, self.descriptions)



def label_of(labels: dict, model, method, config, sweep=None) -> str:
    sweep = None if sweep is None or pd.isna(sweep) else sweep
    candidates = [(sw, text) for (mo, me, co, sw), text in labels.items() if (mo, me, co) == (model, method, config)]
    for sw, text in candidates:
        if sw == sweep:
            return text
    return candidates[0][1] if candidates else str(method)



def run_records(results_dirs: list[Path]) -> list[dict]:
    """Every training run's run.json (resolved config, commit, packages, hardware, date)."""
    out = []
    for d in results_dirs:
        for f in sorted(Path(d).glob("train/*/run.json")):
            try:
                out.append(json.loads(f.read_text()))
            except (OSError, json.JSONDecodeError) as e:
                log.warning("skipping unreadable %s: %s", f, e)
    return out
