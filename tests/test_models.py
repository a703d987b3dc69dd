import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from bench import zoo
from bench.images import generate
from bench.models import ModelConfigError, load_pipeline, model_path


def test_micro_sd_loads_offline_with_stock_diffusers(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = StableDiffusionPipeline.from_pretrained(zoo.micro_sd_dir(), local_files_only=True)
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64


def test_committed_weights_fit_the_size_budget():
    total = sum(p.stat().st_size for p in zoo.micro_sd_dir().rglob("*") if p.is_file())
    assert total <= 40 * 2**20


def test_generates_deterministic_images_of_the_model_resolution(micro_pipe):
    a = generate(micro_pipe, ["a red star on a white background"] * 2, [0, 1], steps=4)
    b = generate(micro_pipe, ["a red star on a white background"], [0], steps=4)
    again = generate(micro_pipe, ["a red star on a white background"], [0], steps=4)
    assert a[0].size == (64, 64)
    assert np.array_equal(np.asarray(b[0]), np.asarray(again[0]))  # same call, same image, bit for bit
    # Same seed in another batch: the same image up to one pixel level, since CPU matrix kernels round
    # differently at different batch sizes (the sweep records this as base_pixel_diff).
    diff = np.abs(np.asarray(a[0], dtype=np.int16) - np.asarray(b[0], dtype=np.int16))
    assert diff.max() <= 1, diff.max()
    assert not np.array_equal(np.asarray(a[0]), np.asarray(a[1]))


def test_missing_or_wrong_model_paths_fail_early_naming_the_key(tmp_path):
    with pytest.raises(ModelConfigError, match=r"model.path: .*nowhere does not exist"):
        model_path({"name": "sd15", "path": str(tmp_path / "nowhere")})
    with pytest.raises(ModelConfigError, match="without model_index.json"):
        model_path({"name": "sd15", "path": str(tmp_path)})
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelConfigError, match="neither a diffusers folder"):
        model_path({"name": "sd15", "path": str(tmp_path / "weights.bin")})
    (tmp_path / "broken.safetensors").write_bytes(b"x")
    with pytest.raises(ModelConfigError, match="model.path: .*broken.safetensors is not a readable safetensors file"):
        model_path({"name": "sd15", "path": str(tmp_path / "broken.safetensors")})
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "sd15.safetensors"))
    with pytest.raises(ModelConfigError, match="model.config_path"):
        load_pipeline({"name": "sd15", "path": str(tmp_path / "sd15.safetensors")}, "cpu")
    with pytest.raises(ModelConfigError, match="model.path: model 'sd21' needs"):
        model_path({"name": "sd21"})
    with pytest.raises(ModelConfigError, match="model.dtype"):
        load_pipeline({"name": "micro", "embedded": True, "dtype": "float13"}, "cpu")


@pytest.mark.parametrize(("index", "message"), [("{broken", "is not readable JSON"), ("[1, 2]", "is not a diffusers model index"),
                                                ('{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"], "safety_checker": [null, null]}',
                                                 "lacks the component folder.s. unet")])
def test_a_model_folder_that_cannot_load_is_named_before_loading(tmp_path, index, message):
    """model_index.json broken, a JSON list, or the only file there: one line naming model.path (each was a
    traceback from diffusers in the first worker)."""
    (tmp_path / "model_index.json").write_text(index)
    with pytest.raises(ModelConfigError, match=f"model.path: .*{message}"):
        model_path({"name": "sd15", "path": str(tmp_path)})


def test_long_lived_pauses_the_collector_and_freezes_what_start_up_made():
    import gc

    from bench.models import long_lived

    before = gc.get_freeze_count()
    try:
        with long_lived():
            assert not gc.isenabled()  # no full passes while libraries import
            made = [[] for _ in range(1000)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= before + len(made)  # out of every later pass
        with pytest.raises(RuntimeError):
            with long_lived():
                raise RuntimeError("a failed load")
        assert gc.isenabled()  # a failed load leaves the collector on
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("name", ["tpu", "mps", "meta", "xpu", "cuda:x", "CPU", ""])
def test_a_device_the_harness_does_not_run_on_is_one_line_naming_the_key(name):
    from bench.models import resolve_device

    with pytest.raises(ModelConfigError, match=r"^device: .* is not one of auto, cpu, cuda, cuda:N"):
        resolve_device(name)
    assert resolve_device("cpu").type == "cpu" and resolve_device("auto").type in ("cpu", "cuda")


def test_bitsandbytes_is_kept_out_of_a_process_that_does_not_train_8_bit():
    """diffusers and peft import bitsandbytes whenever it is installed; the command line marks it absent
    unless train.optimizer=adamw8bit, and lifts the mark for a later job that needs it. In a fresh
    interpreter: the test process itself must keep bitsandbytes as installed."""
    import subprocess
    import sys
    from pathlib import Path

    code = """
import importlib.util, sys
from omegaconf import OmegaConf
from bench.models import skip_bitsandbytes_unless_used
installed = importlib.util.find_spec("bitsandbytes") is not None
skip_bitsandbytes_unless_used(OmegaConf.create({"train": {"optimizer": "adamw"}}))
import peft.tuners.lora
from diffusers import StableDiffusionPipeline
from peft.import_utils import is_bnb_available
assert sys.modules["bitsandbytes"] is None and not is_bnb_available(), "bitsandbytes was imported"
skip_bitsandbytes_unless_used(OmegaConf.create({"train": {"optimizer": "adamw8bit"}}))
if installed:
    import bitsandbytes
    assert sys.modules["bitsandbytes"] is not None and hasattr(bitsandbytes.optim, "AdamW8bit")
else:
    assert "bitsandbytes" not in sys.modules
print("ok")
"""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
