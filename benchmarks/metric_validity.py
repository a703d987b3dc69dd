"""Which metrics see the concept? Rank agreement of CLIP-I, CLIP-T, FD and CMMD with the oracle.

    python benchmarks/metric_validity.py RESULTS_DIR [--write]

RESULTS_DIR is a finished comparison on world concepts with `metrics.oracle=true` (the default), e.g.
the suite run of benchmarks/comparison.py. Prints bench.validity's agreement table (what the report
shows) and, per method and weight, the presence rate beside CLIP-I, so a disagreement can be read off.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> None:
    from bench.models import skip_bitsandbytes

    skip_bitsandbytes()  # a benchmark never trains with 8-bit AdamW: no bitsandbytes import, no console line about it
    from bench.io import publish

    import pandas as pd

    from bench import records, stats, validity

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path)
    p.add_argument("--write", action="store_true", help="write results/benchmarks/metric_validity.md")
    args = p.parse_args(argv)
    df = records.read_table(args.results)
    if not (df.metric == validity.GROUND_TRUTH).any():
        sys.exit(f"{args.results}: no '{validity.GROUND_TRUTH}' rows; run the comparison on world concepts with metrics.oracle=true")
    table = validity.agreement(df, stats.Settings())
    by_weight = []
    for metric in ("presence", "clip_i"):
        c = validity.cells(df, metric).groupby(["method", "weight"]).mean().rename(metric)
        by_weight.append(c)
    side = pd.concat(by_weight, axis=1).reset_index()
    n_concepts, n_runs = df.concept.nunique(), df.run_id.nunique()
    text = (
        "# Metric validity: agreement with the concept-presence oracle\n\n"
        f"`python benchmarks/metric_validity.py` on {n_runs} training runs over {n_concepts} concepts "
        f"({', '.join(sorted(df.concept.dropna().unique()))}). A cell is one (method, concept, weight): each metric's mean over the "
        "concept's training runs. rho: Spearman rank correlation of the metric (FD and CMMD negated, so agreement is positive) with the "
        "oracle's presence rate over all cells, 95 % interval from resampling concepts; 'within concept': the mean of the per-concept rhos. "
        f"A metric agrees when rho >= {validity.AGREES} and the interval excludes 0. Best-agreeing proxy: "
        f"{validity.best_proxy(table) or 'none'} (comparisons without an oracle lead with `{validity.PROXY_WITHOUT_ORACLE}`).\n\n"
        f"{table.to_markdown(index=False, floatfmt='.3f')}\n\n"
        "## Presence and CLIP-I per method and weight (mean over concepts)\n\n"
        f"{side.to_markdown(index=False, floatfmt='.3f')}\n"
    )
    publish(text, ROOT / "results" / "benchmarks" / "metric_validity.md", args.write)


if __name__ == "__main__":
    main()
