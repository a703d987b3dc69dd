"""Where the repository keeps things: every path the code reads or writes outside a results dir, in one
place (the embedded models' folders are `bench.zoo`'s)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
METHOD_CONF_DIR = CONF_DIR / "method"
BENCHMARK_RESULTS = ROOT / "results" / "benchmarks"  # committed benchmark tables and figures
TUNING_JSON = BENCHMARK_RESULTS / "tuning.json"  # mode=tune's record of its grid and choices
