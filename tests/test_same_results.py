"""benchmarks/same_results.py, the proof a restructuring keeps: equal results compare equal whatever
their run ids, an instrument's reading may differ, and a changed number or image byte is named."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import same_results  # noqa: E402


def results_dir(root: Path, run_id: str, clip_i: float = 0.5, train_time: float = 10.0, pixel: int = 0) -> Path:
    ident = {"run_id": run_id, "model": "micro", "method": "lora", "config": "c" + run_id, "concept": "sks_heart", "kind": "object", "train_seed": 0, "sweep": "s1", "status": "ok"}
    rows = [{**ident, "prompt_id": "instance_0", "seed": 0, "weight": 1.0, "step": np.nan, "metric": "clip_i", "value": clip_i, "unit": "cos", "scorer": "micro_clip"},
            {**ident, "prompt_id": None, "seed": np.nan, "weight": np.nan, "step": np.nan, "metric": "train_time", "value": train_time, "unit": "s", "scorer": "wall_clock"}]
    root.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(root / "results.parquet")
    folder = root / "images" / f"{run_id}-s1"
    folder.mkdir(parents=True)
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[0, 0, 0] = pixel
    Image.fromarray(pixels).save(folder / "instance_0_seed0_w1.png")
    return root


def test_equal_results_compare_equal_across_run_ids_and_instrument_readings(tmp_path):
    a = results_dir(tmp_path / "a", "run1")
    b = results_dir(tmp_path / "b", "run2", train_time=99.0)
    assert same_results.differences(a, b) == []
    assert same_results.main([str(a), str(b)]) == 0


def test_a_changed_number_or_image_is_named(tmp_path):
    a = results_dir(tmp_path / "a", "run1")
    number = results_dir(tmp_path / "b", "run1", clip_i=0.51)
    image = results_dir(tmp_path / "c", "run1", pixel=1)
    found = same_results.differences(a, number)
    assert len(found) == 1 and "clip_i" in found[0] and "0.51" in found[0]
    found = same_results.differences(a, image)
    assert found == ["image differs: lora/sks_heart/0/s1/instance_0_seed0_w1.png"]
    assert same_results.main([str(a), str(image)]) == 1
