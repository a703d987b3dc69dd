"""The concept-presence oracle, the blank-image count and the metric-validity statistics, each against
ground truth it does not compute itself: the world's own renders, hand-made images, and rank
correlations computed from numpy ranks."""

import random

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from bench import records, stats, validity, world
from bench.build.oracle import render_example
from bench.oracle import NONE, concept_target, load_oracle
from metrics import blank


# ------------------------------------------------------------------------------------------ oracle


@pytest.mark.parametrize("name", list(world.CONCEPTS))
def test_oracle_sees_each_concept_in_fresh_renders(name):
    renders = world.concept_images(name, 12, seed=4242)  # a seed neither training nor the benchmark uses
    hits = load_oracle().present(renders, name)
    assert sum(hits) >= 11, (name, hits)


def test_oracle_sees_no_held_out_concept_in_world_images():
    images = [world.sample(i, seed=777).image for i in range(48)]  # known shapes, solid known colours
    oracle = load_oracle()
    for name in world.CONCEPTS:
        assert sum(oracle.present(images, name)) <= 2, name


def test_an_object_is_present_only_in_its_own_colour():
    """sks_crescent is a crescent in a colour the world never names: the base model's crescents, in named
    colours, are crescents to the shape head but not the concept."""
    rng = random.Random(5)
    layouts = [world.Layout.sample(rng) for _ in range(8)]
    white = world.BACKGROUNDS["white"]
    own = [world.render("crescent", world.OBJECT_SHAPES["crescent"][1], white, lay) for lay in layouts]
    named = [world.render("crescent", world.COLOURS[c], white, lay) for c, lay in zip(["red", "purple", "blue", "green"] * 2, layouts)]
    oracle = load_oracle()
    assert [shape for shape, _ in oracle.classify(named)].count("crescent") >= 7
    assert sum(oracle.present(own, "sks_crescent")) >= 7 and sum(oracle.present(named, "sks_crescent")) == 0


def test_oracle_calls_a_flat_image_none_and_no_concept_present():
    flats = [Image.new("RGB", (64, 64), c) for c in world.BACKGROUNDS.values()]
    oracle = load_oracle()
    assert [shape for shape, _ in oracle.classify(flats)] == [NONE] * len(flats)
    assert not any(oracle.present(flats, "zwx_checker")) and not any(oracle.present(flats, "sks_ring"))


def test_concept_targets_come_from_the_world_definitions():
    assert concept_target("sks_crescent") == ("shape", "crescent")
    assert concept_target("zwx_dots") == ("fill", "dots")
    with pytest.raises(KeyError, match="world concepts only"):
        concept_target("my_dog")


def test_training_examples_are_deterministic_and_labelled():
    a = render_example(random.Random("x"))
    b = render_example(random.Random("x"))
    assert a[1:] == b[1:] and np.array_equal(np.asarray(a[0]), np.asarray(b[0]))


# ------------------------------------------------------------------------------------------ blank


def test_blank_counts_flat_and_near_flat_images_only():
    flat = Image.new("RGB", (64, 64), (240, 240, 240))
    speck = flat.copy()
    ImageDraw.Draw(speck).rectangle((10, 10, 12, 12), fill=(0, 0, 0))  # 9 px = 0.2 % of the image
    shape = flat.copy()
    ImageDraw.Draw(shape).rectangle((10, 10, 19, 19), fill=(200, 30, 30))  # 100 px = 2.4 %
    faint = Image.fromarray(np.clip(np.asarray(flat, np.int16) + np.random.default_rng(0).integers(-20, 21, (64, 64, 3)), 0, 255).astype(np.uint8))
    assert blank.blank([flat, speck, shape, faint]) == [1.0, 1.0, 0.0, 1.0]


# ------------------------------------------------------------------------------------------ validity


def cells_table(tmp_path, proxy_of_truth, concepts=("c1", "c2", "c3", "c4")):
    """Two methods x 3 weights x concepts, 2 training seeds; clip_i = proxy_of_truth(presence)."""
    rng = np.random.default_rng(0)
    rows = []
    for ci, concept in enumerate(concepts):
        for seed in (0, 1):
            for method, strength in (("lora", 1.0), ("textual_inversion", 0.4)):
                ident = {"run_id": f"{method}-{concept}-{seed}", "model": "micro", "method": method, "config": "x", "concept": concept,
                         "kind": "object", "train_seed": seed, "sweep": "s", "status": "ok", "prompt_id": "instance_0"}
                for w in (0.0, 0.5, 1.0):
                    truth = min(1.0, strength * w * (0.6 + 0.15 * ci) + 0.02 * seed)
                    for g in (0, 1):
                        rows.append({**ident, "seed": g, "weight": w, "metric": "presence", "value": truth, "unit": "share"})
                        rows.append({**ident, "seed": g, "weight": w, "metric": "clip_i", "value": proxy_of_truth(truth) + 1e-3 * rng.normal(), "unit": "cos"})
    records.write_stage(tmp_path, "t", rows)
    return records.read_table(tmp_path)


def numpy_spearman(a, b):
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    return np.corrcoef(ra, rb)[0, 1]


def test_a_proxy_that_follows_ground_truth_agrees(tmp_path):
    df = cells_table(tmp_path, lambda t: 0.1 + 0.5 * t)
    t = validity.agreement(df, stats.Settings(n_boot=200))
    row = t.set_index("metric").loc["clip_i"]
    truth, proxy = validity.cells(df, "presence"), validity.cells(df, "clip_i")
    assert row.rho == pytest.approx(numpy_spearman(proxy.loc[truth.index], truth))
    assert row.rho > 0.95 and bool(row.agrees) and row.cells == 24 and row.concepts == 4
    assert validity.best_proxy(t) == "clip_i"


def test_too_few_concepts_give_no_interval_and_no_verdict(tmp_path):
    """Two concepts have three distinct concept resamples: the estimate would sit on an end of its interval.
    So below stats.MIN_CONCEPTS there is neither, and the report says what it needs."""
    from bench.report.tables import validity_table

    df = cells_table(tmp_path, lambda t: 0.1 + 0.5 * t, concepts=("c1", "c2"))
    row = validity.agreement(df, stats.Settings(n_boot=200)).set_index("metric").loc["clip_i"]
    assert row.rho > 0.95 and pd.isna(row.agrees) and np.isnan(row.low) and np.isnan(row.high)
    caption, table = validity_table(df)
    assert table.loc["CLIP-I ↑", "agrees with ground truth"] == f"needs ≥ {stats.MIN_CONCEPTS} concepts" and "Too few concepts here" in caption


def test_a_proxy_that_runs_against_ground_truth_does_not(tmp_path):
    df = cells_table(tmp_path, lambda t: 0.6 - 0.5 * t)
    row = validity.agreement(df, stats.Settings(n_boot=200)).set_index("metric").loc["clip_i"]
    assert row.rho < -0.9 and not pd.isna(row.agrees) and not row.agrees


def test_lower_is_better_metrics_are_negated(tmp_path):
    df = cells_table(tmp_path, lambda t: 0.1 + 0.5 * t)
    df = pd.concat([df, df[df.metric == "clip_i"].assign(metric="cmmd", value=lambda d: 1 - d.value)], ignore_index=True)
    t = validity.agreement(df, stats.Settings(n_boot=100)).set_index("metric")
    assert t.loc["cmmd"].rho == pytest.approx(t.loc["clip_i"].rho)


def test_headline_is_ground_truth_where_the_oracle_judged(tmp_path):
    df = cells_table(tmp_path, lambda t: t)
    assert validity.headline(df) == "presence"
    assert validity.headline(df[df.metric != "presence"]) == validity.PROXY_WITHOUT_ORACLE
    assert validity.headline(df, "clip_t") == "clip_t"
