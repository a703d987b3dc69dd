"""Shared fixtures: the embedded micro model and micro CLIP, loaded once per session, offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Under pytest-xdist each worker gets its share of the cores, and so does every run.py it starts (they
# read OMP_NUM_THREADS): torch's threads spin while they wait, so two workers at two threads each on two
# cores would be many times slower than one thread each.
_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _XDIST_WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // _XDIST_WORKERS))

import random  # noqa: E402
import signal  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]) if _XDIST_WORKERS > 1 else min(2, os.cpu_count() or 1))
torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _same_global_state_for_every_test():
    """Every test starts from the same thread count, global random generators (torch, numpy, random) and
    signal handlers, and leaves them as it found them: what one test draws or sets cannot change another's numbers, in any order."""
    threads, states = torch.get_num_threads(), (torch.get_rng_state(), np.random.get_state(), random.getstate())
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in handlers.items():  # a test that ran the pipeline in-process may have changed them
        if signal.getsignal(sig) is not handler and handler is not None:
            signal.signal(sig, handler)
    torch.set_num_threads(threads)
    torch.set_rng_state(states[0])
    np.random.set_state(states[1])
    random.setstate(states[2])

MICRO = {"name": "micro", "embedded": True, "dtype": "float32"}


@pytest.fixture(scope="session")
def micro_pipe():
    from bench.models import load_pipeline

    return load_pipeline(MICRO, "cpu")


@pytest.fixture(scope="session")
def micro_encoder():
    from bench.clip import load_encoder

    return load_encoder("micro")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sdxl_dir(tmp_path_factory):
    """A tiny SDXL folder (StableDiffusionXLPipeline layout: two text encoders, the second with a projection,
    a UNet with SDXL's added text/time conditions and its block layout) at 64 px. The first text encoder,
    the tokenizers, the VAE and the scheduler are the micro model's; the second encoder and the UNet are
    fresh (seeded), so SDXL's mechanics run here; nothing about image quality is claimed. The micro parts come
    from a pipeline of its own: the session's `micro_pipe` may hold another test's leftovers (a token added
    by a Textual Inversion test made the saved encoder and tokenizer disagree in size)."""
    import copy

    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from bench.models import load_pipeline

    micro_pipe = load_pipeline(MICRO, "cpu")

    torch.manual_seed(0)
    te1 = micro_pipe.text_encoder.config
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=te1.vocab_size, hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=te1.max_position_embeddings, projection_dim=32, bos_token_id=te1.bos_token_id,
        eos_token_id=te1.eos_token_id, pad_token_id=te1.pad_token_id, hidden_act="gelu"))
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 128), norm_num_groups=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=te1.hidden_size + 64, attention_head_dim=(2, 4, 8), transformer_layers_per_block=(1, 1, 2),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + 32)
    pipe = StableDiffusionXLPipeline(vae=micro_pipe.vae, text_encoder=micro_pipe.text_encoder, text_encoder_2=te2,
                                     tokenizer=micro_pipe.tokenizer, tokenizer_2=copy.deepcopy(micro_pipe.tokenizer), unet=unet,
                                     scheduler=micro_pipe.scheduler)
    folder = tmp_path_factory.mktemp("sdxl") / "tiny_sdxl"
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def sdxl_pipe(sdxl_dir):
    from bench.models import load_pipeline

    return load_pipeline({"name": "tiny_sdxl", "path": str(sdxl_dir), "dtype": "float32"}, "cpu")


@pytest.fixture(scope="session")
def dit_dirs(tmp_path_factory):
    """Tiny SD 3.5, FLUX.1 and FLUX.2 klein folders (tests/tiny_dit.py), by family name: their real pipeline and model
    classes at toy sizes, saved as diffusers folders so they load as a user's model does."""
    import tiny_dit

    from bench.models import load_pipeline

    micro_pipe = load_pipeline(MICRO, "cpu")  # its own copy: the session's may hold a test's leftovers
    root = tmp_path_factory.mktemp("dit")
    return {"sd3": tiny_dit.save(tiny_dit.tiny_sd3(micro_pipe), root / "tiny_sd3"),
            "flux1": tiny_dit.save(tiny_dit.tiny_flux(micro_pipe), root / "tiny_flux1"),
            "flux2_klein": tiny_dit.save(tiny_dit.tiny_flux2_klein(), root / "tiny_flux2_klein")}
