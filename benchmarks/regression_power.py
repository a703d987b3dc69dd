"""Does `mode=check` tell a broken method from a harmless change? Runs the check as CI would, and
estimates its false-alarm rate and the drops it can see.

    python benchmarks/regression_power.py --work results/power                  # the scenarios
    python benchmarks/regression_power.py --work results/power --suite results/suite --write

1. A baseline of the default comparison (`mode=baseline`), then `mode=check` against it under harmless
   changes — a rerun in a fresh results dir, another set of training seeds, another thread layout
   (`threads=2 workers=1`, fresh dir) — and broken methods: LoRA and DreamBooth each at a tenth of their
   learning rate (in the baseline's results dir, so the unchanged methods reuse their runs, as a CI job
   with a cached results dir would). Each must pass, or fail naming exactly the broken method.
2. With `--suite` (the results dir of `python benchmarks/comparison.py --data suite --results DIR`):
   the false-alarm rate of one check, estimated by splitting the suite's runs at random, per concept,
   into a "baseline" and a "check" half (the same config both sides: every alarm is false), and the
   smallest drop in presence a check detects with 80 % power for a given number of runs a side.
"""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DECISION = re.compile(r"^adapterbench: (\w+): (ok|REGRESSED.*|NOT COMPARED.*)$", re.M)


def run(args: list[str]) -> tuple[int, str, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "run.py", "progress=false", *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        sys.exit(f"run.py {' '.join(args)} stopped ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc.returncode, proc.stdout, time.perf_counter() - start


def method_lr(name: str) -> float:
    from omegaconf import OmegaConf

    return float(OmegaConf.load(ROOT / "conf" / "method" / f"{name}.yaml").lr)


def scenarios(work: Path, shared: Path) -> list[tuple[str, str | None, Path, list[str]]]:
    """(name, the method that must fail or None, results dir, overrides); `shared`: the baseline's results dir."""
    return [
        ("rerun in a fresh results dir", None, work / "rerun", []),
        ("other training seeds [100, 101, 102]", None, shared, ["seeds=[100,101,102]"]),
        ("threads=2 workers=1 (fresh results dir)", None, work / "threads2", ["threads=2", "workers=1"]),
        (f"LoRA at a tenth of its lr ({method_lr('lora') / 10:g})", "lora", shared, [f"method.lora.lr={method_lr('lora') / 10:g}"]),
        (f"DreamBooth at a tenth of its lr ({method_lr('dreambooth') / 10:g})", "dreambooth", shared, [f"method.dreambooth.lr={method_lr('dreambooth') / 10:g}"]),
    ]


def scenario_table(work: Path, shared: Path):
    import pandas as pd

    baseline = work / "baseline.json"
    _, _, seconds = run(["mode=baseline", f"baseline={baseline}", f"results_dir={shared}"])
    print(f"baseline written in {seconds:.0f} s", flush=True)
    rows = []
    for name, broken, results, overrides in scenarios(work, shared):
        slug = re.sub(r"\W+", "_", name)[:40]
        code, out, seconds = run(["mode=check", f"baseline={baseline}", f"results_dir={results}", f"check.junit={work / (slug + '.xml')}", *overrides])
        decisions = dict(DECISION.findall(out))
        failed = sorted(m for m, d in decisions.items() if d != "ok")
        expected = [broken] if broken else []
        rows.append({"change": name, "must fail": broken or "none", "exit": code,
                     **{m: d for m, d in decisions.items()},
                     "as it must": "yes" if failed == expected and code == (1 if broken else 0) else "NO", "seconds (finished stages reused)": round(seconds)})
        print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def regressed_methods(base, checked, check: dict, drop: tuple[str, float] | None = None) -> set[str]:
    """The methods one check flags: a baseline made from `base`'s rows, the check run on `checked`'s, with
    `drop` (method, d) lowering that method's presence by d in every checked run (a broken method of known size)."""
    from bench import regression

    if drop is not None:
        hit = (checked.method == drop[0]) & (checked.metric == "presence")
        checked = checked.assign(value=checked.value.where(~hit, checked.value - drop[1]))
    doc = {"format": regression.FORMAT, "weight": 1.0, "methods": regression.summarize(base)}
    return {c.method for c in regression.compare(doc, checked, check) if c.regressed}


def split_alarms(table, check: dict, replicates: int, seed: int = 0, drop: tuple[str, float] | None = None):
    """False alarms of one check under the null: per replicate, each concept's training runs split at
    random into a baseline half and a check half (sizes as even as the count allows), the baseline made
    from one and the check run on the other. Returns per replicate the set of methods that 'regressed'.
    `drop` (method, d): the check half's presence of that method lowered by d in every run, a broken
    method of known size, to measure power the same way."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    units = table[["concept", "train_seed"]].dropna().drop_duplicates()
    by_concept = {c: sorted(g.train_seed.astype(int)) for c, g in units.groupby("concept")}
    unit = pd.Series(list(zip(table.concept, table.train_seed.fillna(-1).astype(int))), index=table.index)
    out = []
    for _ in range(replicates):
        base_keys, check_keys = [], []
        for concept, seeds in by_concept.items():
            seeds = list(rng.permutation(seeds))
            k = len(seeds) // 2 if rng.random() < 0.5 else len(seeds) - len(seeds) // 2
            base_keys += [(concept, s) for s in seeds[:k]]
            check_keys += [(concept, s) for s in seeds[k:]]
        out.append(regressed_methods(table[unit.isin(set(base_keys)).to_numpy()], table[unit.isin(set(check_keys)).to_numpy()], check, drop))
    return out


def paired_split_alarms(table, check: dict, replicates: int, seed: int = 0, drop: tuple[str, float] | None = None):
    """The paired check under the null: per replicate and concept, its training runs shuffled and paired
    off (as many disjoint pairs as it has runs, halved), one of each pair the baseline's and the other
    relabelled with the baseline's training seed, so that the check pairs them as a CI check pairs a
    rerun of the baseline's runs (two independent trainings of one concept: their difference is
    symmetric about 0 when nothing changed). `drop` as in split_alarms."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    units = table[["concept", "train_seed"]].dropna().drop_duplicates()
    by_concept = {c: sorted(g.train_seed.astype(int)) for c, g in units.groupby("concept") if len(g) >= 2}
    unit = pd.Series(list(zip(table.concept, table.train_seed.fillna(-1).astype(int))), index=table.index)
    out = []
    for _ in range(replicates):
        base_keys, relabel = [], {}
        for concept, seeds in by_concept.items():
            shuffled = [int(x) for x in rng.permutation(seeds)]
            for a, b in zip(shuffled[0::2], shuffled[1::2]):
                base_keys.append((concept, a))
                relabel[(concept, b)] = a
        mask = unit.isin(set(relabel)).to_numpy()
        out.append(regressed_methods(table[unit.isin(set(base_keys)).to_numpy()], table[mask].assign(train_seed=[relabel[k] for k in unit[mask]]), check, drop))
    return out


def drop_power(table, check: dict, replicates: int, splits) -> list[dict]:
    """Per method and drop (0.25, 0.5 of presence in every check run): how often `splits` (split_alarms or
    paired_split_alarms) flags that method, and how often another method beside it."""
    rows = []
    for method in sorted(table.method.dropna().unique()):
        row = {"method": method}
        for d in (0.25, 0.5):
            hits = splits(table, check, replicates, seed=1, drop=(method, d))
            row[f"drop {d:g}: caught"] = f"{sum(method in h for h in hits) / len(hits):.0%}"
            row[f"drop {d:g}: another method flagged"] = f"{sum(bool(h - {method}) for h in hits) / len(hits):.0%}"
        rows.append(row)
        print(row, flush=True)
    return rows


def pair_count(table) -> int:
    """The pairs of one paired split: per concept, its training runs halved."""
    units = table[["concept", "train_seed"]].dropna().drop_duplicates()
    return int((units.groupby("concept").size() // 2).sum())


def paired_section(table, check: dict, replicates: int, power_replicates: int, where: str) -> str:
    """The paired false-alarm rate and the presence drops a paired check catches, on `table`'s runs."""
    import pandas as pd

    methods = sorted(table.method.dropna().unique())
    paired = paired_split_alarms(table, check, replicates)
    k = sum(bool(a) for a in paired)
    lo, hi = wilson(k, len(paired))
    per_method = ", ".join(f"{m} {sum(m in a for a in paired) / len(paired):.1%}" for m in methods)
    rows = drop_power(table, check, power_replicates, paired_split_alarms)
    return (f"## Paired checks: false alarms and power ({where})\n\nCI's usual case is paired: the check reruns the baseline's concepts "
            f"and seeds. {replicates} random pairings of each concept's training runs into disjoint pairs ({pair_count(table)} pairs a check), "
            "one run of a pair the baseline's and the other relabelled with the baseline's seed, so the check pairs two independent trainings "
            f"of one concept (nothing changed: every alarm is false). **{k} of {len(paired)} checks raised an alarm: {k / len(paired):.1%} "
            f"[95 % Wilson {lo:.1%}, {hi:.1%}]** (target <= 5 %). Per method: {per_method}.\n\nThe same pairings ({power_replicates} per method "
            "and drop) with one method's presence lowered by a fixed drop in every check run:\n\n" + pd.DataFrame(rows).to_markdown(index=False) + "\n")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def detectable_drops(table, check: dict, tests: int, sizes=(6, 12, 24, 48), power: float = 0.8):
    """Per method: the drop in presence at weight 1 an unpaired check (other training seeds on both sides,
    `sizes` runs a side) detects with `power`, at the Bonferroni level alpha / tests, from the suite's
    pooled within-concept spread across training seeds; the metric's margin is added (a drop within it is
    no regression by definition)."""
    import pandas as pd
    from scipy.stats import t

    from bench import regression, stats

    alpha = float(check.get("alpha", 0.05)) / tests
    margin = regression.margin("presence", 1.0, check.get("tolerances") or {})
    rows = []
    for method, g in stats.unit_values(table, "presence", 1.0).groupby("method"):
        sd = regression.within_sd(g)
        row = {"method": method, "within-concept sd of a run's presence": sd}
        for n in sizes:
            dof = 2 * n - 2
            row[f"{n} runs a side"] = margin + (t.ppf(1 - alpha, dof) + t.ppf(power, dof)) * sd * math.sqrt(2 / n)
        rows.append(row)
    return pd.DataFrame(rows), alpha, margin


def main(argv: list[str] | None = None) -> None:
    from bench.models import skip_bitsandbytes

    skip_bitsandbytes()  # a benchmark never trains with 8-bit AdamW: no bitsandbytes import, no console line about it
    from omegaconf import OmegaConf

    from bench import records, regression
    from bench.io import publish

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=ROOT / "results" / "power", help="where the baseline and the checks' results dirs go")
    p.add_argument("--baseline-results", type=Path, default=None, help="the baseline's results dir (default WORK/baseline); "
                   "the default run's dir reuses its runs")
    p.add_argument("--suite", type=Path, default=None, help="a suite comparison's results dir, for the false-alarm rate and detectable drops")
    p.add_argument("--paired-from", type=Path, default=None, help="a results dir with several training seeds per concept, for the paired "
                   "false-alarm rate and power (e.g. the baseline's dir after the scenarios: the default's seeds and the other seeds)")
    p.add_argument("--paired-label", default="the default concepts, 6 training seeds each", help="how the paired section names --paired-from's runs")
    p.add_argument("--replicates", type=int, default=200)
    p.add_argument("--power-replicates", type=int, default=40, help="replicates per method and drop for the simulated power")
    p.add_argument("--skip-scenarios", action="store_true", help="only the resampling parts (--suite, --paired-from)")
    p.add_argument("--write", action="store_true", help="write results/benchmarks/regression_power.md")
    args = p.parse_args(argv)
    check = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "check" / "default.yaml"), resolve=True).items() if k != "defaults"}
    parts = ["# Regression check: power and false alarms\n",
             f"`mode=check` with the shipped `check` config (family-wise alpha {check['alpha']} over every method x metric test: Romano-Wolf "
             "step-down maxT over sign flips of the paired runs' centred differences, or Westfall-Young over permutations of runs within "
             "concepts when unpaired; a metric regresses when "
             "significant for the family and worse than its margin; "
             f"presence margin {check['tolerances']['presence']['abs']}). Made by `python benchmarks/regression_power.py`.\n"]
    if not args.skip_scenarios:
        table = scenario_table(args.work, args.baseline_results or args.work / "baseline")
        parts.append("## Harmless changes pass, broken methods fail by name\n\nBaseline: the default comparison (2 concepts x 3 training "
                     "seeds, default budget). Each row is one `mode=check` as CI runs it; a column per method gives its decision.\n\n"
                     + table.to_markdown(index=False) + "\n")
    if args.suite:
        df = records.read_table(args.suite)
        n_runs = df[["concept", "train_seed"]].dropna().drop_duplicates().shape[0]
        alarms = split_alarms(df, check, args.replicates)
        methods = sorted(df.method.dropna().unique())
        k = sum(bool(a) for a in alarms)
        lo, hi = wilson(k, len(alarms))
        per_method = ", ".join(f"{m} {sum(m in a for a in alarms) / len(alarms):.1%}" for m in methods)
        tests = sum(1 for m in regression.summarize(df).values() for metric in m["metrics"] if metric not in regression.COST_METRICS)
        drops, alpha, margin = detectable_drops(df, check, tests)
        power_rows = drop_power(df, check, args.power_replicates, split_alarms)
        parts.append(f"## False-alarm rate (the suite's runs split at random)\n\n{args.replicates} random splits of the suite's "
                     f"{n_runs} (concept, training seed) units per method, per concept, into a baseline half and a check half of the same config: "
                     f"any method flagged is a false alarm. **{k} of {len(alarms)} checks raised one: {k / len(alarms):.1%} "
                     f"[95 % Wilson {lo:.1%}, {hi:.1%}]** (target <= 5 %). Per method: {per_method}.\n")
        import pandas as pd

        parts.append(f"## The drop in presence a check can see\n\nSimulated on the suite: the same random splits (about 12 runs a side over "
                     f"8 concepts, unpaired), with one method's presence lowered by a fixed drop in every run of the check half; "
                     f"{args.power_replicates} splits per method and drop. 'caught': the check flags that method; 'another method "
                     "flagged': a false alarm beside it.\n\n" + pd.DataFrame(power_rows).to_markdown(index=False) + "\n\n"
                     f"By runs per side, the drop an unpaired check detects with 80 % power at the Bonferroni level {alpha:.2g} "
                     f"({check['alpha']} / {tests} tests; maxT is never stricter, so these are upper bounds), from the suite's "
                     f"within-concept spread across training seeds, plus the {margin} margin. A paired check (the baseline's concepts "
                     "and seeds, CI's usual case) removes the spread between training seeds and needs fewer runs still.\n\n"
                     + drops.to_markdown(index=False, floatfmt=".3f") + "\n")
        parts.append(paired_section(df, check, args.replicates, args.power_replicates, "the suite's runs, one pair per concept"))
    if args.paired_from:
        # The shipped configs only (the baseline's): the broken-method scenarios write other arms into the same dir.
        shipped = {m: e["config"] for m, e in regression.read_baseline(args.work / "baseline.json")["methods"].items()}
        runs = records.read_table(args.paired_from)
        runs = runs[[shipped.get(m) == c for m, c in zip(runs.method, runs.config)]]
        parts.append(paired_section(runs, check, args.replicates, args.power_replicates, args.paired_label))
    publish("\n".join(parts), ROOT / "results" / "benchmarks" / "regression_power.md", args.write)


if __name__ == "__main__":
    main()
