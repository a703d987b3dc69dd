"""Run a whole comparison as a user would, time it, and show that every method learns every concept.

    python benchmarks/comparison.py                 # the default run (2 concepts x 3 training seeds)
    python benchmarks/comparison.py --data suite    # the full evaluation suite (8 concepts)
    python benchmarks/comparison.py --data suite --write   # and commit the tables under results/benchmarks/
    python benchmarks/comparison.py --name peft 'method=[dora,loha,lokr,oft]' --write   # comparison_default_peft.md

Prints three tables:
- wall time of the whole `python run.py` and the seconds spent per stage (load, base images, class
  images, train, generate, score in the workers, which run in parallel, so these add up to about
  workers x wall time; then the report);
- per method and concept: CLIP-I at weight 1 and of the base model's images of the same prompts (mean over
  training runs), the per-run gain, and whether the method learned it: the gain averaged over training
  runs is at least 0.05 (how many runs gain on their own is beside it, so a pass carried by one run
  shows); beside it each method's own weight 0 and the oracle's presence rate at weights 1 and 0, the
  ground truth CLIP-I stands in for;
- cost per method (mean over runs).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIN_GAIN = 0.05  # CLIP-I at weight 1 minus the base model's on the same prompts, mean over a concept's training runs


def reproduces_base_prompt(method: str) -> bool:
    """Whether `method`'s weight 0 is the base model's image of the instance prompt itself (every method
    but one that rewrites the prompt at weight 0, as Textual Inversion does: its weight 0 reads the
    initializer word where the prompt has the token)."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from methods.base import Method

    target = OmegaConf.load(ROOT / "conf" / "method" / f"{method}.yaml")["_target_"]
    return get_class(target).base_prompt is Method.base_prompt


def learning_table(df):
    """Per method and concept: did the method learn it? Its CLIP-I at weight 1 against one reference
    shared by every method, the base model's images of the same prompts and seeds (what a method's weight 0
    draws when it leaves the prompt as written). Each method's own weight 0 is beside it: for Textual
    Inversion that is the initializer word's image, a reference of the method's own making (a good
    initializer would raise the bar a run must clear), so it does not decide "learned"."""
    import pandas as pd

    from bench import stats

    keys = ["method", "concept", "train_seed"]
    w1 = stats.unit_values(df, "clip_i", 1.0).set_index(keys).value
    w0 = stats.unit_values(df, "clip_i", 0.0).set_index(keys).value
    # The base model's CLIP-I per concept, from the weight-0 images of methods that reproduce the prompt
    # itself at weight 0 (bit for bit the base model's images: the sweep fails a method whose weight 0 is
    # more than one pixel level off).
    on_base = {m: reproduces_base_prompt(m) for m in w0.index.unique("method")}
    at_base = w0[w0.index.get_level_values("method").map(on_base).to_numpy(bool)]
    base = at_base.groupby("concept").mean()
    # The oracle's presence rate beside the CLIP-I criterion: ground truth, where CLIP-I is a proxy.
    present = {w: stats.unit_values(df, "presence", w).groupby(["method", "concept"]).value.mean() for w in (1.0, 0.0)} if "presence" in set(df.metric) else {}
    rows = []
    for (method, concept), v1 in w1.groupby(["method", "concept"], sort=False):
        kind = df[df.concept == concept].kind.dropna().iloc[0]
        gain = v1 - base.get(concept, float("nan"))
        own = v1.values - w0.reindex(v1.index).values  # the same run's weight 0
        rows.append({
            "method": method, "concept": concept, "kind": kind, "runs": len(v1),
            "CLIP-I @1": v1.mean(), "CLIP-I base": base.get(concept, float("nan")),
            "gain (mean)": gain.mean(), "gain (min run)": gain.min(), "runs gaining": f"{int((gain > 0).sum())}/{len(gain)}",
            "learned": bool(gain.mean() >= MIN_GAIN),
            "CLIP-I @0": w0[method, concept].mean(), "gain over own @0": own.mean(),
            **{f"presence @{w:g}": present[w].get((method, concept), float("nan")) for w in present},
        })
    return pd.DataFrame(rows)


def time_table(results: Path, wall_s: float, workers: str):
    """Seconds per stage, as the run recorded them (`timing.json`): load, base and class images, train,
    generate, score in the workers (they run in parallel, so these add up to about workers x wall time),
    then the report in the main process, and the whole process's wall time."""
    import json

    import pandas as pd

    timing = json.loads((results / "timing.json").read_text())
    stages = ["load models", "base images", "class images", "train", "generate", "score", "report"]
    rows = [{"stage": name, "seconds": timing[name]} for name in stages]
    busy = sum(r["seconds"] for r in rows)
    rows.append({"stage": "all stages above", "seconds": busy})
    rows.append({"stage": f"wall time of `python run.py` ({workers})", "seconds": wall_s})
    out = pd.DataFrame(rows)
    out["share of stage time"] = [f"{100 * v / busy:.0f} %" if i < len(stages) else "" for i, v in enumerate(out["seconds"])]
    return out


def main(argv: list[str] | None = None) -> None:
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

    from bench import records

    df = records.read_table(results)
    header = next((line for line in proc.stdout.splitlines() if "training runs" in line), "")
    workers = header.split(";")[-1].strip() if ";" in header else "workers as configured"
    learning = learning_table(df)
    text = (
        f"# Comparison benchmark: `python run.py data={args.data}{''.join(' ' + o for o in args.overrides)}`\n\n{header.removeprefix('adapterbench: ')}\n\n"
        f"## Where the time goes\n\n{time_table(results, wall, workers).to_markdown(index=False, floatfmt='.1f')}\n\n"
        f"## Which method learns which concept\n\nCLIP-I (micro CLIP image similarity to the instance images) of the instance and "
        f"recontext prompts, mean over training runs: at weight 1, and of the base model's images of the same prompts and seeds "
        f"('base': one reference for every method); 'learned': the gain over the base averaged over training runs is at least {MIN_GAIN}. "
        f"{int(learning.learned.sum())} of {len(learning)} (method, concept) pairs learned. Beside it, each method's own weight 0 and the gain "
        "over it (they differ from the base for Textual Inversion only: its weight 0 is the initializer word's image), and ground truth: "
        "the oracle's presence rate (share of those images in which it sees the concept) at weight 1 and 0.\n\n"
        f"{learning.to_markdown(index=False, floatfmt='.3f')}\n\n## Summary printed by run.py\n\n```\n{proc.stdout.strip()}\n```\n"
    )
    publish(text, ROOT / "results" / "benchmarks" / f"comparison_{args.data}{'_' + args.name if args.name else ''}.md", args.write)


if __name__ == "__main__":
    main()
