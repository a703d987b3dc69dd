"""The runner trains every configured method in its own process, records cost rows, reuses finished
stages, and records a failing method as failed while the others complete."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from bench import records
from bench.config import register
from bench.runner import run
from methods.base import MethodConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
register()


def config(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["train=smoke", "sweep=smoke", f"results_dir={tmp_path}", "progress=false", "threads=1", *overrides])


@pytest.mark.slow
def test_all_methods_train_and_land_as_cost_rows_then_rerun_reuses(tmp_path):
    cfg = config(tmp_path)
    assert run(cfg) == 0
    table = records.read_table(tmp_path)
    assert set(table.method) == {"dreambooth", "textual_inversion", "lora", "hypernetwork"}
    cost = table[table.step.isna()].pivot_table(index="method", columns="metric", values="value", aggfunc="first")
    assert (cost[["peak_mem", "train_time", "steps_per_s", "trainable_params", "artifact_bytes"]] > 0).all().all()
    # Textual Inversion counts its learned vector only: one row of the embedding table.
    assert cost.loc["textual_inversion", "trainable_params"] == 128
    assert cost.loc["dreambooth", "artifact_bytes"] > cost.loc["lora", "artifact_bytes"] > cost.loc["textual_inversion", "artifact_bytes"]
    assert (table[table.metric == "train_loss"].groupby("method").size() == 4).all()
    assert (tmp_path / "results.csv").stat().st_size > 0 and (tmp_path / "results.parquet").exists() and (tmp_path / "run.json").exists()

    # Sweeps: every method at every weight, and weight 0 reproduces the base model exactly.
    sweep = table[table.metric == "clip_i"]
    assert set(sweep.method) == set(cost.index) and set(sweep.weight) == {0.0, 1.0}
    assert (table[table.metric == "base_pixel_diff"].value <= 1.0).all()  # see bench.score: batch rounding
    assert {"clip_t", "clip_i", "drift", "diversity", "fd_microclip", "cmmd"} <= set(table.metric)
    assert len(list((tmp_path / "images" / "lora").glob("instance_0_seed*_w+1.00.png"))) == 2

    # The published outputs: every file exists and is non-empty.
    report = tmp_path / "report"
    outputs = [report / "report.html", *(report / "tables" / f"{t}.{e}" for t in ("cost", "quality") for e in ("md", "csv", "tex"))]
    outputs += [report / "figures" / f"{f}.{e}" for f in ("infographic", "cost", "curves", "tradeoff", "grid_instance_0") for e in ("png", "svg")]
    assert all(f.is_file() and f.stat().st_size > 0 for f in outputs), [str(f) for f in outputs if not f.is_file()]
    assert "data:image/png;base64," in (report / "report.html").read_text()

    stamps = {f: f.stat().st_mtime_ns for f in (tmp_path / "rows").glob("*.parquet")}
    html_stamp = (report / "report.html").stat().st_mtime_ns
    assert run(cfg) == 0
    assert {f: f.stat().st_mtime_ns for f in (tmp_path / "rows").glob("*.parquet")} == stamps
    assert (report / "report.html").stat().st_mtime_ns == html_stamp  # nothing changed, nothing rebuilt


def test_a_failing_method_is_recorded_and_the_others_complete(tmp_path):
    cfg = config(tmp_path, "method=[hypernetwork,lora]", "method.hypernetwork.enable_sizes=[999]")
    assert run(cfg) == 1
    table = records.read_table(tmp_path)
    failed = table[table.metric == "train_failed"]
    assert list(failed.method) == ["hypernetwork"] and "method.enable_sizes" in failed.status.iloc[0]
    assert (table[table.method == "lora"].status == "ok").all() and len(table[table.method == "lora"]) > 0


@pytest.mark.parametrize(("override", "key"), [("method.lora.rank=0", "method.rank"), ("train.steps=-3", "train.steps"), ("train.batch_size=0", "train.batch_size")])
def test_nonsense_config_fails_before_any_training(tmp_path, override, key):
    with pytest.raises(MethodConfigError, match=key):
        run(config(tmp_path, override))
    assert not (tmp_path / "rows").exists()


def test_inception_fid_without_local_weights_fails_before_any_training(tmp_path):
    pytest.importorskip("torchmetrics")
    try:
        import torch_fidelity  # noqa: F401

        pytest.skip("torch-fidelity is installed here; the unavailable case cannot be shown")
    except ImportError:
        pass
    from metrics.fd import InceptionUnavailable

    with pytest.raises(InceptionUnavailable, match="metrics.inception"):
        run(config(tmp_path, "metrics.inception=true"))
    assert not (tmp_path / "rows").exists()
