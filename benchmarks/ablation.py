"""Which lever does what: the shipped config on the tuning concepts beside one training lever changed at a
time, judged by the oracle.

    python benchmarks/ablation.py --results results/ablation [--write]

Runs (reusing finished stages) the four methods at their shipped config on the tuning concepts
(`tune.concepts`, `tune.seeds`; never the evaluation suite), swept at weights 0 and 1, once as shipped
and once per lever in LEVERS; the training budget comes free from the shipped runs' learning curves
(their checkpoints are the artifacts shorter trainings give: tests/test_curves.py). Prints, per lever and
method, presence at weight 1 (mean over runs [95 % t-interval]), the paired change from the shipped
config run by run, and drift at weight 1.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (lever, overrides): one training lever changed at a time from the shipped config. The budget levers ask
# what more Adam steps give: twice the steps (twice the images seen), and twice the steps at half the
# batch (the same images seen, as SD trainers run: batch 1-2 over many steps).
LEVERS = [("Min-SNR-5 loss weighting off (plain MSE)", "train.snr_gamma=null"),
          ("twice the steps (600 at batch 4)", "train.steps=600"),
          ("twice the steps at half the batch (600 at batch 2: the same images seen)", "train.steps=600 train.batch_size=2")]


def changed_settings(override: str) -> dict[str, str]:
    """{'steps': '600', 'batch_size': '2'} from 'train.steps=600 train.batch_size=2'."""
    return {k.removeprefix("train."): v for k, v in (item.split("=", 1) for item in override.split())}


def run(results: Path, override: str | None) -> None:
    from omegaconf import OmegaConf

    tune = OmegaConf.load(ROOT / "conf" / "tune" / "default.yaml")
    cmd = [sys.executable, "run.py", f"data.concepts=[{','.join(tune.concepts)}]", f"seeds=[{','.join(str(s) for s in tune.seeds)}]",
           "sweep.weights=[0.0,1.0]", f"results_dir={results}", "progress=false", *(override.split() if override else [])]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        sys.exit(f"run.py stopped ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def per_run(table, metric: str):
    from bench import stats

    return stats.unit_values(table, metric, 1.0).set_index(["method", "concept", "train_seed"]).value


def main(argv: list[str] | None = None) -> None:
    from bench.models import skip_bitsandbytes

    skip_bitsandbytes()  # a benchmark never trains with 8-bit AdamW: no bitsandbytes import, no console line about it
    import json

    import pandas as pd
    from omegaconf import OmegaConf

    from bench import records, stats
    from bench.io import publish
    from bench.report import curve_steps

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=ROOT / "results" / "ablation")
    p.add_argument("--write", action="store_true", help="write results/benchmarks/ablation.md")
    p.add_argument("--levers", type=int, default=len(LEVERS), help="run only the first N levers (the rest are left out of the table)")
    args = p.parse_args(argv)
    levers = LEVERS[: args.levers]
    for _, override in [("shipped", None), *levers]:
        run(args.results, override)
    full = records.read_table(args.results, checkpoints=True)
    final = records.final_rows(full)
    shipped_train = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "train" / "default.yaml")).items() if k != "defaults"}
    # Each arm's runs, told apart by the training settings they recorded that differ from the shipped ones.
    arms: dict[frozenset, set] = {}
    for run_json in sorted((args.results / "train").glob("*/run.json")):
        doc = json.loads(run_json.read_text())
        train = doc["config"]["train"]
        changed = frozenset((k, str(v).lower() if v is not None else "null") for k, v in train.items() if k in shipped_train and train[k] != shipped_train[k])
        arms.setdefault(changed, set()).add(doc["run_id"])
    rows = []
    base = final[final.run_id.isin(arms.get(frozenset(), set()))]
    base_presence = per_run(base, "presence")
    steps = int(shipped_train["steps"])

    def add(lever: str, table, paired_with=base_presence):
        presence, drift = per_run(table, "presence"), per_run(table, "drift")
        for method in sorted(presence.index.get_level_values(0).unique()):
            mine = presence.loc[method]
            mean, lo, hi = stats.t_interval(mine.to_numpy())
            diff = (mine - paired_with.loc[method]).dropna() if method in paired_with.index.get_level_values(0) else pd.Series(dtype=float)
            dmean, dlo, dhi = stats.t_interval(diff.to_numpy()) if lever != "shipped" else (np.nan, np.nan, np.nan)
            rows.append({"lever": lever, "method": method, "runs": len(mine), "presence @1": f"{mean:.3f} [{lo:.3f}, {hi:.3f}]",
                         "change from shipped (paired)": "" if lever == "shipped" else f"{dmean:+.3f} [{dlo:+.3f}, {dhi:+.3f}]",
                         "drift @1": f"{drift.loc[method].mean():.3f}"})

    add("shipped", base)
    curve = curve_steps(full[full.run_id.isin(arms.get(frozenset(), set()))])
    for step in sorted(s for s in curve.step.unique() if s < steps):
        add(f"budget: {step} of {steps} steps (checkpoint)", curve[curve.step == step].assign(step=pd.NA))
    for lever, override in levers:
        key = frozenset(changed_settings(override).items())
        if key in arms:
            add(lever, final[final.run_id.isin(arms[key])])
    table = pd.DataFrame(rows)
    text = ("# Ablation: which training lever does what\n\n"
            "The four methods at their shipped config on the tuning concepts (never the evaluation suite), swept at weights 0 and 1, "
            "beside one lever changed at a time: presence at weight 1 (the oracle; mean over training runs [95 % t-interval]), the "
            "change from the shipped config paired run by run, and drift at weight 1. Budget rows are the shipped runs' own "
            "checkpoints (the same training, saved part-way). Made by `python benchmarks/ablation.py --write`.\n\n"
            + table.to_markdown(index=False) + "\n\n"
            + ("".join(f"Not run this time: {lever} (`{override}`).\n" for lever, override in LEVERS[args.levers:]) + "\n" if args.levers < len(LEVERS) else "")
            + "Not re-measured here (each needs a rebuilt zoo, about 1.3 h of pretraining per arm): the world-level levers of the "
            "rebuild (upright shapes instead of rotated ones, objects as taught shapes in unnamed colours instead of new shapes, the "
            "frozen micro-CLIP text tower instead of a jointly trained encoder); their measurements were lost with the branch "
            "they were made on (issue 28).\n")
    publish(text, ROOT / "results" / "benchmarks" / "ablation.md", args.write)


if __name__ == "__main__":
    main()
