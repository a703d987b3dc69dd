"""The embedded micro models, trained by `python -m bench.build.pretrain` and committed as safetensors."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent
ORACLE_DIR = ZOO_DIR / "oracle"  # the concept-presence oracle (bench/oracle.py trains and loads it)


def oracle_dir() -> Path:
    """Folder of the micro world's concept-presence oracle (it may be absent: scoring then has no oracle)."""
    return ORACLE_DIR


def micro_sd_dir() -> Path:
    """Folder of the micro Stable Diffusion model (loads with `StableDiffusionPipeline.from_pretrained`)."""
    return _existing(ZOO_DIR / "micro_sd")


def micro_clip_dir() -> Path:
    """Folder of the micro CLIP model (open_clip `local-dir:` layout, with its tokenizer)."""
    return _existing(ZOO_DIR / "micro_clip")


@lru_cache(maxsize=1)
def micro_clip():
    """(model, preprocess, tokenizer) of micro CLIP, in eval mode on the CPU."""
    import open_clip

    spec = f"local-dir:{micro_clip_dir()}"
    model, _, preprocess = open_clip.create_model_and_transforms(spec)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(spec)


def micro_dino_dir() -> Path:
    """Folder of micro DINO, the self-supervised image encoder (a transformers `Dinov2Model` folder;
    `python -m bench.build.dino` trains it)."""
    path = ZOO_DIR / "micro_dino"
    if not path.is_dir():
        raise FileNotFoundError(f"embedded model folder {path} is missing; regenerate it with `python -m bench.build.dino`")
    return path


def _existing(path: Path) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"embedded model folder {path} is missing; regenerate it with `python -m bench.build.pretrain`")
    return path
