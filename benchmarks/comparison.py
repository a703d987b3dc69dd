"""Run a whole comparison as a user would, time it, and show which method learns which concept.

    python benchmarks/comparison.py                 # the default run (2 concepts x 3 training seeds)
    python benchmarks/comparison.py --data suite    # the full evaluation suite (8 concepts)
    python benchmarks/comparison.py --data suite --write   # and commit the tables under results/benchmarks/
    python benchmarks/comparison.py --name peft 'method=[dora,loha,lokr,oft]' --write   # comparison_default_peft.md

Prints three tables:
- wall time of the whole `python run.py` and the seconds spent per stage (load, base images, class
  images, train, generate, score in the workers, which run in parallel, so these add up to about
  workers x wall time; then the report);
- per method and concept: whether the method learned it, by ground truth (`bench.stats.learned`: the oracle's
  presence at weight 1 minus the same run's weight 0, at least 0.25, t-interval over training runs
  excluding 0), with CLIP-I's gain beside it as the proxy;
- the learning curves (quality at weight 1 at each checkpoint of the same training) and whether the
  budget's last stretch still raised presence;
- cost per method (mean over runs).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROXY_MIN_GAIN = 0.05  # the CLIP-I gain the proxy column calls a gain (the criterion this benchmark used before the oracle)


def learning_table(df):
    """Per method and concept: did the method learn it? Ground truth decides (`stats.learned`: the oracle's
    presence at weight 1 minus the same run's weight 0, at least 0.25 with a t-interval over training runs
    that excludes 0); CLIP-I's gain, computed the same way, stands beside it as the proxy it is."""
    import pandas as pd

    from bench import stats

    keys = ["method", "config", "concept", "kind"]  # two configs of a method are two rows, never one
    truth = stats.learned(df, "presence").set_index(keys) if "presence" in set(df.metric) else pd.DataFrame()
    proxy = stats.learned(df, "clip_i", min_gain=PROXY_MIN_GAIN).set_index(keys) if "clip_i" in set(df.metric) else pd.DataFrame()
    rows = []
    for key in (truth.index if len(truth) else proxy.index):
        t, c = (truth.loc[key] if len(truth) else None), (proxy.loc[key] if key in proxy.index else None)
        row = dict(zip(keys, key))
        if t is not None:
            row.update({"runs": int(t.n_runs), "presence @1": t.at_1, "presence @0": t.at_0, "gain": t.gain,
                        "gain 95% CI": f"[{t.low:.3f}, {t.high:.3f}]" if np.isfinite(t.low) else "-", "learned": t.verdict})
        if c is not None:
            row.update({"CLIP-I @1": c.at_1, "CLIP-I @0": c.at_0, "CLIP-I gain": c.gain, f"proxy says (gain >= {PROXY_MIN_GAIN})": c.verdict})
        rows.append(row)
    return pd.DataFrame(rows)


def time_table(results: Path, wall_s: float, workers: str):
    """Seconds per stage, as the run recorded them (`timing.json`): load, base and class images, train,
    generate, score in the workers (they run in parallel, so these add up to about workers x wall time),
    then the report in the main process, and the whole process's wall time."""
    import json

    import pandas as pd

    timing = json.loads((results / "timing.json").read_text())
    stages = ["load models", "base images", "class images", "train", "generate", "score", "learning curves", "report"]
    rows = [{"stage": name, "seconds": timing.get(name, 0.0)} for name in stages]
    busy = sum(r["seconds"] for r in rows)
    rows.append({"stage": "all stages above", "seconds": busy})
    rows.append({"stage": f"wall time of `python run.py` ({workers})", "seconds": wall_s})
    out = pd.DataFrame(rows)
    out["share of stage time"] = [f"{100 * v / busy:.0f} %" if i < len(stages) else "" for i, v in enumerate(out["seconds"])]
    return out


def main(argv: list[str] | None = None) -> None:
    from bench.models import skip_bitsandbytes

    skip_bitsandbytes()  # a benchmark never trains with 8-bit AdamW: no bitsandbytes import, no console line about it
    from bench.io import publish

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="default", help="data option: default (2 concepts) or suite (8)")
    p.add_argument("--results", type=Path, default=None, help="results dir (default: a fresh temporary one)")
    p.add_argument("--write", action="store_true", help="write results/benchmarks/comparison_<data>[_<name>].md")
    p.add_argument("--name", default="", help="a suffix for the written file, for runs with other methods (e.g. peft)")
    p.add_argument("overrides", nargs="*", help="more Hydra overrides for run.py")
    args = p.parse_args(argv)
    results = args.results or Path(tempfile.mkdtemp(prefix=f"adapterbench_{args.data}_"))
    cmd = [sys.executable, "run.py", f"data={args.data}", f"results_dir={results}", "progress=false", *args.overrides]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    # Exit 1 means some training run failed (it is in the table); anything that stopped run.py itself is not a result.
    if proc.returncode not in (0, 1) or "adapterbench: report" not in proc.stdout:
        sys.exit(f"run.py did not finish ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")

    from bench import records, stats

    from bench.report import learning_curve_table

    full = records.read_table(results, checkpoints=True)
    df = records.final_rows(full)
    curve_caption, curves = learning_curve_table(full)
    header = next((line for line in proc.stdout.splitlines() if "training runs" in line), "")
    workers = header.split(";")[-1].strip() if ";" in header else "workers as configured"
    learning = learning_table(df)
    text = (
        f"# Comparison benchmark: `python run.py data={args.data}{''.join(' ' + o for o in args.overrides)}`\n\n{header.removeprefix('adapterbench: ')}\n\n"
        f"## Where the time goes\n\n{time_table(results, wall, workers).to_markdown(index=False, floatfmt='.1f')}\n\n"
        f"## Which method learns which concept\n\nGround truth: the oracle's presence rate (share of the instance and recontext images "
        f"in which it sees the concept), mean over training runs, at weight 1 and at the same run's weight 0 (the base model; Textual "
        f"Inversion's weight 0 is its initializer word). {stats.LEARNED_RULE}. "
        f"{int((learning.learned == 'learned').sum())} of {len(learning)} (method, concept) pairs learned. Beside it, the proxy: "
        f"CLIP-I (micro CLIP image similarity to the instance images) at weights 1 and 0 and its gain, judged by the same rule "
        f"with a gain of {PROXY_MIN_GAIN}.\n\n"
        f"{learning.to_markdown(index=False, floatfmt='.3f')}\n\n"
        + (f"## Learning curves\n\n{curve_caption}\n\n{curves.reset_index().to_markdown(index=False)}\n\n" if len(curves) else "")
        + f"## Summary printed by run.py\n\n```\n{proc.stdout.strip()}\n```\n"
    )
    publish(text, ROOT / "results" / "benchmarks" / f"comparison_{args.data}{'_' + args.name if args.name else ''}.md", args.write)


if __name__ == "__main__":
    main()
