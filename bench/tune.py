"""mode=tune: choose each method's learning rate before comparing, the same way for every method.

Published comparisons tune each method first; otherwise the comparison measures the defaults someone
happened to type. For every method, `tune.factors` x its configured lr is trained on the tuning concepts
(`tune.concepts`, kept out of the evaluation suite) at the tuning seeds, through the same runner, stages
and statistics as a comparison. The chosen lr maximises `tune.objective` at weight 1 (mean over tuning
runs) among those whose drift at weight 1 is at most `tune.max_drift` (if none is, the least drifting).
With `tune.write` the choice is written into conf/method/<name>.yaml, where the comparison reads it, and
the whole grid into results/benchmarks/tuning.md.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from bench import stats, world
from bench.io import atomic_write_text
from methods.base import MethodConfigError

ROOT = Path(__file__).resolve().parents[1]
TUNING_JSON = ROOT / "results" / "benchmarks" / "tuning.json"


def grid_config(cfg: DictConfig) -> tuple[DictConfig, dict[str, tuple[str, float]]]:
    """The tuning comparison's config, and arm name -> (method, lr)."""
    t = cfg.tune
    overlap = set(t.concepts) & set(world.SUITE)
    if overlap:
        raise MethodConfigError(f"tune.concepts: {sorted(overlap)} belong to the evaluation suite; tune on concepts the comparison does not report")
    if len(t.factors) < 3 or any(float(f) <= 0 for f in t.factors):
        raise MethodConfigError(f"tune.factors: need at least 3 positive multiples of the configured lr, got {list(t.factors)}")
    arms, methods = {}, {}
    for name in cfg.method:
        base_lr = float(cfg.method[name].lr)
        for k, factor in enumerate(t.factors):
            arm = f"{name}-lr{k}"
            lr = float(f"{base_lr * float(factor):.3g}")
            methods[arm] = {**OmegaConf.to_container(cfg.method[name], resolve=True), "lr": lr}
            arms[arm] = (name, lr)
    grid = cfg.copy()
    with open_dict(grid):
        grid.method = methods
        grid.data.concepts = list(t.concepts)
        grid.data.path = None
        grid.seeds = list(t.seeds)
        grid.sweep.weights = list(t.weights)
        grid.results_dir = str(Path(cfg.results_dir) / "tune")
    return grid, arms


def tune(cfg: DictConfig) -> int:
    from bench import runner

    grid, arms = grid_config(cfg)
    status, runs = runner.run_comparison(grid)
    table = runner.config_table(Path(grid.results_dir), runs)
    rows = []
    for arm, (name, lr) in arms.items():
        sub = table[table.method == arm]
        obj = stats.unit_values(sub, str(cfg.tune.objective), 1.0).value
        drift = stats.unit_values(sub, "drift", 1.0).value
        rows.append({"method": name, "lr": lr, cfg.tune.objective: obj.mean(), "drift": drift.mean(), "runs": len(obj)})
    grid_table = pd.DataFrame(rows)
    chosen = {}
    for name, g in grid_table.groupby("method", sort=False):
        ok = g[(g.drift <= float(cfg.tune.max_drift)) & g[cfg.tune.objective].notna()]
        pick = ok.loc[ok[cfg.tune.objective].idxmax()] if len(ok) else g.loc[g.drift.idxmin()]
        chosen[name] = float(pick.lr)
    grid_table["chosen"] = [chosen.get(r.method) == r.lr for r in grid_table.itertuples()]
    text = render(cfg, grid_table)
    print(text)
    if cfg.tune.write:
        for name, lr in chosen.items():
            write_lr(ROOT / "conf" / "method" / f"{name}.yaml", lr, cfg)
        atomic_write_text(ROOT / "results" / "benchmarks" / "tuning.md", text)
        record = {"chosen": chosen, "concepts": list(cfg.tune.concepts), "seeds": list(cfg.tune.seeds), "factors": list(cfg.tune.factors),
                  "objective": str(cfg.tune.objective), "max_drift": float(cfg.tune.max_drift), "train": OmegaConf.to_container(cfg.train, resolve=True),
                  "date": datetime.date.today().isoformat(), "grid": grid_table.to_dict("records")}
        atomic_write_text(TUNING_JSON, json.dumps(record, indent=2, default=str))
        print(f"adapterbench: chosen learning rates written to conf/method/*.yaml: {chosen}")
    return status


def render(cfg: DictConfig, grid: pd.DataFrame) -> str:
    t = cfg.tune
    head = (f"# Learning rates chosen by `mode=tune`\n\n"
            f"Tuning concepts {', '.join(t.concepts)} (not in the evaluation suite), training seeds {list(t.seeds)}, "
            f"{cfg.train.steps} steps at batch {cfg.train.batch_size}; grid: {list(t.factors)} x each method's previous lr. "
            f"Chosen: the highest {t.objective} at weight 1 (mean over tuning runs) with drift at weight 1 <= {t.max_drift}. "
            f"Run on {datetime.date.today().isoformat()} with `python run.py mode=tune`.\n\n")
    return head + grid.to_markdown(index=False, floatfmt=".4g") + "\n"


def write_lr(path: Path, lr: float, cfg: DictConfig) -> None:
    """Replace the `lr:` line of a method YAML, saying where the value came from."""
    text = path.read_text()
    note = f"# lr chosen by mode=tune on {', '.join(cfg.tune.concepts)} (results/benchmarks/tuning.md)"
    text = re.sub(r"(?m)^# lr chosen by mode=tune.*\n", "", text)
    new, n = re.subn(r"(?m)^lr:.*$", f"{note}\nlr: {lr:g}", text, count=1)
    if n != 1:
        raise MethodConfigError(f"{path}: no top-level 'lr:' line to write the tuned value into")
    atomic_write_text(path, new)
