"""Report code on small hand-made tables."""

import numpy as np
import pytest

from bench import records
from bench.report import best_weights, bootstrap_ci, build_report, cost_table, quality_table


def hand_made(tmp_path, seeds=(0, 1)):
    rows = []
    for method, size, fid in (("lora", 3.2e6, 1.0), ("textual_inversion", 3072, 2.0)):
        for seed in seeds:
            rid = f"{method}{seed}"
            ident = {"run_id": rid, "model": "micro", "method": method, "concept": "c", "status": "ok"}
            rows += [
                {**ident, "seed": seed, "metric": "artifact_bytes", "value": size, "unit": "B"},
                {**ident, "seed": seed, "metric": "peak_mem", "value": 100.0 + seed, "unit": "MiB"},
                {**ident, "seed": seed, "metric": "train_time", "value": 10.0 + seed, "unit": "s"},
                {**ident, "seed": seed, "metric": "steps_per_s", "value": 5.0, "unit": "1/s"},
                {**ident, "seed": seed, "metric": "trainable_params", "value": 768.0, "unit": "count"},
            ]
            for w in (0.0, 0.5, 1.0):
                # CLIP-I peaks at 0.5 for textual inversion, at 1.0 for lora.
                ci = 0.5 + (0.2 * w if method == "lora" else 0.2 - 0.4 * abs(w - 0.5)) + 0.01 * seed
                rows += [
                    {**ident, "seed": seed, "prompt_id": "instance_0", "weight": w, "metric": "clip_i", "value": ci, "unit": "cos"},
                    {**ident, "seed": seed, "prompt_id": "instance_0", "weight": w, "metric": "clip_t", "value": 20 + w, "unit": "score"},
                    {**ident, "seed": seed, "prompt_id": "unrelated_0", "weight": w, "metric": "drift", "value": 0.1 * w, "unit": "1-cos"},
                    {**ident, "weight": w, "metric": "fd_microclip", "value": fid * (1 - w / 2), "unit": "fd"},
                ]
    records.write_stage(tmp_path, "hand", rows)
    return records.read_table(tmp_path)


def test_bootstrap_interval_brackets_the_mean_and_needs_two_values():
    mean, lo, hi = bootstrap_ci(np.array([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5 and 1.0 <= lo < mean < hi <= 4.0
    assert np.isnan(bootstrap_ci(np.array([1.0]))[1])


def test_cost_table_means_over_seeds_with_intervals(tmp_path):
    table = cost_table(hand_made(tmp_path))
    assert list(table.index) == ["textual_inversion", "lora"]
    assert table.loc["lora", "file size (MB)"] == "3.200 [3.200, 3.200]"
    # Two training seeds (10 s and 11 s): the bootstrap means can only be 10, 10.5 or 11.
    assert table.loc["lora", "train time (s)"] == "10.5 [10.0, 11.0]"


def test_quality_table_reports_weight_one_and_best_weight(tmp_path):
    df = hand_made(tmp_path)
    assert best_weights(df) == {"lora": 1.0, "textual_inversion": 0.5}
    q = quality_table(df)
    assert ("textual_inversion", "best (0.5)") in q.index and ("lora", "1.0") in q.index
    expected = np.mean([0.7, 0.71])
    assert q.loc[("lora", "1.0"), "CLIP-I ↑"].startswith(f"{expected:.3f}")


def test_report_files_exist_and_html_is_self_contained(tmp_path):
    hand_made(tmp_path)
    html = build_report([tmp_path])
    text = html.read_text()
    assert "data:image/png;base64," in text and "<table" in text and "src='http" not in text
    for name in ("cost", "quality"):
        for ext in ("md", "csv", "tex"):
            assert (tmp_path / "report" / "tables" / f"{name}.{ext}").stat().st_size > 0
    for fig in ("cost", "curves", "tradeoff", "infographic"):
        for ext in ("png", "svg"):
            assert (tmp_path / "report" / "figures" / f"{fig}.{ext}").stat().st_size > 0


def test_report_merges_several_results_dirs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    hand_made(a, seeds=(0,))
    hand_made(b, seeds=(1,))
    merged = records.read_table(a, b)
    assert set(merged.seed.dropna()) == {0, 1}
    html = build_report([a, b], tmp_path / "merged")
    assert html.is_file() and (tmp_path / "merged" / "tables" / "cost.md").is_file()


def test_empty_results_are_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no result rows"):
        build_report([tmp_path])
