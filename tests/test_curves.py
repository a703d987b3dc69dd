"""Learning curves: a training run saves its artifact part-way through its budget (train.checkpoints)
without changing the training, each checkpoint is what a shorter training would have produced, and the
runner scores the checkpoints in a stage of its own whose rows never mix with the final artifact's."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bench import records
from bench.config import register
from bench.cost import TrainCost, measure_training
from bench.data import load_world_concept
from methods.errors import MethodConfigError
from methods.settings import TrainSettings, checkpoint_steps

ROOT = Path(__file__).resolve().parents[1]
register()


def test_checkpoint_fractions_become_distinct_steps_before_the_last():
    assert checkpoint_steps([0.125, 0.25, 0.5], 300) == (38, 75, 150)
    assert checkpoint_steps([0.5, 0.5, 0.999], 4) == (2,)  # 0.999 of 4 rounds to the last step: the final artifact
    assert checkpoint_steps([0.01], 10) == (1,) and checkpoint_steps([], 10) == ()
    for bad in (0, 1, 1.5, -0.2, "half", True):
        with pytest.raises(MethodConfigError, match=r"train.checkpoints\[0\]"):
            checkpoint_steps([bad], 10)


@pytest.fixture(scope="module")
def concept():
    return load_world_concept("sks_crescent", 4, 64)


def make(name: str):
    cfg = OmegaConf.load(ROOT / "conf" / "method" / f"{name}.yaml")
    if name == "dreambooth":
        cfg.update({"num_class_images": 2, "class_image_steps": 2})
    cfg.lr = {"textual_inversion": 0.5, "dreambooth": 1e-3}.get(name, 5e-2)  # large: every step visibly changes the artifact
    return instantiate(cfg)


def tensors(method, path: Path) -> dict[str, torch.Tensor]:
    return method.load(path).tensors


@pytest.mark.parametrize("name", ["dreambooth", "textual_inversion", "lora", "hypernetwork", "loha"])
def test_a_checkpoint_is_the_artifact_a_shorter_training_gives_and_leaves_the_training_unchanged(name, micro_pipe, concept, tmp_path):
    def train(steps: int, checkpoints: tuple[int, ...], out: Path) -> TrainCost:
        settings = TrainSettings(steps=steps, batch_size=2, seed=3, progress=False, cache_dir=tmp_path / "cache", checkpoints=checkpoints)
        return measure_training(make(name), micro_pipe, concept, settings, out)[1]

    with_checkpoints = train(4, (2,), tmp_path / "four_with")
    without = train(4, (), tmp_path / "four")
    short = train(2, (), tmp_path / "two")
    method = make(name)
    assert list(with_checkpoints.checkpoints) == ["2"] and without.checkpoints == {}
    at_two = tensors(method, tmp_path / "four_with" / with_checkpoints.checkpoints["2"])
    final = tensors(method, tmp_path / "four_with" / with_checkpoints.artifact_file)
    # The checkpoint after step 2 is exactly a 2-step training's artifact ...
    expected = tensors(method, tmp_path / "two" / short.artifact_file)
    assert sorted(at_two) == sorted(expected) and all(torch.equal(at_two[k], expected[k]) for k in expected)
    # ... saving it changed nothing in the rest of the training ...
    plain = tensors(method, tmp_path / "four" / without.artifact_file)
    assert sorted(final) == sorted(plain) and all(torch.equal(final[k], plain[k]) for k in plain)
    assert with_checkpoints.losses == without.losses
    # ... and the two later steps did move the artifact.
    assert any(not torch.equal(at_two[k], final[k]) for k in final)
    assert with_checkpoints.checkpoint_time_s > 0 and any(r["metric"] == "checkpoint_time" for r in with_checkpoints.rows())


def config(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=["train=smoke", "sweep=smoke", "progress=false", "workers=1", "threads=1", f"results_dir={tmp_path}", *overrides])


def test_the_runner_scores_checkpoints_in_a_curve_stage_apart_from_the_final_rows(tmp_path):
    from bench.report import learning_curve_table
    from bench.runner import run

    cfg = config(tmp_path, "method=[lora]", "data.concepts=[sks_crescent]", "seeds=[0,1]", "train.steps=4", "train.checkpoints=[0.25,0.5]")
    assert run(cfg) == 0
    full, final = records.read_table(tmp_path, checkpoints=True), records.read_table(tmp_path)
    at_checkpoints = full[records.checkpoint_rows(full)]
    assert sorted(at_checkpoints.step.unique()) == [1, 2] and set(at_checkpoints.weight) == {1.0}
    assert {"presence", "clip_i", "drift"} <= set(at_checkpoints.metric)
    # The default read (every statistic, check and table) has no checkpoint rows; the published table has them.
    assert not records.checkpoint_rows(final).any() and len(final) == len(full) - len(at_checkpoints)
    assert records.checkpoint_rows(pd_read(tmp_path / "results.parquet")).sum() == len(at_checkpoints)
    assert len(list(tmp_path.glob("rows/curve_*.parquet"))) == 2 and len(list((tmp_path / "images").glob("*-curve/step0000002/*.png")))
    caption, table = learning_curve_table(full)
    assert "Learning curves" in caption and list(table.index) == [("lora", 1), ("lora", 2), ("lora", 4)]
    assert "presence (oracle) ↑" in table and table["last stretch"].tolist()[:2] == ["", ""] and table["last stretch"].iloc[-1] != ""
    report = (tmp_path / "report" / "report.html").read_text()
    assert "Learning curves" in report and (tmp_path / "report" / "figures" / "learning_curves.png").is_file()
    # A rerun reuses every stage, the curve's included.
    stamps = {f: f.stat().st_mtime_ns for f in tmp_path.glob("rows/*.parquet")}
    assert run(cfg) == 0
    assert {f: f.stat().st_mtime_ns for f in tmp_path.glob("rows/*.parquet")} == stamps


def pd_read(path: Path):
    import pandas as pd

    return records.frame(pd.read_parquet(path).to_dict("records"))
