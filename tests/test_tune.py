"""mode=tune builds its grid from the configured methods, refuses suite concepts, and writes the chosen
learning rate into a method YAML with a note of where it came from."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from bench.config import register
from bench.tune import grid_config, write_lr
from methods.base import MethodConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
register()


def config(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"results_dir={tmp_path}", *overrides])


def test_grid_is_every_method_at_every_factor_on_the_tuning_concepts(tmp_path):
    grid, arms = grid_config(config(tmp_path, "method=[lora,textual_inversion]", "method.lora.lr=0.002"))
    assert sorted(arms) == ["lora-lr0", "lora-lr1", "lora-lr2", "textual_inversion-lr0", "textual_inversion-lr1", "textual_inversion-lr2"]
    assert [arms[f"lora-lr{k}"][1] for k in range(3)] == [0.0006, 0.002, 0.006]
    assert grid.method["lora-lr2"].lr == 0.006 and grid.method["lora-lr2"]._target_ == "methods.lora.LoRA"
    assert list(grid.data.concepts) == ["sks_arrow", "zwx_bands"] and list(grid.seeds) == [100, 101]
    assert list(grid.sweep.weights) == [0.0, 1.0] and grid.results_dir == str(tmp_path / "tune")


@pytest.mark.parametrize(("override", "match"), [("tune.concepts=[sks_crescent]", "evaluation suite"), ("tune.factors=[1.0,2.0]", "at least 3")])
def test_bad_tuning_configs_name_the_key(tmp_path, override, match):
    with pytest.raises(MethodConfigError, match=f"tune.*{match}"):
        grid_config(config(tmp_path, override))


def test_write_lr_replaces_the_line_and_notes_its_origin(tmp_path):
    yaml = tmp_path / "lora.yaml"
    yaml.write_text("# @package method.lora\n_target_: methods.lora.LoRA\nlr: 2.0e-3\nrank: 4\n")
    cfg = config(tmp_path)
    write_lr(yaml, 0.0006, cfg)
    write_lr(yaml, 0.0006, cfg)  # idempotent: one note, one lr line
    text = yaml.read_text()
    assert text.count("lr: 0.0006") == 1 and text.count("# lr chosen by mode=tune") == 1 and "rank: 4" in text
    yaml.write_text("_target_: x\n")
    with pytest.raises(MethodConfigError, match="no top-level 'lr:'"):
        write_lr(yaml, 0.1, cfg)
