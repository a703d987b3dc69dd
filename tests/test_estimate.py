"""mode=estimate: file sizes exact against safetensors itself and against real trainings' files, the SD 1.5
parameter facts of ../shared/REFERENCE.md from the architecture configs alone, and bad keys named."""

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import save_file

from bench.config import register
from bench.estimate import EstimateConfigError, arch_folder, estimate, estimate_method, safetensors_bytes, training_floor

ROOT = Path(__file__).resolve().parents[1]
register()


def config(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_safetensors_size_is_exact_for_any_dtypes_shapes_and_metadata(tmp_path):
    rng = random.Random(0)
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8, torch.bool, torch.float64, torch.int8]
    for trial in range(60):
        tensors = {f"k{rng.randint(0, 10 ** rng.randint(1, 6))}.w{i}": torch.zeros([rng.randint(0, 70) for _ in range(rng.randint(0, 3))], dtype=rng.choice(dtypes))
                   for i in range(rng.randint(1, 25))}
        metadata = rng.choice([None, {"a": "x" * rng.randint(0, 40)}, {"adapterbench": json.dumps({"name": "é\n\"q", "n": list(range(rng.randint(0, 20)))}), "b": "c"}])
        path = tmp_path / f"{trial}.safetensors"
        save_file(tensors, str(path), metadata=metadata)
        assert path.stat().st_size == safetensors_bytes(tensors, metadata), trial


def test_sd15_parameters_and_file_sizes_from_the_architecture_alone():
    """../shared/REFERENCE.md §2: DreamBooth's UNet 859,520,964; LoRA rank 4 on the UNet attention
    projections 797,184; the default AUTOMATIC1111 hypernetwork 21,939,840 (87.8 MB fp32); TI 768 values
    per vector."""
    cfg = config("model=sd15", "method=[dreambooth,lora,hypernetwork,textual_inversion]", "method.lora.rank=4", "method.lora.alpha=4")  # REFERENCE.md counts rank 4
    folder = arch_folder(cfg.model)
    got = {name: estimate_method(cfg, name, folder, steps=False) for name in cfg.method}
    assert got["dreambooth"]["trainable_params"] == 859_520_964
    assert got["lora"]["trainable_params"] == 797_184
    assert got["hypernetwork"]["trainable_params"] == 21_939_840
    assert got["textual_inversion"]["trainable_params"] == 768 * int(cfg.method.textual_inversion.num_vectors)
    # Weights: UNet + text encoder + VAE (123,060,480 and 83,653,863) in fp32, and the text encoder's 77
    # int64 position ids; DreamBooth's single file holds all three.
    assert got["dreambooth"]["model_bytes"] == 4 * (859_520_964 + 123_060_480 + 83_653_863) + 77 * 8
    assert 4 * (859_520_964 + 123_060_480 + 83_653_863) < got["dreambooth"]["file_bytes"] < 4.27e9 + 1e6
    assert 87.7e6 < got["hypernetwork"]["file_bytes"] < 87.9e6 and 3.1e6 < got["lora"]["file_bytes"] < 3.3e6


def test_micro_estimate_matches_real_trainings_parameters_and_files_exactly(tmp_path):
    """The estimate's parameter counts and file bytes against what training the micro model writes; the
    planning floor counts the same parameters and stays below the tensor peak the real training reaches."""
    from bench.cost import measure_training
    from bench.data import load_world_concept
    from bench.models import load_pipeline
    from methods import build_method
    from methods.settings import TrainSettings

    cfg = config("method=[dreambooth,lora,hypernetwork,textual_inversion]", "method.dreambooth.num_class_images=2")
    pipe = load_pipeline(cfg.model, "cpu")
    concept = load_world_concept("sks_crescent", 8, 64)
    floors = training_floor(cfg, {name: build_method(cfg, name) for name in cfg.method}, concept, torch.device("cpu"))
    for name in cfg.method:
        method = build_method(cfg, name)
        settings = TrainSettings(steps=3, batch_size=2, progress=False, cache_dir=tmp_path / "cache")
        result, cost = measure_training(method, pipe, concept, settings, tmp_path / name)
        est = estimate_method(cfg, name, arch_folder(cfg.model), steps=False)
        assert est["trainable_params"] == result.trainable_params == floors[name][0], name
        assert est["file_bytes"] == cost.artifact_bytes, name
        assert cost.model_mem_mib * 2**20 < floors[name][1] <= cost.peak_mem_mib * 2**20, name


def test_planning_floor_on_sd15_is_weights_plus_trained_parameters_gradients_and_adamw_moments():
    """SD 1.5 in fp32 (../shared/REFERENCE.md §2 counts): the model's weights, then per trained parameter
    4 bytes of gradient and 8 of AdamW moments, plus 4 of weight where the parameter is new (an adapter)."""
    from bench.data import load_world_concept
    from methods import build_method

    cfg = config("model=sd15", "method=[dreambooth,lora,hypernetwork]", "method.lora.rank=4", "method.lora.alpha=4")
    weights = 4 * (859_520_964 + 123_060_480 + 83_653_863) + 77 * 8
    floors = training_floor(cfg, {name: build_method(cfg, name) for name in cfg.method}, load_world_concept("sks_crescent", 2, 64), torch.device("cpu"))
    assert floors["dreambooth"] == (859_520_964, weights + 12 * 859_520_964)
    assert floors["lora"] == (797_184, weights + 16 * 797_184)
    assert floors["hypernetwork"] == (21_939_840, weights + 16 * 21_939_840)
    eight_bit = training_floor(config("model=sd15", "method=[lora]", "train.optimizer=adamw8bit", "method.lora.rank=4", "method.lora.alpha=4"),
                               {"lora": build_method(cfg, "lora")}, load_world_concept("sks_crescent", 2, 64), torch.device("cpu"))
    assert eight_bit["lora"] == (797_184, weights + 10 * 797_184)  # two 8-bit moments instead of two fp32 ones


@pytest.mark.parametrize(("override", "key"), [("estimate.gpu=B200X", "estimate.gpu"), ("estimate.efficiency=0", "estimate.efficiency"),
                                               ("estimate.attention=flash9", "estimate.attention"), ("estimate.precision=fp8", "estimate.precision"),
                                               ("estimate.variants=[fp16+ckpt+sgd]", "estimate.variants")])
def test_bad_estimate_settings_name_the_key(override, key):
    with pytest.raises(EstimateConfigError, match=key.replace(".", r"\.")):
        estimate(config(override))


def test_mode_estimate_counts_memory_and_flops_writes_table_and_figure_and_names_a_bad_key(tmp_path):
    import pandas as pd

    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    ok = subprocess.run([sys.executable, "run.py", "mode=estimate", "method=[lora,dreambooth]", "estimate.device=cpu", f"results_dir={tmp_path}"],
                        cwd=ROOT, capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "| lora" in ok.stdout and "| dreambooth" in ok.stdout
    for ext in ("md", "csv", "png", "svg"):
        assert (tmp_path / "estimate" / f"estimate_micro.{ext}").stat().st_size > 0
    every = pd.read_csv(tmp_path / "estimate" / "estimate_micro.csv")
    assert set(every.variant) == {"fp32", "fp16", "fp16+ckpt", "fp16+ckpt+adamw8bit"}  # the default ladder, a row per method each
    by = every.set_index(["method", "variant"])["train peak memory (MiB)"]
    for name in ("lora", "dreambooth"):  # each rung needs less than the one before (8-bit moments: only DreamBooth has tensors that large)
        assert by[name, "fp32"] > by[name, "fp16"] > by[name, "fp16+ckpt"] >= by[name, "fp16+ckpt+adamw8bit"], name
    assert by["dreambooth", "fp16+ckpt"] - by["dreambooth", "fp16+ckpt+adamw8bit"] > 4_222_948 * 5 / 2**20  # 8 of AdamW's bytes per weight become ~2
    files = every.set_index(["method", "variant"])["file (bytes)"]
    assert abs(files["dreambooth", "fp16"] / files["dreambooth", "fp32"] - 0.5) < 0.01  # DreamBooth's file in the model's dtype
    table = every[every.variant == "fp32"].set_index("method")
    # DreamBooth keeps gradients and two AdamW moments for every UNet weight; LoRA for a few thousand.
    unet_mib = 4_222_948 * 4 / 2**20
    assert table.loc["dreambooth", "train peak memory (MiB)"] > table.loc["lora", "train peak memory (MiB)"] + 3 * unet_mib
    assert table.loc["dreambooth", "train step (GFLOP)"] > 2 * table.loc["lora", "train step (GFLOP)"]  # twice the batch (prior), full backward
    assert table.loc["lora", "gen step (GFLOP)"] > table.loc["dreambooth", "gen step (GFLOP)"]  # the adapter's own matmuls
    bad = subprocess.run([sys.executable, "run.py", "mode=estimate", "estimate.gpu=Z1", f"results_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "estimate.gpu" in bad.stderr


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes (the bnb extra) is not installed")
def test_mixed_precision_checkpointing_and_8bit_estimates_match_real_cpu_trainings(tmp_path):
    """The autocast stand-in (with the CPU's autocast lists) and the 8-bit AdamW state stand-in against
    torch's own CPU autocast and bitsandbytes on real micro trainings: the same tensor peak."""
    from bench.cost import measure_training
    from bench.data import load_world_concept
    from bench.estimate import Variant, _AdamW8bitState, bnb_state_bytes
    from bench.models import load_pipeline
    from methods import build_method
    from methods.settings import TrainSettings
    from methods.training import make_optimizer

    cfg = config("method=[dreambooth,lora]", "method.dreambooth.prior_preservation=false", "train.steps=3", f"results_dir={tmp_path}")
    concept = load_world_concept("sks_crescent", 8, 64)
    pipe = load_pipeline({"name": "micro", "embedded": True, "dtype": "bfloat16"}, "cpu")
    variant = Variant.parse("bf16+adamw8bit")
    est = estimate_method(cfg, "dreambooth", arch_folder(cfg.model), ("meta", "cpu"), variant=variant, policy="cpu")
    settings = TrainSettings(steps=3, batch_size=4, progress=False, precision="bf16", optimizer="adamw8bit")
    _, cost = measure_training(build_method(cfg, "dreambooth"), pipe, concept, settings, tmp_path / "db")
    assert abs(est["peak_bytes"] / 2**20 / cost.peak_mem_mib - 1) < 0.02, (est["peak_bytes"] / 2**20, cost.peak_mem_mib)
    # Gradient checkpointing: the recomputation in backward, on the fake tensors as on the real ones.
    ckpt = Variant.parse("fp32+ckpt")
    est = estimate_method(cfg, "lora", arch_folder(cfg.model), ("meta", "cpu"), variant=ckpt, policy="cpu")
    full = load_pipeline({"name": "micro", "embedded": True, "dtype": "float32"}, "cpu")
    _, cost = measure_training(build_method(cfg, "lora"), full, concept, TrainSettings(steps=3, batch_size=4, progress=False, gradient_checkpointing=True), tmp_path / "lora")
    assert abs(est["peak_bytes"] / 2**20 / cost.peak_mem_mib - 1) < 0.02, (est["peak_bytes"] / 2**20, cost.peak_mem_mib)
    params = [torch.nn.Parameter(torch.randn(n)) for n in (10, 4095, 4096, 5000, 70_000)]
    real, stand_in = make_optimizer(params, 1e-3, 0.0, "adamw8bit"), _AdamW8bitState(params)
    for p in params:
        p.grad = torch.ones_like(p)
    real.step()
    stand_in.step()
    assert bnb_state_bytes(stand_in) == bnb_state_bytes(real)


def test_sdxl_parameters_and_file_sizes_from_the_architecture_alone():
    """SDXL's UNet 2,567,463,684 parameters; TI a vector in each text encoder (768 + 1,280 values); the
    AUTOMATIC1111 hypernetwork (1-2-1, a k and a v module per attention input size: the UNet's 640 and
    1,280 channels and the 2,048-wide text context) and LoRA rank 4 on the attention projections, both
    counted here from the UNet's own layers, independently of the methods' code."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import Attention

    from bench.estimate import _config

    cfg = config("model=sdxl", "method=[dreambooth,lora,hypernetwork,textual_inversion]", "method.lora.rank=4", "method.lora.alpha=4")
    folder = arch_folder(cfg.model)
    got = {name: estimate_method(cfg, name, folder, steps=False) for name in cfg.method}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(_config(folder, "unet"))
    attention = [m for m in unet.modules() if isinstance(m, Attention)]
    sizes = {m.to_k.in_features for m in attention}
    assert sizes == {640, 1280, 2048}
    linears = [lin for m in attention for lin in (m.to_q, m.to_k, m.to_v, m.to_out[0])]
    assert got["dreambooth"]["trainable_params"] == sum(p.numel() for p in unet.parameters()) == 2_567_463_684
    assert got["lora"]["trainable_params"] == sum(4 * (lin.in_features + lin.out_features) for lin in linears)
    assert got["hypernetwork"]["trainable_params"] == sum(2 * (d * 2 * d + 2 * d + 2 * d * d + d) for d in sizes) == 49_962_240
    assert got["textual_inversion"]["trainable_params"] == (768 + 1280) * int(cfg.method.textual_inversion.num_vectors)
    # Weights: UNet, both text encoders (123,060,480 and 694,659,840), VAE 83,653,863, fp32; the single file holds them all.
    weights = 2_567_463_684 + 123_060_480 + 694_659_840 + 83_653_863
    assert 4 * weights < got["dreambooth"]["model_bytes"] < 4 * weights + 4096
    assert 4 * weights < got["dreambooth"]["file_bytes"] < 4 * weights + 2e6


def assert_estimate_matches_real_trainings(cfg, tmp_path) -> None:
    """On a tiny folder, where training really runs: each configured method's parameters and file bytes
    exactly, and the fake-tensor training step's memory peak within 2 % of the real CPU training's tensor peak."""
    from bench.cost import measure_training
    from bench.data import load_world_concept
    from bench.estimate import Variant
    from bench.models import load_pipeline
    from methods import build_method
    from methods.settings import TrainSettings

    pipe = load_pipeline(cfg.model, "cpu")
    concept = load_world_concept("sks_crescent", 8, 64)
    for name in cfg.method:
        method = build_method(cfg, name)
        settings = TrainSettings(steps=3, batch_size=2, progress=False, cache_dir=tmp_path / "cache")
        method.generate_inputs(pipe, concept, settings)
        _, cost = measure_training(method, pipe, concept, settings, tmp_path / name)
        est = estimate_method(cfg, name, arch_folder(cfg.model), ("meta", "cpu"), variant=Variant.parse("fp32"), policy="cpu")
        assert est["trainable_params"] == cost.trainable_params, name
        assert est["file_bytes"] == cost.artifact_bytes, name
        assert abs(est["peak_bytes"] / 2**20 / cost.peak_mem_mib - 1) < 0.02, (name, est["peak_bytes"] / 2**20, cost.peak_mem_mib)


def test_tiny_sdxl_estimate_matches_real_trainings(sdxl_dir, tmp_path):
    assert_estimate_matches_real_trainings(config(
        f"model.path={sdxl_dir}", "model.name=tiny_sdxl", "model.embedded=false", "method=[dreambooth,lora,hypernetwork,textual_inversion]",
        "method.dreambooth.num_class_images=2", "+method.dreambooth.class_image_steps=2", "train.batch_size=2", f"results_dir={tmp_path}"), tmp_path)


BOTH_STREAMS = "[to_q,to_k,to_v,to_out.0,add_q_proj,add_k_proj,add_v_proj,to_add_out]"


@pytest.mark.parametrize("model, transformer_params", [("flux1", 11_901_408_320), ("sd35", 8_056_627_520), ("sd35_medium", 2_243_171_520),
                                                       ("flux2_klein", 3_875_544_576)])
def test_dit_parameters_and_file_sizes_from_the_architecture_alone(model, transformer_params):
    """FLUX.1-dev's transformer 11,901,408,320 parameters (and SD 3.5 Large's and Medium's, which their
    published "8.1 B" and "2.5 B" round, and FLUX.2 klein's "4B"); LoRA rank 4 on both streams' attention projections, counted here
    from the transformer's own layers, independently of the methods' code; the DreamBooth file is the
    transformer's weights in the model's dtype."""
    from bench.estimate import _config, _fake_dit_pipeline, _pipeline_kind

    cfg = config(f"model={model}", "method=[dreambooth,lora]", "method.lora.rank=4", "method.lora.alpha=4", f"method.lora.target_modules={BOTH_STREAMS}")
    folder = arch_folder(cfg.model)
    got = {name: estimate_method(cfg, name, folder, steps=False) for name in cfg.method}
    assert got["dreambooth"]["trainable_params"] == transformer_params
    with torch.device("meta"):
        pipe = _fake_dit_pipeline(folder, _pipeline_kind(folder), torch.float32, 1024)
    names = BOTH_STREAMS.strip("[]").split(",")
    linears = [m for n, m in pipe.transformer.named_modules() if isinstance(m, torch.nn.Linear) and any(n.endswith("." + t) for t in names)]
    assert got["lora"]["trainable_params"] == sum(4 * (lin.in_features + lin.out_features) for lin in linears)
    # The file holds the state dict: the parameters and the persistent buffers (SD 3.5's positional table).
    stored = sum(t.numel() for t in pipe.transformer.state_dict().values())
    assert stored - transformer_params == (pipe.transformer.pos_embed.pos_embed.numel() if model.startswith("sd35") else 0)
    assert 4 * stored < got["dreambooth"]["file_bytes"] < 4 * stored + 2e6
    # The text encoders the pipeline holds: T5-XXL's encoder (4,762,310,656) and CLIP-L (and SD 3.5's CLIP-G).
    if model == "flux2_klein":  # Qwen3-4B reads the prompt
        assert sum(p.numel() for p in pipe.text_encoder.parameters()) == 4_022_468_096
    else:
        t5 = pipe.text_encoder_2 if model == "flux1" else pipe.text_encoder_3
        assert sum(p.numel() for p in t5.parameters()) == 4_762_310_656
    assert _config(folder, "transformer")["_class_name"] in ("FluxTransformer2DModel", "SD3Transformer2DModel", "Flux2Transformer2DModel")


@pytest.mark.parametrize("fam", ["sd3", "flux1", "flux2_klein"])
def test_tiny_dit_estimate_matches_real_trainings(fam, dit_dirs, tmp_path):
    """The same on tiny SD 3.5, FLUX.1 and FLUX.2 klein folders, every method each trains (klein: no TI)."""
    assert_estimate_matches_real_trainings(config(
        f"model.path={dit_dirs[fam]}", f"model.name=tiny_{fam}", "model.embedded=false", "model.resolution=64",
        f"method=[dreambooth,{'' if fam == 'flux2_klein' else 'textual_inversion,'}lora,hypernetwork,lokr]",
        f"method.lora.target_modules={BOTH_STREAMS}", f"method.lokr.adapter.target_modules={BOTH_STREAMS}",
        "method.dreambooth.num_class_images=2", "+method.dreambooth.class_image_steps=2", "train.batch_size=2", f"results_dir={tmp_path}"), tmp_path)


def test_an_estimate_of_a_model_from_disk_trains_as_that_model_is_trained_unless_told_otherwise():
    """Batch 1 at the model's resolution for the steps of the shipped experiment that trains it (the micro
    run's batch 4 and 300 steps are not SD 1.5's); the command line's train.batch_size / train.steps or an
    experiment win; the micro model's set-up is train.* itself."""
    from bench.estimate import with_model_training_defaults

    for model, steps in (("sd15", 800), ("sdxl", 500), ("flux1", 500), ("sd35", 500)):
        cfg = config(f"model={model}")
        got, note = with_model_training_defaults(cfg, set())
        assert (got.train.batch_size, got.train.steps) == (1, steps) and f"{steps} steps" in note and "batch 1" in note, model
        assert cfg.train.batch_size == 4  # the config given is left alone
        told, _ = with_model_training_defaults(config(f"model={model}", "train.batch_size=2", "train.steps=50"), {"train.batch_size", "train.steps"})
        assert (told.train.batch_size, told.train.steps) == (2, 50)
    unshipped, note = with_model_training_defaults(config("model=sd21"), set())  # no experiment trains SD 2.1: its steps stay
    assert (unshipped.train.batch_size, unshipped.train.steps) == (1, config().train.steps) and "steps" not in note
    for cfg, told in ((config(), set()), (config("+experiment=sdxl_four_methods", "model.path=/m", "data.path=/d"), {"+experiment"})):
        assert with_model_training_defaults(cfg, told) == (cfg, "")
