"""Regression checks: pass on an unchanged run, fail on a degraded one, exit 2 on a bad baseline."""

import json
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from bench import records
from bench.regression import BaselineError, compare, read_baseline, write_baseline, write_junit

ROOT = Path(__file__).resolve().parents[1]
TOL = {"clip_i": {"abs": 0.02}, "drift": {"abs": 0.02}, "fd": {"rel": 0.25}, "default": {"rel": 0.1}}


def table(tmp_path, clip_i=0.7, drift=0.05, fd=1.0):
    rows = []
    for seed in (0, 1):
        ident = {"run_id": "r", "model": "micro", "method": "lora", "concept": "c", "status": "ok", "seed": seed}
        rows += [
            {**ident, "prompt_id": "instance_0", "weight": 1.0, "metric": "clip_i", "value": clip_i + 0.01 * seed, "unit": "cos"},
            {**ident, "prompt_id": "unrelated_0", "weight": 1.0, "metric": "drift", "value": drift, "unit": "1-cos"},
            {**ident, "prompt_id": "instance_0", "weight": 0.0, "metric": "clip_i", "value": 0.1, "unit": "cos"},
        ]
    rows.append({"run_id": "r", "method": "lora", "weight": 1.0, "metric": "fd_microclip", "value": fd, "unit": "fd", "status": "ok"})
    rows.append({"run_id": "r", "method": "lora", "metric": "artifact_bytes", "value": 1000.0, "unit": "B", "status": "ok"})
    records.write_stage(tmp_path, "t", rows)
    return records.read_table(tmp_path)


def test_baseline_holds_value_interval_and_direction(tmp_path):
    doc = write_baseline(table(tmp_path / "run"), tmp_path / "b.json")
    lora = read_baseline(tmp_path / "b.json")["methods"]["lora"]
    assert lora["clip_i"]["value"] == pytest.approx(0.705) and lora["clip_i"]["higher_is_better"] is True
    assert lora["clip_i"]["ci_low"] <= 0.705 <= lora["clip_i"]["ci_high"] and lora["clip_i"]["n"] == 2
    assert lora["drift"]["higher_is_better"] is False and lora["fd_microclip"]["higher_is_better"] is False
    assert lora["artifact_bytes"]["value"] == 1000.0 and doc["weight"] == 1.0


def test_unchanged_passes_degraded_fails_improved_passes(tmp_path):
    doc = write_baseline(table(tmp_path / "base"), tmp_path / "b.json")
    assert not any(c.regressed for c in compare(doc, table(tmp_path / "same"), TOL))
    worse = {c.metric: c for c in compare(doc, table(tmp_path / "worse", clip_i=0.6, drift=0.2, fd=2.0), TOL)}
    assert worse["clip_i"].regressed and worse["drift"].regressed and worse["fd_microclip"].regressed
    assert worse["clip_i"].direction == "worse" and not worse["artifact_bytes"].regressed
    better = compare(doc, table(tmp_path / "better", clip_i=0.9, drift=0.0, fd=0.5), TOL)
    assert not any(c.regressed for c in better) and {c.direction for c in better} <= {"better", "same"}
    # Within tolerance: CLIP-I 0.015 lower is allowed by abs 0.02.
    assert not any(c.regressed for c in compare(doc, table(tmp_path / "near", clip_i=0.685), TOL))


def test_a_missing_metric_counts_as_regressed(tmp_path):
    doc = write_baseline(table(tmp_path / "base"), tmp_path / "b.json")
    doc["methods"]["lora"]["cmmd"] = {"value": 1.0, "higher_is_better": False}
    assert [c.metric for c in compare(doc, table(tmp_path / "run"), TOL) if c.regressed] == ["cmmd"]


def test_junit_xml_lists_failures(tmp_path):
    doc = write_baseline(table(tmp_path / "base"), tmp_path / "b.json")
    comparisons = compare(doc, table(tmp_path / "worse", clip_i=0.5), TOL)
    write_junit(comparisons, tmp_path / "j.xml")
    suite = ET.parse(tmp_path / "j.xml").getroot()
    assert suite.get("failures") == "1" and suite.get("tests") == str(len(comparisons))
    assert suite.find("testcase[@name='clip_i']/failure") is not None


@pytest.mark.parametrize("content,match", [(None, "does not exist"), ("{not json", "not valid JSON"), ('{"format": "other"}', "not an adapterbench baseline"), ('{"format": "adapterbench-baseline/1", "methods": {"lora": {"clip_i": {"value": "high"}}}}', "numeric 'value'")])
def test_malformed_baselines_are_clear_errors(tmp_path, content, match):
    path = tmp_path / "b.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BaselineError, match=match):
        read_baseline(path)


def run_cli(*args):
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True)


def test_command_line_modes_and_exit_codes(tmp_path):
    """One real smoke run: baseline (running it first), check passes (0), a better baseline fails (1),
    a malformed baseline is a usage error (2)."""
    common = [f"results_dir={tmp_path / 'run'}", "method=[lora,textual_inversion]", "train=smoke", "sweep=smoke", "progress=false", "threads=1"]
    r = run_cli("mode=baseline", f"baseline={tmp_path / 'b.json'}", *common)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("mode=check", f"baseline={tmp_path / 'b.json'}", *common)
    assert r.returncode == 0 and "0 of" in r.stdout, r.stdout + r.stderr[-2000:]
    assert (tmp_path / "run" / "regression_junit.xml").is_file()

    doc = json.loads((tmp_path / "b.json").read_text())
    doc["methods"]["lora"]["clip_i"]["value"] += 0.2  # the baseline was much better: this run regressed
    (tmp_path / "better.json").write_text(json.dumps(doc))
    r = run_cli("mode=check", f"baseline={tmp_path / 'better.json'}", *common)
    assert r.returncode == 1 and "REGRESSED" in r.stdout

    (tmp_path / "bad.json").write_text("[]")
    r = run_cli("mode=check", f"baseline={tmp_path / 'bad.json'}", *common)
    assert r.returncode == 2 and "bad.json" in r.stderr
