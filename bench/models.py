"""Load the base model a `model` config names: the embedded micro SD, or SD 1.5 / 2.1 / SDXL / SD 3.5 /
FLUX.1 / FLUX.2 klein from disk.

One code path for all of them: the diffusers pipeline the model folder's `model_index.json` names
(`StableDiffusionPipeline` for SD 1.x/2.x and micro, `StableDiffusionXLPipeline`, `StableDiffusion3Pipeline`,
`FluxPipeline`, `Flux2KleinPipeline`), loaded offline; `bench.family` holds what differs in training them.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from bench import zoo

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
SINGLE_FILE_SUFFIXES = {".safetensors", ".ckpt"}


class ModelConfigError(ValueError):
    """A model config that cannot be loaded; the message names the config key."""


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' is CUDA when present, else the CPU."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # The harness trains and generates on the CPU or CUDA; other torch device types (mps, xpu, meta) are
    # untested here, and a string torch cannot parse would be a traceback from deep in the first worker.
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise ModelConfigError(f"device: {name!r} is not one of auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelConfigError(f"device: {name!r} asked for, but CUDA is not available here")
    if ":" in name and int(name.split(":")[1]) >= torch.cuda.device_count():
        raise ModelConfigError(f"device: {name!r} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' is fp16 on CUDA and fp32 on the CPU (half precision is slow or unsupported there)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ModelConfigError(f"model.dtype: {name!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def model_path(cfg) -> Path:
    """The folder or file a model config points to; checked before anything heavy is loaded."""
    if cfg.get("path"):
        path = Path(os.path.expanduser(str(cfg["path"])))
    elif cfg.get("embedded"):
        path = zoo.micro_sd_dir()
    else:
        raise ModelConfigError(f"model.path: model {cfg.get('name', '?')!r} needs a local diffusers folder or .safetensors file")
    if not path.exists():
        raise ModelConfigError(f"model.path: {path} does not exist")
    if path.is_dir() and not (path / "model_index.json").is_file():
        raise ModelConfigError(f"model.path: {path} is a folder without model_index.json (not a diffusers pipeline folder)")
    if path.is_dir():
        pipeline_class(path)  # model_index.json readable, a pipeline this harness trains, its components present
    if path.is_file() and path.suffix not in SINGLE_FILE_SUFFIXES:
        raise ModelConfigError(f"model.path: {path} is neither a diffusers folder nor a {'/'.join(sorted(SINGLE_FILE_SUFFIXES))} checkpoint")
    if path.is_file() and path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                if not list(f.keys()):
                    raise ModelConfigError(f"model.path: {path} holds no tensors")
        except ModelConfigError:
            raise
        except Exception as e:  # safetensors raises its own error types for a bad header
            raise ModelConfigError(f"model.path: {path} is not a readable safetensors file ({str(e).splitlines()[0][:200]})") from None
    return path


def skip_bitsandbytes_unless_used(cfg) -> None:
    """diffusers and peft import bitsandbytes at start-up whenever it is installed (about 2 s a process, and
    a console line about its CPU kernels), though only `train.optimizer=adamw8bit` uses it. Unless `cfg`
    trains so, this process marks it absent (`sys.modules[name] = None`: an import fails and `find_spec`
    answers None, which is what both libraries ask); when it does, the mark is lifted. Called by the
    command line and in pool workers only, never by library code a test calls in-process."""
    import sys

    if str(cfg.train.get("optimizer", "adamw")) == "adamw8bit":
        if "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None:
            del sys.modules["bitsandbytes"]
    else:
        skip_bitsandbytes()


def skip_bitsandbytes() -> None:
    """Mark bitsandbytes absent in this process (see `skip_bitsandbytes_unless_used`): for the benchmark and
    build scripts, which never train with 8-bit AdamW, called before they import diffusers."""
    import sys

    if "bitsandbytes" not in sys.modules:
        sys.modules["bitsandbytes"] = None


def quiet_libraries() -> None:
    """Keep diffusers/transformers chatter (per-load progress bars, advisory warnings) out of the logs."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline", "FluxPipeline", "Flux2KleinPipeline")


def pipeline_class(folder: Path, key: str = "model.path"):
    """The diffusers pipeline class a model folder's `model_index.json` names."""
    import json

    import diffusers

    index = folder / "model_index.json"
    try:
        doc = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelConfigError(f"{key}: {index} is not readable JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ModelConfigError(f"{key}: {index} is not a diffusers model index (a JSON object with _class_name and components)")
    name = doc.get("_class_name")
    if name not in PIPELINES:
        raise ModelConfigError(f"{key}: {folder} holds a {name} model; this harness trains {', '.join(PIPELINES)} models")
    # Components are [library, class] pairs; [null, null] marks an optional one left out (safety checker).
    missing = [c for c, v in doc.items() if not c.startswith("_") and isinstance(v, list) and v and v[0] is not None and not (folder / c).is_dir()]
    if missing:
        raise ModelConfigError(f"{key}: {folder} lacks the component folder(s) {', '.join(missing)} its model_index.json lists")
    return getattr(diffusers, name)


@contextlib.contextmanager
def long_lived() -> Iterator[None]:
    """Around a process's start-up (library imports, model loading): the cyclic garbage collector paused,
    and what was made then frozen out of its later passes. Each full pass walks every live object, and
    torch, diffusers and transformers leave millions: on the micro model's training process, 9 full passes
    during start-up took 1.2 s and the pass at interpreter exit 1.5 s, about a tenth of a 300-step run.
    Objects freed by reference counting are freed as ever; only cycles that were garbage at the freeze
    stay, which start-up barely makes."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def load_pipeline(cfg, device: str = "auto"):
    """The model's pipeline on the configured device and dtype, with progress bars off."""
    quiet_libraries()
    path = model_path(cfg)
    dev = resolve_device(device)
    dtype = resolve_dtype(str(cfg.get("dtype", "auto")), dev)
    def common(cls) -> dict:
        # SD 1.x/2.x folders may name a safety checker we neither have nor want; SDXL pipelines have none.
        return dict(dtype=dtype, **({"safety_checker": None, "requires_safety_checker": False} if cls.__name__ == "StableDiffusionPipeline" else {}))

    if path.is_dir():
        cls = pipeline_class(path)
        pipe = cls.from_pretrained(path, local_files_only=True, **common(cls))
    else:
        # A single-file checkpoint carries weights only; the component configs come from a local
        # diffusers folder of the same architecture (model.config_path), since no hub is reachable.
        config = cfg.get("config_path")
        if not config:
            raise ModelConfigError(
                f"model.config_path: {path} is a single-file checkpoint; point model.config_path at a local diffusers "
                "folder of the same architecture (e.g. an SD 1.5 folder) so no hub download is needed"
            )
        if not Path(config).is_dir():
            raise ModelConfigError(f"model.config_path: {config} does not exist")
        if not (Path(config) / "model_index.json").is_file():
            raise ModelConfigError(f"model.config_path: {config} is a folder without model_index.json (not a diffusers pipeline folder)")
        cls = pipeline_class(Path(config), "model.config_path")
        pipe = cls.from_single_file(path, config=str(config), local_files_only=True, **common(cls))
    pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    if getattr(pipe, "transformer", None) is not None and cfg.get("resolution"):
        # The DiT pipelines' default image size (their `default_sample_size`, in latent pixels): FLUX's is
        # fixed at 1024 px whatever the model, so the configured resolution sets it, as SD's UNet config does.
        # Their latents go to the transformer in 2x2 patches (packed or patchified): the side must split so.
        step = 2 * pipe.vae_scale_factor
        if int(cfg["resolution"]) % step:
            raise ModelConfigError(f"model.resolution: {cfg['resolution']} px is not a multiple of {step} ({type(pipe).__name__}'s VAE factor "
                                   f"{pipe.vae_scale_factor} x its 2x2 latent patches); use {int(cfg['resolution']) // step * step} or {(int(cfg['resolution']) // step + 1) * step}")
        pipe.default_sample_size = int(cfg["resolution"]) // pipe.vae_scale_factor
    log.info("loaded %s from %s on %s (%s)", cfg.get("name", "model"), path, dev, dtype)
    return pipe
