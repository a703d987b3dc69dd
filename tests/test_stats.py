"""The statistics module against independent computations: scipy's bootstrap, a slow explicit
two-level resampling loop, the resampled means counted by hand, and hand-made tables whose answers are known."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bench import records, stats


def test_one_level_matches_scipys_percentile_bootstrap():
    values = np.array([0.31, 0.42, 0.35, 0.55, 0.47, 0.29, 0.51, 0.38])
    mean, lo, hi = stats.hierarchical_bootstrap([values], stats.Settings(n_boot=40000))
    ref = sps.bootstrap((values,), np.mean, n_resamples=40000, method="percentile", confidence_level=0.95, random_state=1).confidence_interval
    assert mean == pytest.approx(values.mean())
    assert lo == pytest.approx(ref.low, abs=0.006) and hi == pytest.approx(ref.high, abs=0.006)


def slow_two_level(groups, n_boot, rng):
    """The textbook hierarchical bootstrap, one replicate at a time."""
    out = []
    for _ in range(n_boot):
        picks = rng.integers(0, len(groups), len(groups))
        out.append(np.mean([rng.choice(groups[c], len(groups[c])).mean() for c in picks]))
    return np.quantile(out, [0.025, 0.975])


def test_two_levels_match_an_explicit_resampling_loop():
    groups = [np.array([0.2, 0.25, 0.22]), np.array([0.5, 0.45, 0.55]), np.array([0.35, 0.3, 0.4]), np.array([0.6, 0.62, 0.58])]
    mean, lo, hi = stats.hierarchical_bootstrap(groups, stats.Settings(n_boot=20000))
    ref_lo, ref_hi = slow_two_level(groups, 20000, np.random.default_rng(7))
    assert mean == pytest.approx(np.mean([g.mean() for g in groups]))  # every concept weighs the same
    assert lo == pytest.approx(ref_lo, abs=0.01) and hi == pytest.approx(ref_hi, abs=0.01)
    # Between-concept spread dominates: the interval is far wider than pooling runs as independent.
    pooled = sps.bootstrap((np.concatenate(groups),), np.mean, n_resamples=5000, method="percentile", random_state=1).confidence_interval
    assert hi - lo > 1.2 * (pooled.high - pooled.low)


def test_a_single_unit_has_no_interval():
    mean, lo, hi = stats.hierarchical_bootstrap([np.array([0.4])])
    assert mean == 0.4 and np.isnan(lo) and np.isnan(hi)


CONCEPTS = (("c1", "object"), ("c2", "style"))
FOUR = (("c1", "object"), ("c2", "style"), ("c3", "object"), ("c4", "style"))


def table(tmp_path, effect=0.1, seeds=(0, 1, 2), gen_seeds=(0, 1, 2, 3), concepts=CONCEPTS):
    """Two methods on 2 concepts (or `concepts`) x 3 training seeds; lora = ti + effect on every run (plus run noise)."""
    rng = np.random.default_rng(0)
    rows = []
    for concept, kind in concepts:
        for seed in seeds:
            base = rng.normal(0.4, 0.05)
            for method, shift in (("textual_inversion", 0.0), ("lora", effect)):
                ident = {"run_id": f"{method}-{concept}-{seed}", "model": "micro", "method": method, "config": method[:4], "concept": concept, "kind": kind, "train_seed": seed, "sweep": "s", "status": "ok"}
                for w in (0.0, 0.5, 1.0):
                    for g in gen_seeds:
                        # Even generation seeds (selection) prefer weight 0.5, odd ones (report) weight 1.
                        bump = (0.05 if w == 0.5 else 0.0) if g % 2 == 0 else (0.05 if w == 1.0 else 0.0)
                        rows.append({**ident, "prompt_id": "instance_0", "seed": g, "weight": w, "metric": "clip_i", "value": base + shift * w + bump + 0.001 * g, "unit": "cos"})
    records.write_stage(tmp_path, "t", rows)
    return records.read_table(tmp_path)


def test_unit_is_the_training_run(tmp_path):
    units = stats.unit_values(table(tmp_path), "clip_i", 1.0)
    assert len(units) == 12 and units.groupby("method").size().tolist() == [6, 6]


def test_paired_difference_finds_a_consistent_effect(tmp_path):
    df = table(tmp_path, effect=0.1, concepts=FOUR)
    p = stats.paired(df, "clip_i", 1.0)
    overall = p[p.scope == "overall"].iloc[0]
    a_is_lora = overall.method_a == "lora"
    assert overall.n_pairs == 12 and overall["diff"] == pytest.approx(0.1 if a_is_lora else -0.1, abs=1e-9)
    assert overall.resolved and overall.better == "lora" and overall.a_wins == (1.0 if a_is_lora else 0.0) and overall.ties == 0
    assert overall.p < 0.05 and set(p.scope) == {"overall", "object", "style"}


def test_the_verdict_and_its_p_value_are_one_rule(tmp_path):
    """p comes from the same resamples as the interval: below 0.05 exactly when the interval excludes 0,
    checked against the resampled means counted by hand."""
    rng = np.random.default_rng(5)
    for shift in (0.0, 0.01, 0.02, 0.05):
        groups = [rng.normal(shift, 0.03, 3) for _ in range(5)]
        mean, lo, hi, p = stats.bootstrap_test(groups)
        assert (mean, lo, hi) == stats.hierarchical_bootstrap(groups)
        assert (p < 0.05) == (lo > 0 or hi < 0), (shift, p, lo, hi)
        _, resampled = stats._resampled(groups, stats.Settings())
        assert p == pytest.approx(min(1, 2 * min((resampled <= 0).mean(), (resampled >= 0).mean())))


def test_no_verdict_with_too_few_concepts(tmp_path):
    """Two concepts have three distinct concept resamples: the effect is consistent, but no verdict."""
    overall = stats.paired(table(tmp_path, effect=0.1), "clip_i", 1.0).query("scope == 'overall'").iloc[0]
    assert overall.n_pairs == 6 and not overall.resolved and overall.better == "too few concepts"


def test_no_effect_is_not_resolved(tmp_path):
    df = table(tmp_path, effect=0.0, concepts=FOUR)
    df.loc[(df.method == "lora"), "value"] += np.random.default_rng(3).normal(0, 0.03, (df.method == "lora").sum())
    overall = stats.paired(df, "clip_i", 1.0).query("scope == 'overall'").iloc[0]
    assert overall.low < 0 < overall.high and not overall.resolved and overall.better == "unresolved"


def test_ranking_marks_resolved_neighbours(tmp_path):
    df = table(tmp_path, effect=0.1, concepts=FOUR)
    r = stats.ranking(stats.summarize(df, "clip_i", 1.0), stats.paired(df, "clip_i", 1.0), "clip_i")
    overall = r[r.scope == "overall"]
    assert overall.method.tolist() == ["lora", "textual_inversion"] and overall["rank"].tolist() == [1, 2]
    assert overall.vs_next.tolist() == ["resolved", ""] and overall.beats_resolved.tolist() == [1, 0]


def test_equal_means_share_a_rank(tmp_path):
    df = table(tmp_path, effect=0.0, concepts=FOUR)
    r = stats.ranking(stats.summarize(df, "clip_i", 1.0), stats.paired(df, "clip_i", 1.0), "clip_i")
    assert r[r.scope == "overall"]["rank"].tolist() == [1, 1]


def test_a_flat_curve_has_no_best_weight(tmp_path):
    df = table(tmp_path, effect=0.0)
    df = df.assign(value=0.0)  # e.g. presence 0 at every weight
    best = stats.best_weights(df, "clip_i")
    assert best.best_weight.isna().all() and stats.at_best_weight(df, "clip_i", best).empty


def test_best_weight_is_chosen_on_one_half_and_reported_on_the_other(tmp_path):
    df = table(tmp_path, effect=0.0)
    best = stats.best_weights(df, "clip_i")
    assert set(best.best_weight) == {0.5}  # what the selection seeds (0, 2) prefer
    assert list(best.selected_on.iloc[0]) == [0, 2] and list(best.reported_on.iloc[0]) == [1, 3]
    held_out = stats.at_best_weight(df, "clip_i", best)
    same_images = stats.summarize(df, "clip_i", 0.5, [0, 2])
    # Reported on seeds 1 and 3, where weight 0.5 has no bump: 0.05 lower than on the seeds that chose it
    # (less the seeds' own offsets, 0.001 * seed: means 0.001 on seeds 0, 2 and 0.002 on seeds 1, 3).
    diff = same_images.query("scope == 'overall'")["mean"].to_numpy() - held_out.query("scope == 'overall'")["mean"].to_numpy()
    assert np.allclose(diff, 0.05 + 0.001 - 0.002, atol=1e-9)


def test_per_kind_verdicts_need_enough_concepts_and_pairs(tmp_path):
    p = stats.paired(table(tmp_path, effect=0.1, concepts=FOUR), "clip_i", 1.0)
    # 2 concepts of each kind: too few concepts before too few pairs.
    assert (p[p.scope != "overall"].better == "too few concepts").all() and not p[p.scope != "overall"].resolved.any()


def test_rows_of_a_failed_stage_are_left_out(tmp_path):
    df = table(tmp_path)
    bad = df.iloc[:1].assign(status="failed: boom", value=100.0)
    assert stats.unit_values(pd.concat([df, bad]), "clip_i", 0.0).value.max() < 1


def test_the_ranking_says_what_a_neighbour_comparison_needs(tmp_path):
    df = table(tmp_path, effect=0.1)  # two concepts: no verdict between neighbours either
    r = stats.ranking(stats.summarize(df, "clip_i", 1.0), stats.paired(df, "clip_i", 1.0), "clip_i")
    assert r[r.scope == "overall"].vs_next.tolist() == [f"needs ≥ {stats.MIN_CONCEPTS} concepts", ""]
