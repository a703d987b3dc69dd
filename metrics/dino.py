"""DINO image similarity (DINO-I), DINO drift and the Fréchet distance in DINO space (`fd_<dino space>`).

Subject fidelity as DreamBench, CustomConcept101 and peft's image-generation benchmark report it, and FD
in DINOv2 space, which Stein et al. (NeurIPS 2023) recommend over Inception. Features are the CLS token
after the final layer norm (`Dinov2Model`'s `pooler_output`), L2-normalised, of each image prepared by the
model folder's own image processor (facebook/dinov2-*: shorter side to 256 bicubic, centre crop 224,
ImageNet mean and std; micro DINO: 64 px, mean and std 0.5).

- `metrics.dino=micro`: micro DINO, trained here self-supervised on world renders
  (`python -m bench.build.dino`, bench/zoo/micro_dino);
- `metrics.dino=local-dir:/models/dinov2-base`: a transformers `Dinov2Model` folder (config.json, weights,
  preprocessor_config.json), loaded offline;
- `metrics.dino=null`: none.

The Fréchet distance in DINO space is `metrics.fd`'s, fed DINO features (`fd_microdino`, `fd_dinov2-base`).

DINO-I follows the DreamBooth paper's convention, as CLIP-I does here: per generated image, the mean over
the instance images of the cosine to each one (not the cosine to their mean feature, a second convention
in the literature that gives other numbers).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image

from bench.clip import CachedImageEncoder
from metrics.base import MetricInfo, SweepScoring


class DinoConfigError(ValueError):
    """metrics.dino names no loadable DINO model; the message names the key and the file."""


class DinoEncoder(CachedImageEncoder):
    """Unit-norm CLS features of one `Dinov2Model` and its image processor, cached by image content."""

    def __init__(self, model, processor, name: str, batch: int = 64) -> None:
        super().__init__(name, batch)
        self.model, self.processor = model.eval(), processor

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def _encode(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=images, return_tensors="pt").pixel_values
        return self.model(pixel_values=pixels.to(self.model.dtype)).pooler_output


def dino_folder(spec: str) -> Path:
    """The folder `metrics.dino` names ('micro' or 'local-dir:/path'), checked to hold a Dinov2Model."""
    from bench import zoo

    if spec == "micro":
        return zoo.micro_dino_dir()
    if not spec.startswith("local-dir:"):
        raise DinoConfigError(f"metrics.dino: {spec!r} is neither 'micro' nor 'local-dir:/path/to/dinov2' (no model hub is reachable, so the weights must be local)")
    folder = Path(spec.removeprefix("local-dir:")).expanduser()
    config = folder / "config.json"
    if not config.is_file():
        raise DinoConfigError(f"metrics.dino: {folder} holds no config.json (a transformers Dinov2Model folder: config.json, weights, preprocessor_config.json)")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (ValueError, AttributeError) as e:
        raise DinoConfigError(f"metrics.dino: {config} is not a readable JSON object ({e})") from None
    if model_type != "dinov2":
        raise DinoConfigError(f"metrics.dino: {config} is a {model_type!r} model, not dinov2")
    if not (folder / "preprocessor_config.json").is_file():
        raise DinoConfigError(f"metrics.dino: {folder} holds no preprocessor_config.json (the model card's preprocessing)")
    if not any((folder / w).is_file() for w in ("model.safetensors", "pytorch_model.bin")):
        raise DinoConfigError(f"metrics.dino: {folder} holds no weights (model.safetensors)")
    return folder


@lru_cache(maxsize=4)
def load_dino(spec: str = "micro") -> DinoEncoder:
    from transformers import AutoImageProcessor, Dinov2Model

    folder = dino_folder(spec)
    # use_safetensors when the folder has them: a pickled .bin is only read by transformers' own safe loader
    model = Dinov2Model.from_pretrained(folder, use_safetensors=(folder / "model.safetensors").is_file())
    processor = AutoImageProcessor.from_pretrained(folder)
    # The space's name goes into fd_<space>: it says "dino" whatever the folder is called.
    name = "microdino" if spec == "micro" else (folder.name if "dino" in folder.name.lower() else f"dino-{folder.name}")
    return DinoEncoder(model, processor, name)


def score_dino_i(s: SweepScoring) -> list[dict]:
    """Each subject image's mean cosine to the instance images, in DINO space."""
    if s.dino is None:
        return []
    return [s.row(k, DINO_I, (s.dino_features[k] @ s.dino_instance.T).mean().item(), s.dino.name) for k in s.subject()]


def score_dino_drift(s: SweepScoring) -> list[dict]:
    """Each unrelated prompt's image against the base model's of the same prompt and seed: 1 - cos."""
    if s.dino is None:
        return []
    return [s.row(k, DINO_DRIFT, 1 - float(s.dino_features[k] @ s.dino_base[(s.prompts[k[0]].text, k[1])]), s.dino.name) for k in s.unrelated()]


DINO_I = MetricInfo("dino_i", "cos", True, "mean cosine similarity to the instance images in DINO features (CLS token)", title="DINO-I",
                    measured_by="dino", proxy=True, checked=False, score=score_dino_i)
DINO_DRIFT = MetricInfo("dino_drift", "1-cos", False, "1 - cos(DINO features) between adapted and base images of unrelated prompts", title="DINO drift",
                        measured_by="dino", checked=False, score=score_dino_drift)
