"""The comparison benchmark's learning criterion: each method's CLIP-I at weight 1 against one reference
shared by every method (the base model's images of the prompts), checked on a hand-made table."""

import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from comparison import MIN_GAIN, learning_table, reproduces_base_prompt  # noqa: E402


def rows(method: str, clip_at: dict[float, float], seeds=(0, 1, 2)) -> list[dict]:
    return [
        {"model": "micro", "method": method, "config": "c", "sweep": "s", "concept": "zwx_muted", "kind": "style", "train_seed": t,
         "run_id": f"{method}{t}", "prompt_id": "instance_0", "seed": g, "weight": w, "metric": "clip_i", "value": v + 0.01 * t, "status": "ok"}
        for t in seeds for g in (0, 1) for w, v in clip_at.items()
    ]


def test_only_a_method_that_rewrites_the_prompt_at_weight_0_is_off_the_base():
    assert not reproduces_base_prompt("textual_inversion")
    assert all(reproduces_base_prompt(m) for m in ("dreambooth", "lora", "hypernetwork", "dora", "loha", "lokr", "oft"))


def test_learning_is_judged_against_the_base_model_not_a_methods_own_weight_0():
    # LoRA's weight 0 is the base model (0.20); TI's weight 0 is its initializer word's image (0.40).
    df = pd.DataFrame(rows("lora", {1.0: 0.30, 0.0: 0.20}) + rows("textual_inversion", {1.0: 0.30, 0.0: 0.40}))
    table = learning_table(df).set_index("method")
    for method in ("lora", "textual_inversion"):
        assert table.loc[method, "CLIP-I base"] == pytest.approx(0.21)  # the base's mean over LoRA's runs
        assert table.loc[method, "gain (mean)"] == pytest.approx(0.30 + 0.01 - 0.21)
        assert table.loc[method, "learned"] == (0.10 >= MIN_GAIN)
    assert table.loc["textual_inversion", "gain over own @0"] == pytest.approx(-0.10)  # per run: same seed's weight 0
    assert table.loc["lora", "gain over own @0"] == pytest.approx(0.10)


def test_a_method_below_the_base_has_not_learned():
    df = pd.DataFrame(rows("lora", {1.0: 0.22, 0.0: 0.20}))
    table = learning_table(df)
    assert not table.learned.iloc[0] and table["runs gaining"].iloc[0] == "3/3"
