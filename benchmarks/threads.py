"""Two jobs at once are not slower than one after the other: the thread budget in practice.

    python benchmarks/threads.py            # print the table
    python benchmarks/threads.py --write    # and commit it as results/benchmarks/threads.md

Two identical Hydra jobs (one method, one concept, one training seed, the default training budget and
sweep; each in its own results dir) are run three ways with `python run.py -m`, whole process timed:
- one after the other (Hydra's basic launcher), each job with the default workers and threads;
- at the same time (`hydra/launcher=local`, joblib), each job with the default workers and threads:
  joblib tells each job its share of the cores (OMP_NUM_THREADS), which the default honours;
- at the same time with every core forced on each job (`threads=` the core count), what the default
  avoids: torch's threads spin while they wait, so jobs that together want more threads than there are
  cores slow each other down many times over.
The threads each job's training used and the machine's other load measured beside it come from the
results table (`threads`, `other_load` cost rows). Nothing else should run on the machine meanwhile.
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

JOB = ["method=lora", "data.concepts=[sks_crescent]", "seeds=[0]", "progress=false"]


def run_jobs(name: str, launcher: list[str], extra: list[str], folder: Path) -> dict:
    """Run the two jobs one way (in `folder`, fresh); returns the row of the table."""
    from bench import records
    from bench.provenance import usable_cores

    dirs = [folder / f"job{i}" for i in range(2)]
    cmd = [sys.executable, "run.py", "-m", *JOB, *launcher, *extra, f"results_dir={dirs[0]},{dirs[1]}", f"hydra.sweep.dir={folder / 'hydra'}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{name}: run.py failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    tables = [records.read_table(d) for d in dirs]

    def cost(metric: str) -> list[float]:
        return [float(t[(t.metric == metric) & (t.status == "ok")].value.iloc[0]) for t in tables]

    return {
        "how the two jobs ran": name,
        "wall time, both jobs (s)": wall,
        "train time per job (s)": " / ".join(f"{v:.1f}" for v in cost("train_time")),
        "torch threads per job": " / ".join(f"{v:.0f}" for v in cost("threads")),
        "other load during training (cores)": " / ".join(f"{v:.1f}" for v in cost("other_load")),
        "usable cores": usable_cores(),
    }


def main(argv: list[str] | None = None) -> None:
    from bench.models import skip_bitsandbytes

    skip_bitsandbytes()  # a benchmark never trains with 8-bit AdamW: no bitsandbytes import, no console line about it
    import pandas as pd

    from bench.io import publish
    from bench.provenance import cpu_model, usable_cores

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="write results/benchmarks/threads.md")
    args = p.parse_args(argv)
    cores = usable_cores()
    with tempfile.TemporaryDirectory(prefix="adapterbench_threads_") as tmp:
        rows = [
            run_jobs("one after the other (default threads)", [], [], Path(tmp) / "sequential"),
            run_jobs("at the same time (default threads)", ["hydra/launcher=local"], [], Path(tmp) / "parallel"),
            run_jobs(f"at the same time, threads={cores} forced", ["hydra/launcher=local"], [f"threads={cores}", "workers=1"], Path(tmp) / "forced"),
        ]
    table = pd.DataFrame(rows)
    sequential = table["wall time, both jobs (s)"].iloc[0]
    table["vs one after the other"] = ["(reference)"] + [f"{sequential / w:.2f}x faster" if w <= sequential else f"{w / sequential:.2f}x slower" for w in table["wall time, both jobs (s)"].iloc[1:]]
    text = (
        f"# Threads: two jobs at once vs one after the other\n\n`python run.py -m {' '.join(JOB)} results_dir=A,B` "
        f"(default training budget and sweep), on {cores} usable cores ({cpu_model()}).\n\n"
        f"{table.to_markdown(index=False, floatfmt='.1f')}\n"
    )
    publish(text, ROOT / "results" / "benchmarks" / "threads.md", args.write)


if __name__ == "__main__":
    main()
