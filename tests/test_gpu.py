"""The GPU path, run where a GPU exists (marked `gpu`: conftest skips these without CUDA). A short
comparison on CUDA records the allocator's peak for every run, and `mode=estimate`'s memory for the
model's device predicts that peak within 15 % for each method, in the variants the estimate offers."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from bench.config import register

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["dreambooth", "textual_inversion", "lora", "hypernetwork"]
TOLERANCE = 0.15
register()


def config(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=["train=smoke", "sweep=smoke", "progress=false", "device=cuda", "model.dtype=float32",
                                            f"results_dir={tmp_path}", f"method=[{','.join(METHODS)}]", *overrides])


@pytest.mark.gpu
def test_a_short_comparison_on_cuda_records_the_allocators_peak(tmp_path):
    from bench import records
    from bench.runner import run

    run(config(tmp_path, "data.concepts=[sks_crescent]", "seeds=[0]", "method.dreambooth.num_class_images=2"))
    table = records.read_table(tmp_path)
    peaks = table[table.metric == "peak_mem"]
    assert sorted(peaks.method.unique()) == sorted(METHODS)
    assert (peaks.scorer == "cuda_max_allocated").all() and (peaks.value > 0).all()
    assert (table[table.metric == "train_failed"].empty)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["fp32", "fp16", "fp16+ckpt"])
def test_the_estimate_predicts_the_cuda_peak_within_15_percent(tmp_path, variant):
    import torch

    from bench.cost import measure_training
    from bench.data import load_world_concept
    from bench.estimate import Variant, arch_folder, estimate_method
    from bench.models import load_pipeline
    from methods import build_method
    from methods.settings import TrainSettings

    v = Variant.parse(variant)
    dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[v.precision]
    cfg = config(tmp_path, f"model.dtype={dtype}", "train.steps=3", "train.batch_size=4", "method.dreambooth.num_class_images=4")
    pipe = load_pipeline(cfg.model, "cuda")
    concept = load_world_concept("sks_crescent", int(cfg.data.n_images), int(cfg.model.resolution))
    for name in METHODS:
        method = build_method(cfg, name)
        settings = TrainSettings(**{**TrainSettings.from_config(cfg, 0).__dict__, "precision": v.precision,
                                    "gradient_checkpointing": v.gradient_checkpointing, "optimizer": v.optimizer})
        method.generate_inputs(pipe, concept, settings)
        _, cost = measure_training(method, pipe, concept, settings, tmp_path / name / variant)
        torch.cuda.empty_cache()
        assert cost.mem_kind == "cuda_max_allocated"
        est = estimate_method(cfg, name, arch_folder(cfg.model), ("meta",), variant=v)["peak_bytes"] / 2**20
        assert abs(est / cost.peak_mem_mib - 1) <= TOLERANCE, (name, variant, est, cost.peak_mem_mib)
