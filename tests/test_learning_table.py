"""The learning verdict: ground truth (the oracle's presence at weight 1 against the same run's weight 0)
decides, with a t-interval over training runs; CLIP-I's gain stands beside it as a proxy. Checked on
hand-made tables against a hand computation of the interval."""

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from comparison import learning_table  # noqa: E402


def rows(method: str, at: dict[float, list[float]], metric: str = "presence", concept: str = "zwx_dots") -> list[dict]:
    """`at[w][t]`: the value of training run t at weight w (the same for both generation seeds)."""
    return [
        {"model": "micro", "method": method, "config": "c", "sweep": "s", "concept": concept, "kind": "style", "train_seed": t,
         "run_id": f"{method}{concept}{t}", "prompt_id": "instance_0", "seed": g, "weight": w, "metric": metric, "value": v, "status": "ok"}
        for w, values in at.items() for t, v in enumerate(values) for g in (0, 1)
    ]


def hand_t_interval(d):
    # t quantiles for 95 %: 2 df 4.302653, 3 df 3.182446 (tables)
    q = {2: 4.302653, 3: 3.182446}[len(d) - 1]
    half = q * np.std(d, ddof=1) / math.sqrt(len(d))
    return np.mean(d), np.mean(d) - half, np.mean(d) + half


def test_t_interval_matches_a_hand_computation():
    d = np.array([0.5, 0.8, 0.65, 0.9])
    assert stats.t_interval(d) == pytest.approx(hand_t_interval(d), abs=1e-5)
    assert all(math.isnan(x) for x in stats.t_interval(np.array([0.4]))[1:])


def test_learned_needs_the_gain_and_an_interval_that_excludes_zero():
    df = pd.DataFrame(
        rows("lora", {1.0: [0.8, 0.9, 0.7], 0.0: [0.0, 0.05, 0.0]})  # learned
        + rows("hypernetwork", {1.0: [0.2, 0.25, 0.15], 0.0: [0.0, 0.0, 0.0]})  # resolved, but under 0.25
        + rows("dreambooth", {1.0: [0.9, 0.9, 0.0], 0.0: [0.0, 0.0, 0.3]})  # mean 0.5, one run the other way
        + rows("textual_inversion", {1.0: [0.5, 0.5, 0.6], 0.0: [0.4, 0.5, 0.45]})  # its own weight 0 is high
    )
    t = stats.learned(df).set_index("method")
    assert t.loc["lora", "gain"] == pytest.approx(np.mean([0.8, 0.85, 0.7]))
    assert (t.loc["lora", "low"], t.loc["lora", "high"]) == pytest.approx(hand_t_interval([0.8, 0.85, 0.7])[1:])
    assert t.loc["lora", "verdict"] == "learned" and t.learned.sum() == 1
    assert t.loc["hypernetwork", "verdict"] == "not learned"
    assert t.loc["dreambooth", "gain"] == pytest.approx(0.5) and t.loc["dreambooth", "verdict"] == "unresolved"
    assert t.loc["textual_inversion", "gain"] == pytest.approx(np.mean([0.1, 0.0, 0.15])) and not t.loc["textual_inversion", "learned"]
    one = stats.learned(pd.DataFrame(rows("lora", {1.0: [1.0], 0.0: [0.0]})))
    assert one.verdict.iloc[0] == "one run: no interval" and not one.learned.iloc[0]


def test_the_benchmark_table_is_decided_by_presence_with_clip_i_beside_it():
    # CLIP-I gains a lot (the proxy would say learned) while the oracle sees nothing: not learned.
    df = pd.DataFrame(rows("lora", {1.0: [0.0, 0.0, 0.05], 0.0: [0.0, 0.0, 0.0]})
                      + rows("lora", {1.0: [0.5, 0.6, 0.55], 0.0: [0.1, 0.1, 0.1]}, metric="clip_i"))
    table = learning_table(df).iloc[0]
    assert table.learned == "not learned" and table["proxy says (gain >= 0.05)"] == "learned"
    assert table["CLIP-I gain"] == pytest.approx(0.45) and table["presence @1"] == pytest.approx(0.05 / 3)


def test_two_configs_of_a_method_are_two_rows_never_one():
    a = pd.DataFrame(rows("lora", {1.0: [0.8, 0.9, 0.7], 0.0: [0.0, 0.0, 0.0]}))
    b = pd.DataFrame(rows("lora", {1.0: [0.1, 0.1, 0.2], 0.0: [0.0, 0.0, 0.0]})).assign(config="other", run_id=lambda d: d.run_id + "b")
    table = learning_table(pd.concat([a, b], ignore_index=True)).set_index("config")
    assert table.loc["c", "learned"] == "learned" and table.loc["other", "learned"] == "not learned"
