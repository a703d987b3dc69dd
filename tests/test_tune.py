"""mode=tune builds its grid from the configured methods, refuses suite concepts, and writes the chosen
learning rate into a method YAML with a note of where it came from."""

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from bench.config import register
from bench.tune import grid_config, write_lr
from methods.errors import MethodConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
register()


def config(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"results_dir={tmp_path}", *overrides])


def test_grid_is_every_method_at_every_factor_on_the_tuning_concepts(tmp_path):
    # The grid is centred on tune.centers, not on the configured lr (which mode=tune overwrites).
    grid, arms = grid_config(config(tmp_path, "method=[lora,textual_inversion]", "method.lora.lr=0.05"))
    # Textual Inversion's vector count is crossed with its lr (conf/tune/default.yaml: tune.options).
    # Arms are named by their lr (an extended grid keeps the names, and so the runs, it has).
    lora = ["lora-lr6e-4", "lora-lr2e-3", "lora-lr6e-3"]
    ti = [f"textual_inversion-lr{lr}-num_vectors{n}" for lr in ("6e-3", "2e-2", "6e-2") for n in (1, 2, 4)]
    assert sorted(arms) == sorted(lora + ti)
    assert [arms[a][1] for a in lora] == [0.0006, 0.002, 0.006]
    assert arms["textual_inversion-lr2e-2-num_vectors4"][2] == {"num_vectors": 4} and grid.method["textual_inversion-lr2e-2-num_vectors4"].num_vectors == 4
    assert grid.method["lora-lr6e-3"].lr == 0.006 and grid.method["lora-lr6e-3"]._target_ == "methods.lora.LoRA"
    assert [arms[f"textual_inversion-lr{lr}-num_vectors1"][1] for lr in ("6e-3", "2e-2", "6e-2")] == [0.006, 0.02, 0.06]
    assert list(grid.data.concepts) == ["sks_arrow", "zwx_bands"] and list(grid.seeds) == [100, 101, 102]
    assert list(grid.sweep.weights) == [0.0, 1.0] and grid.results_dir == str(tmp_path / "tune")
    _, arms = grid_config(config(tmp_path, "method=[lora]", "method.lora.lr=0.05", "~tune.centers.lora"))
    assert sorted(lr for _, lr, _ in arms.values()) == [0.015, 0.05, 0.15]  # no centre: the configured lr


def test_choice_is_the_best_objective_within_the_drift_bound_ties_to_the_lower_drift():
    import pandas as pd

    from bench.tune import choose

    arms = pd.DataFrame({"lr": [1, 2, 3, 4], "presence": [0.5, 0.9, 0.9, 1.0], "drift": [0.1, 0.2, 0.15, 0.3]})
    assert choose(arms, "presence", 0.25) == 2  # lr 4 drifts too far; lr 2 and 3 tie, lr 3 drifts less
    assert choose(arms, "presence", 0.35) == 3
    assert choose(arms, "presence", 0.05) == 0  # none within the bound: the least drifting


def test_a_chosen_option_keeps_the_type_its_list_gave_it():
    import numpy as np

    from bench.tune import _as_option

    value = _as_option(np.float64(4.0), [1, 2, 4])  # a column shared with other methods holds NaN: floats
    assert value == 4 and type(value) is int


@pytest.mark.parametrize(("override", "match"), [("tune.concepts=[sks_crescent]", "evaluation suite"), ("tune.factors=[1.0,2.0]", "at least 3"), ("tune.max_extensions=-1", "max_extensions"),
                                                  ("+tune.options.lora.rnak=[4,8]", "options.lora.*rnak"), ("tune.centers.lora=-0.1", "centers.lora.*positive"),
                                                  ("+tune.centers.lorra=0.1", "centers.lorra.*not a method"),
                                                  ("tune.concepts=[sks_arrow,nosuch]", r"concepts\[1\]: 'nosuch' is neither")])
def test_bad_tuning_configs_name_the_key(tmp_path, override, match):
    with pytest.raises(MethodConfigError, match=f"tune.*{match}"):
        grid_config(config(tmp_path, override))


def test_write_key_replaces_a_tuned_option_line(tmp_path):
    from bench.tune import write_key

    path = tmp_path / "ti.yaml"
    path.write_text("_target_: x\nlr: 0.02\nnum_vectors: 1\ninitializer: null\n")
    cfg = config(tmp_path)
    write_key(path, "num_vectors", 2, cfg)
    write_key(path, "num_vectors", 4, cfg)
    text = path.read_text()
    assert "num_vectors: 4\n" in text and text.count("num_vectors chosen by mode=tune") == 1 and "num_vectors: 1" not in text


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


def test_retuning_one_method_keeps_the_others_from_the_same_protocol(tmp_path, monkeypatch):
    import json

    import pandas as pd

    from bench import tune

    protocol = {"concepts": ["sks_arrow"], "seeds": [100], "factors": [0.3, 1, 3], "centers": {"lora": 2e-3}, "objective": "clip_i", "max_drift": 0.25, "train": {"steps": 150}}
    old_grid = [{"method": m, "lr": lr, "clip_i": 0.3, "drift": 0.1, "runs": 2, "chosen": True} for m, lr in (("dreambooth", 2e-4), ("lora", 2e-3))]
    monkeypatch.setattr(tune, "TUNING_JSON", tmp_path / "tuning.json")
    (tmp_path / "tuning.json").write_text(json.dumps({**protocol, "chosen": {"dreambooth": 2e-4, "lora": 2e-3}, "date": "2026-01-01", "grid": old_grid,
                                                      "settings": {"dreambooth": {"x": 1}, "lora": {"rank": 4}}}))
    new_grid = pd.DataFrame([{"method": "lora", "lr": 6e-4, "clip_i": 0.4, "drift": 0.1, "runs": 2, "chosen": True, "date": "2026-02-02"}])
    record = {**protocol, "chosen": {"lora": 6e-4}, "date": "2026-02-02", "grid": new_grid.to_dict("records"), "settings": {"lora": {"rank": 8}}}
    merged, table = tune.merge_previous(record, new_grid)
    assert merged["chosen"] == {"dreambooth": 2e-4, "lora": 6e-4} and merged["settings"] == {"dreambooth": {"x": 1}, "lora": {"rank": 8}}
    assert list(table.method) == ["dreambooth", "lora"] and list(table.date) == ["2026-01-01", "2026-02-02"]
    # Another protocol (here other tuning seeds): nothing old is mixed in.
    other, table = tune.merge_previous({**record, "seeds": [7]}, new_grid)
    assert other["chosen"] == {"lora": 6e-4} and list(table.method) == ["lora"]
    # A centre added for a newly tuned method keeps the others; a kept method's changed centre does not.
    added, table = tune.merge_previous({**record, "centers": {"lora": 2e-3, "loha": 6e-3}}, new_grid)
    assert list(table.method) == ["dreambooth", "lora"] and added["centers"] == {"lora": 2e-3, "loha": 6e-3}
    moved, table = tune.merge_previous({**record, "centers": {"lora": 2e-3, "dreambooth": 1e-3}}, new_grid)
    assert list(table.method) == ["lora"]
    # Training options added since the old tuning, at their defaults, are the same protocol; others are not.
    spelled, table = tune.merge_previous({**record, "train": {"steps": 150, "precision": "fp32", "optimizer": "adamw"}}, new_grid)
    assert list(table.method) == ["dreambooth", "lora"]
    mixed, table = tune.merge_previous({**record, "train": {"steps": 150, "precision": "bf16"}}, new_grid)
    assert list(table.method) == ["lora"]


def test_lr_tags_are_config_key_safe():
    from bench.tune import lr_tag

    assert [lr_tag(x) for x in (0.0006, 0.0015, 0.02, 3.0, 9e-05)] == ["6e-4", "1p5e-3", "2e-2", "3e0", "9e-5"]


def fake_grid_runs(monkeypatch, tmp_path, presence_of, drift_of):
    """mode=tune with its training replaced: each arm's presence and drift at weight 1 come from functions
    of its lr (three tuning runs each, spread +-0.02), so the search itself is what is tested."""
    from bench import runner, tune

    def run_comparison(grid):
        return 0, [(arm, grid.method[arm].lr) for arm in grid.method]

    def config_table(results, runs, checkpoints=False):
        """10 training steps, checkpoints after 2 and 5; presence grows linearly to its value by step 5."""
        from bench import records

        ident = {"model": "micro", "concept": "sks_arrow", "kind": "object", "sweep": "x", "status": "ok"}
        rows = []
        for arm, lr in runs:
            for s in range(3):
                run = {**ident, "run_id": f"{arm}-{s}", "method": arm, "config": arm, "train_seed": s}
                rows += [{**run, "metric": "train_loss", "step": i, "value": 1.0} for i in range(10)]
                for step in ([2, 5, None] if checkpoints else [None]):
                    grown = min(1.0, (step or 10) / 5)
                    rows += [{**run, "prompt_id": "instance", "seed": 0, "weight": 1.0, "step": step, "metric": metric, "value": grown * (f(lr) + 0.02 * (s - 1))}
                             for metric, f in (("presence", presence_of), ("drift", drift_of))]
        return records.frame(rows)

    monkeypatch.setattr(runner, "run_comparison", run_comparison)
    monkeypatch.setattr(runner, "config_table", config_table)
    monkeypatch.setattr(tune, "TUNING_JSON", tmp_path / "tuning.json")


def test_a_choice_on_the_grids_edge_extends_the_grid_until_it_is_interior(tmp_path, monkeypatch, capsys):
    import math

    from bench import tune

    # LoRA's presence rises with lr up to 0.05 (the grid tops out at 0.006): two extensions (x9, x27)
    # reach 0.054, past the peak; drift stays small throughout.
    fake_grid_runs(monkeypatch, tmp_path, lambda lr: 0.9 - abs(math.log(lr / 0.05)) / 10, lambda lr: 0.05)
    cfg = config(tmp_path, "method=[lora]", "tune.write=false", "tune.max_extensions=3")
    assert tune.tune(cfg) == 0
    out = capsys.readouterr().out
    assert "lora: lr 0.006 was the top of its grid" in out and "lora: lr 0.018 was the top of its grid" in out
    assert "0.054" in out and "still the top" not in out
    # The chosen arm's learning curve: at 2/5 of its final presence after step 2, all of it by step 5.
    assert "## Learning curves of the chosen arms" in out and "Budget rule" in out and "Met: the last to level off does so by step 5." in out
    curve = out[out.index("## Learning curves of the chosen arms"):]
    assert re.search(r"\| lora\s+\|\s+0.054\s+\|\s+0.3\d*\s+\|\s+0.8\d*\s+\|\s+0.8\d*\s+\|\s+5\s+\|", curve), curve
    assert (tmp_path / "tune" / "frontier.png").is_file() and (tmp_path / "tune" / "frontier.svg").is_file()


def test_a_grid_that_cannot_be_extended_far_enough_says_so(tmp_path, monkeypatch, capsys):
    from bench import tune

    # Presence rises with lr forever, and every arm drifts too far: the least drifting (lowest) lr is
    # chosen, the grid is extended downwards once, and the note says the choice is still at the bottom.
    fake_grid_runs(monkeypatch, tmp_path, lambda lr: min(1.0, lr * 100), lambda lr: 0.3 + lr)
    cfg = config(tmp_path, "method=[lora]", "tune.write=false", "tune.max_extensions=1")
    tune.tune(cfg)
    out = capsys.readouterr().out
    assert "lora: lr 0.0006 was the bottom of its grid; grid extended to x0.09" in out
    assert "lora: the chosen lr 0.00018 is still the bottom of its grid after 1 extension(s)" in out
