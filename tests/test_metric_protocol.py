"""The metric protocol (docs/metrics.md) covers every registered metric, and the report's count of the
images behind a run's value per weight is read from the rows."""

from pathlib import Path

import pandas as pd

import metrics
from bench.report.tables import images_per_run

DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


def test_the_protocol_page_has_a_line_for_every_registered_metric():
    text = DOC.read_text()
    missing = [info.name for info in metrics.REGISTRY if f"| `{info.name}` |" not in text]
    assert not missing, f"docs/metrics.md has no protocol line for {missing}"


def test_images_per_run_counts_rows_and_names_set_level_metrics():
    rows = []
    for run, n_subject in (("a", 8), ("b", 6)):
        for w in (0.0, 1.0):
            rows += [{"run_id": run, "weight": w, "metric": "clip_i", "value": 0.5}] * n_subject
            rows += [{"run_id": run, "weight": w, "metric": "drift", "value": 0.1}] * 4
            rows += [{"run_id": run, "weight": w, "metric": "fd_microclip", "value": 3.0}]
            rows += [{"run_id": run, "weight": w, "metric": "diversity", "value": 0.2}] * 3
    rows += [{"run_id": "a", "weight": 1.0, "metric": "clip_i", "value": 0.4, "step": 10}] * 30  # a checkpoint's rows are not the run's
    df = pd.DataFrame(rows)
    df["step"] = df["step"].astype("Int64") if "step" in df else pd.NA
    df["status"] = "ok"
    got = images_per_run(df)
    assert got["clip_i"] == "6-8" and got["drift"] == "4"
    assert got["fd_microclip"] == "6-8 generated vs the instance images, as sets"
    assert got["diversity"] == "3 prompts, each over its generation seeds"
