"""Regression checks: pass on an unchanged run, fail on a degraded one, exit 2 on a bad baseline."""

import json
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from bench import records
from bench.regression import BaselineError, compare, holm, method_decisions, read_baseline, write_baseline, write_junit

ROOT = Path(__file__).resolve().parents[1]
CHECK = {"alpha": 0.05, "tolerances": {"clip_i": {"abs": 0.01}, "drift": {"abs": 0.01}, "fd": {"rel": 0.05}, "default": {"rel": 0.05}}}


def table(tmp_path, clip_i=0.7, drift=0.05, fd=1.0, seeds=(0, 1, 2), spread=0.02, lora_shift=0.0):
    """Two methods, two concepts x `seeds`; run-to-run spread `spread` across training seeds."""
    rows = []
    for method in ("lora", "hypernetwork"):
        for concept in ("c1", "c2"):
            for seed in seeds:
                rid = f"{method}-{concept}-{seed}"
                ident = {"run_id": rid, "model": "micro", "method": method, "config": method[:4], "concept": concept, "kind": "object", "train_seed": seed, "sweep": "s", "status": "ok"}
                noise = spread * ((seed * 7919) % 5 - 2) / 2  # a fixed, seed-dependent spread
                shift = lora_shift if method == "lora" else 0.0
                for g in (0, 1):
                    rows += [
                        {**ident, "prompt_id": "instance_0", "seed": g, "weight": 1.0, "metric": "clip_i", "value": clip_i + noise + shift, "unit": "cos"},
                        {**ident, "prompt_id": "unrelated_0", "seed": g, "weight": 1.0, "metric": "drift", "value": drift, "unit": "1-cos"},
                        {**ident, "prompt_id": "instance_0", "seed": g, "weight": 0.0, "metric": "clip_i", "value": 0.1, "unit": "cos"},
                    ]
                rows.append({**ident, "weight": 1.0, "metric": "fd_microclip", "value": fd, "unit": "fd"})
                rows.append({**{k: v for k, v in ident.items() if k != "sweep"}, "metric": "artifact_bytes", "value": 1000.0, "unit": "B"})
    records.write_stage(tmp_path, "t", rows)
    return records.read_table(tmp_path)


def test_baseline_holds_each_run_the_spread_and_direction(tmp_path):
    doc = write_baseline(table(tmp_path / "run"), tmp_path / "b.json")
    lora = read_baseline(tmp_path / "b.json")["methods"]["lora"]
    ci = lora["metrics"]["clip_i"]
    assert lora["config"] == "lora" and ci["higher_is_better"] is True and ci["n_runs"] == 6 and len(ci["units"]) == 6
    values = np.array(list(ci["units"].values()))
    assert ci["value"] == pytest.approx(values.mean())
    # Pooled within-concept SD: both concepts have the same three seed values here.
    assert ci["within_sd"] == pytest.approx(np.std(values[:3], ddof=1))
    assert lora["metrics"]["drift"]["higher_is_better"] is False and lora["metrics"]["fd_microclip"]["higher_is_better"] is False
    assert lora["metrics"]["artifact_bytes"]["value"] == 1000.0 and doc["weight"] == 1.0


def brute_force_maxt(statistics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference: raw and Westfall-Young step-down adjusted p from every resample's statistics [resamples x
    tests] (row 0 observed), by the textbook loop over hypotheses sorted by their observed statistic."""
    obs = statistics[0]
    raw = (statistics >= obs).mean(axis=0)
    order = list(np.argsort(-obs, kind="stable"))
    adjusted, running = np.zeros(len(obs)), 0.0
    for k, j in enumerate(order):
        running = max(running, float((statistics[:, order[k:]].max(axis=1) >= obs[j]).mean()))
        adjusted[j] = running
    return raw, adjusted


def worse_t(d: np.ndarray) -> float:
    """Student's t of 'the mean difference is below 0' (positive: worse)."""
    return float(-d.mean() / (d.std(ddof=1) / np.sqrt(len(d))))


def test_other_training_seeds_pass_a_real_degradation_fails_naming_method_and_metric(tmp_path):
    doc = write_baseline(table(tmp_path / "base"), tmp_path / "b.json")
    same = compare(doc, table(tmp_path / "same"), CHECK)
    assert not any(c.regressed for c in same) and all(c.p == 1.0 for c in same if c.metric == "clip_i")
    other = compare(doc, table(tmp_path / "other", seeds=(3, 4, 5)), CHECK)  # other seeds: other noise, unpaired
    assert not any(c.regressed for c in other), [c for c in other if c.regressed]
    worse = compare(doc, table(tmp_path / "worse", seeds=(3, 4, 5), lora_shift=-0.1), CHECK)
    assert [(c.method, c.metric) for c in worse if c.regressed] == [("lora", "clip_i")]
    assert method_decisions(worse) == {"hypernetwork": "ok", "lora": "REGRESSED (clip_i)"}
    clip = next(c for c in worse if c.method == "lora" and c.metric == "clip_i")
    # Unpaired: the t of the two means from the pooled within-concept spread, its p over all 400
    # relabellings of which 3 of each concept's 6 runs are the baseline's (C(6, 3) squared). table()'s
    # noise for seeds 0, 1, 2 is -0.02, +0.02, +0.01 and for 3, 4, 5 it is 0, -0.01, -0.02, both concepts alike.
    runs = np.array([-0.02, 0.02, 0.01, 0.0 - 0.1, -0.01 - 0.1, -0.02 - 0.1])  # one concept: baseline's, then the check's

    def t_of(now_idx: tuple, other_idx: tuple) -> float:
        groups = [runs[list(now_idx)], runs[list(other_idx)]] * 2  # two concepts, the same values
        pooled = np.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups) / 8)
        now = np.concatenate([runs[list(now_idx)]] * 2)
        base = np.concatenate([runs[list(other_idx)]] * 2)
        return float(-(now.mean() - base.mean()) / (pooled * np.sqrt(1 / 6 + 1 / 6)))

    import itertools

    per_concept = [(c, tuple(i for i in range(6) if i not in c)) for c in itertools.combinations(range(6), 3)]
    observed = t_of((3, 4, 5), (0, 1, 2))
    assert observed > 0
    # Both concepts relabelled independently: the t of a pair of relabellings, pooled over both concepts.
    stats_all = []
    for (now1, base1), (now2, base2) in itertools.product(per_concept, per_concept):
        groups = [runs[list(now1)], runs[list(base1)], runs[list(now2)], runs[list(base2)]]
        pooled = np.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups) / 8)
        now = np.concatenate([runs[list(now1)], runs[list(now2)]])
        base = np.concatenate([runs[list(base1)], runs[list(base2)]])
        stats_all.append(-(now.mean() - base.mean()) / (pooled * np.sqrt(1 / 6 + 1 / 6)))
    assert clip.test == "unpaired t, 6 vs 6 runs; maxT over 400 permutations"
    assert clip.p == pytest.approx(np.mean(np.array(stats_all) >= observed - 1e-12)) and clip.direction == "worse"


def test_a_paired_check_is_students_t_with_its_p_from_sign_flips_of_the_runs(tmp_path):
    doc = write_baseline(table(tmp_path / "base"), tmp_path / "b.json")
    df = table(tmp_path / "worse", lora_shift=-0.03)
    # Make the per-run differences uneven, so the paired test has a spread to work with.
    df.loc[(df.method == "lora") & (df.train_seed == 1) & (df.metric == "clip_i") & (df.weight == 1.0), "value"] += 0.02
    clip = next(c for c in compare(doc, df, CHECK) if c.method == "lora" and c.metric == "clip_i")
    d = np.array([-0.03, -0.01, -0.03] * 2)
    # Romano-Wolf: the flips act on the differences centred on their mean; p = (1 + count) / (1 + flips).
    flips = [np.array(s) for s in itertools_product([1, -1], 6)]
    reference = (1 + sum(worse_t(s * (d - d.mean())) >= worse_t(d) - 1e-12 for s in flips)) / (1 + len(flips))
    assert clip.test == "paired t, 6 runs; maxT over 64 sign flips" and clip.p == pytest.approx(reference) and clip.regressed


def itertools_product(values, n):
    import itertools

    return itertools.product(values, repeat=n)


def test_step_down_maxt_matches_the_textbook_loop_and_uses_correlated_metrics():
    """The family adjustment against a reference written out by hand; and on three metrics that fell
    together in every one of six runs, each is significant for the family (p = 1/64; 1/65 centred), where Holm's
    procedure over the t-tests' p of five degrees of freedom would need each below 0.05 / 3."""
    from bench.regression import _sign_flips, _step_down_maxt, _t_worse

    rng = np.random.default_rng(3)
    statistics = rng.normal(size=(50, 5))
    raw, adjusted = _step_down_maxt(statistics[0], statistics)
    ref_raw, ref_adjusted = brute_force_maxt(statistics)
    assert raw == pytest.approx(ref_raw) and adjusted == pytest.approx(ref_adjusted)
    d = -np.abs(rng.normal(0.1, 0.08, size=(6, 1))) * np.array([[1.0, 0.8, 1.2]])  # three metrics, one cause
    flips = _sign_flips(6, rng)
    raw, adjusted = _step_down_maxt(_t_worse(d), _t_worse(flips[:, :, None] * d[None]))
    assert adjusted == pytest.approx([1 / 64] * 3)
    # Romano-Wolf: the null imposed by centring, the observed data not among the resamples.
    centred = _t_worse(flips[:, :, None] * (d - d.mean(axis=0))[None])
    raw, adjusted = _step_down_maxt(_t_worse(d), centred, observed_among_resamples=False)
    assert adjusted == pytest.approx([1 / 65] * 3)
    statistics = rng.normal(size=(50, 5))
    raw, adjusted = _step_down_maxt(statistics[0], statistics[1:], observed_among_resamples=False)
    ref_raw, ref_adjusted = brute_force_maxt(statistics)  # with the observed row counted once, as the +1 does
    assert raw == pytest.approx(ref_raw) and adjusted == pytest.approx(ref_adjusted)


def test_a_metric_that_improved_does_not_hide_one_that_fell():
    """DreamBooth at a tenth of its learning rate (regression_power.md): presence fell while drift improved,
    run after run. Sign flips of the raw differences turn the improvement into a large "worse" statistic in
    the flipped resamples: with one run that the change left alone, four of the 64 resamples beat the
    fall (family p 0.0625, as the benchmark measured). Flips of the centred differences do not, and the fall
    is caught at p = 1/65."""
    from bench.regression import _paired_maxt

    rng = np.random.default_rng(0)
    keys = pd.DataFrame({"concept": ["a"] * 3 + ["b"] * 3, "train_seed": [0, 1, 2] * 2})
    fell = rng.uniform(0.25, 0.5, 6)  # presence lost, unevenly ...
    improved = rng.uniform(0.02, 0.03, 6)  # ... drift lost (better), evenly: a larger t
    fell[5] = improved[5] = 0.0  # one training the change left alone
    presence = keys.assign(value_b=0.9, value_c=0.9 - fell)
    drift = keys.assign(value_b=0.3, value_c=0.3 - improved)
    raw, adjusted, n = _paired_maxt([(presence, True), (drift, False)])
    assert n == 64 and adjusted[0] == pytest.approx(1 / 65) and adjusted[1] == pytest.approx(1.0)
    # The uncentred flips, for contrast: the all-flipped resample makes drift's improvement the maximum.
    d = np.column_stack([-fell, improved])
    from bench.regression import _sign_flips, _step_down_maxt, _t_worse

    flips = _sign_flips(6, rng)
    _, westfall_young = _step_down_maxt(_t_worse(d), _t_worse(flips[:, :, None] * d[None]))
    assert westfall_young[0] == pytest.approx(4 / 64)


def test_holm_matches_a_hand_computation_and_controls_the_family():
    assert holm([0.01, 0.04, 0.03, float("nan"), 0.2]) == pytest.approx([0.04, 0.09, 0.09, float("nan"), 0.2], nan_ok=True)
    # Twenty true nulls at p = 0.02 each: no single one survives the family's correction.
    assert min(holm([0.02] * 20)) == pytest.approx(0.4)


def test_no_spread_is_decided_exactly_against_the_margin(tmp_path):
    doc = write_baseline(table(tmp_path / "base", spread=0.0), tmp_path / "b.json")
    near = compare(doc, table(tmp_path / "near", spread=0.0, clip_i=0.695), CHECK)
    assert not any(c.regressed for c in near)
    assert any(c.regressed for c in compare(doc, table(tmp_path / "far", spread=0.0, clip_i=0.68), CHECK))
    better = compare(doc, table(tmp_path / "better", spread=0.0, clip_i=0.9, drift=0.0, fd=0.5), CHECK)
    assert not any(c.regressed for c in better) and {c.direction for c in better} <= {"better", "same"}


def test_a_metric_the_run_lacks_is_not_compared_and_fails_its_method(tmp_path):
    doc = write_baseline(table(tmp_path / "base"), tmp_path / "b.json")
    doc["methods"]["lora"]["metrics"]["cmmd"] = {"value": 1.0, "higher_is_better": False}
    comparisons = compare(doc, table(tmp_path / "run"), CHECK)
    cmmd = next(c for c in comparisons if c.metric == "cmmd")
    assert cmmd.result == "NOT COMPARED" and cmmd.test == "not in this run"
    assert method_decisions(comparisons)["lora"] == "NOT COMPARED (cmmd)"


def test_junit_xml_has_one_case_per_method(tmp_path):
    doc = write_baseline(table(tmp_path / "base"), tmp_path / "b.json")
    comparisons = compare(doc, table(tmp_path / "worse", clip_i=0.5), CHECK)
    write_junit(comparisons, tmp_path / "j.xml")
    suite = ET.parse(tmp_path / "j.xml").getroot()
    assert suite.get("failures") == "2" and suite.get("tests") == "2"
    assert "clip_i" in suite.find("testcase[@name='lora']/failure").get("message")


@pytest.mark.parametrize("content,match", [
    (None, "does not exist"), ("{not json", "not valid JSON"), ('{"format": "other"}', "not an adapterbench baseline"),
    ('{"format": "adapterbench-baseline/2", "methods": {"lora": {"metrics": {"clip_i": {"value": "high"}}}}}', "numeric 'value'"),
    ('{"format": "adapterbench-baseline/2", "methods": {}}', "holds no methods"),
    ('{"format": "adapterbench-baseline/2", "methods": {"lora": {"metrics": {"clip_i": {"value": NaN, "higher_is_better": true}}}}}', "not a finite number"),
])
def test_malformed_baselines_are_clear_errors(tmp_path, content, match):
    path = tmp_path / "b.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BaselineError, match=match):
        read_baseline(path)


@pytest.mark.parametrize("check,match", [({"alpha": 0}, "check.alpha"), ({"alpha": 1.5}, "check.alpha"), ({"tolerances": {"clip_i": {"abs": -1}}}, "check.tolerances.clip_i"),
                                         ({"tolerances": {"clip_i": {"absolute": 0.1}}}, "check.tolerances.clip_i")])
def test_nonsense_check_settings_name_the_key(check, match):
    from bench.regression import check_settings

    with pytest.raises(BaselineError, match=match):
        check_settings(check)


def run_cli(*args):
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True)


def test_command_line_modes_and_exit_codes(tmp_path):
    """One real smoke run: baseline (running it first), check passes (0), a better baseline fails (1),
    a malformed baseline is a usage error (2), and a check with another config runs that config's
    stages and says how it differs from the baseline, instead of testing the old rows."""
    common = [f"results_dir={tmp_path / 'run'}", "method=[lora,textual_inversion]", "data=sks_crescent", "seeds=[0,1]", "train=smoke", "sweep=smoke", "progress=false", "workers=1", "threads=1"]
    r = run_cli("mode=baseline", f"baseline={tmp_path / 'b.json'}", *common)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "b.json").read_text())["config"]["train"]["steps"] == 4
    r = run_cli("mode=check", f"baseline={tmp_path / 'b.json'}", *common)
    assert r.returncode == 0 and "0 of 2 methods regressed" in r.stdout and "differs" not in r.stdout, r.stdout + r.stderr[-2000:]
    assert (tmp_path / "run" / "regression_junit.xml").is_file()

    doc = json.loads((tmp_path / "b.json").read_text())
    # A baseline far better in every run.
    clip = doc["methods"]["lora"]["metrics"]["clip_i"]
    clip["value"] += 5.0
    clip["units"] = {k: v + 5.0 for k, v in clip["units"].items()}
    (tmp_path / "better.json").write_text(json.dumps(doc))
    r = run_cli("mode=check", f"baseline={tmp_path / 'better.json'}", *common)
    assert r.returncode == 1 and "lora: REGRESSED (clip_i)" in r.stdout

    (tmp_path / "bad.json").write_text("[]")
    r = run_cli("mode=check", f"baseline={tmp_path / 'bad.json'}", *common)
    assert r.returncode == 2 and "bad.json" in r.stderr

    # A baseline of another concept is refused, never compared (crescent against stripes).
    r = run_cli("mode=check", f"baseline={tmp_path / 'b.json'}", *common, "data=zwx_stripes")
    assert r.returncode == 2 and "was made on concepts ['sks_crescent'], this check runs ['zwx_stripes']" in r.stderr, r.stderr[-2000:]

    trained = len(list((tmp_path / "run" / "train").iterdir()))
    r = run_cli("mode=check", f"baseline={tmp_path / 'b.json'}", *common, "train.steps=5")
    assert "train.steps differs from the baseline's: 4 -> 5" in r.stdout, r.stdout
    assert len(list((tmp_path / "run" / "train").iterdir())) == trained + 4  # the new config really trained
    assert "also holds 8 training/scoring stage(s) of other configs; they are not read" in r.stdout, r.stdout


@pytest.mark.slow
def test_check_has_power_a_tenth_of_the_learning_rate_fails_naming_the_method(tmp_path):
    """Real training (the hypernetwork, one concept x 6 training seeds, a third of the shipped budget and no
    learning-curve checkpoints, so the suite stays short): the baseline's seeds with a tenth of the learning
    rate fail, naming the method (paired, Romano-Wolf maxT over the 64 sign flips of six runs). The harmless
    changes that must pass (other training seeds, a rerun, another thread layout) and LoRA and DreamBooth
    broken the same way, at the shipped budget, with the false-alarm rate: regression_power.md; the
    unpaired path on other seeds: test_other_training_seeds_pass_a_real_degradation_fails_naming_method_and_metric."""
    common = ["method=[hypernetwork]", "data=sks_crescent", "sweep.weights=[0.0,1.0]", "sweep.seeds=[0,1]", "progress=false",
              "train.steps=100", "train.checkpoints=[]", "seeds=[0,1,2,3,4,5]"]
    r = run_cli("mode=baseline", f"baseline={tmp_path / 'b.json'}", f"results_dir={tmp_path / 'base'}", *common)
    assert r.returncode == 0, r.stderr[-2000:]
    from omegaconf import OmegaConf

    tenth = float(OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "method" / "hypernetwork.yaml").lr) / 10
    r = run_cli("mode=check", f"baseline={tmp_path / 'b.json'}", f"results_dir={tmp_path / 'slow'}", f"method.hypernetwork.lr={tenth:g}", *common)
    assert r.returncode == 1, r.stdout
    regressed = [line.split()[:2] for line in r.stdout.splitlines() if "REGRESSED" in line and not line.startswith("adapterbench:")]
    assert regressed and all(method == "hypernetwork" for method, _ in regressed), r.stdout
    assert "hypernetwork: REGRESSED" in r.stdout and (tmp_path / "slow" / "regression_junit.xml").is_file()
    assert "Romano-Wolf" in r.stdout


def test_config_differences_name_each_changed_key_with_both_values():
    """Each changed leaf by its dotted key (the one a user types), old -> new, however long the rest of the
    config is (a note cut at a fixed width used to lose exactly the key that changed)."""
    from bench.regression import config_differences

    padding = {f"key{i:02d}": "x" * 30 for i in range(20)}
    base = {"train": {**padding, "steps": 150, "curve": [0.5]}, "method": {"lora": {"lr": 0.002, "rank": 4}}, "seeds": [0, 1, 2]}
    now = {"train": {**padding, "steps": 40, "curve": [0.25, 0.5]}, "method": {"lora": {"lr": 0.002, "rank": 4, "alpha": 8}}, "seeds": [0, 1, 2]}
    lines = config_differences({"config": base}, now)
    assert lines == ["train.curve differs from the baseline's: [0.5] -> [0.25, 0.5]",
                     "train.steps differs from the baseline's: 150 -> 40",
                     "method.lora.alpha differs from the baseline's: (not set) -> 8"]
    assert config_differences({"config": base}, base) == []
    assert config_differences({}, now) == ["the baseline stores no config; it cannot say whether this check runs the same comparison"]


def test_an_output_file_that_cannot_be_written_is_named_before_the_work(tmp_path):
    """mode=baseline / mode=check write their verdict at the end: a folder, a path under a file or a
    read-only folder is refused first, naming the key (before, it was a traceback after all the training)."""
    import os

    from bench.regression import output_file_error

    (tmp_path / "a_file").write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    assert output_file_error(tmp_path / "new" / "deeper" / "b.json", "baseline") is None
    assert "baseline: " in output_file_error(tmp_path, "baseline") and "is a folder" in output_file_error(tmp_path, "baseline")
    assert "is a file, so" in output_file_error(tmp_path / "a_file" / "j.xml", "check.junit")
    if os.geteuid() != 0:  # root writes anywhere; the permission case is a user's
        locked.chmod(0o555)
        try:
            assert "cannot be written" in output_file_error(locked / "b.json", "baseline")
        finally:
            locked.chmod(0o755)
