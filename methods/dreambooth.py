"""DreamBooth: fine-tune the whole UNet or DiT transformer (optionally the CLIP text encoders) on the instance images, with
optional prior preservation on class images the base model generates (once, then cached).

Weight `w` sets every tuned tensor to `base + w * (tuned - base)`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from bench.data import ConceptData
from bench.images import generate
from bench.io import atomic_dir, manifest_problems, write_manifest
from bench.single_file import save_single_file
from methods.base import Artifact, Method
from methods.conditioning import TrainingSet, cast_parameters, encode_set, require_clip
from bench.family import clip_encoders, denoiser, denoiser_name
from methods.errors import MethodConfigError, check_positive
from methods.settings import TrainSettings

CHECKSUMS = "checksums.json"  # the cached class images' manifest (bench.io.write_manifest)
WEIGHTS = {"unet": "diffusion_pytorch_model.safetensors", "transformer": "diffusion_pytorch_model.safetensors",
           "text_encoder": "model.safetensors", "text_encoder_2": "model.safetensors"}
SINGLE_FILE = "dreambooth.safetensors"
log = logging.getLogger(__name__)


def _overlay(state: dict[str, torch.Tensor], artifact: Artifact | None, name: str) -> dict[str, torch.Tensor]:
    """`state` (one component's weights) with the artifact's tuned tensors of that component put in."""
    for key, tensor in (artifact.tensors.items() if artifact is not None else ()):
        comp, k = key.split(".", 1)
        if comp == name:
            state[k] = tensor
    return state


def _read_component(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A diffusers/transformers component folder: its weights (all shards) and its config."""
    state: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            state.update({k: f.get_tensor(k) for k in f.keys()})
    return state, json.loads((folder / "config.json").read_text())


class DreamBooth(Method):
    name = "dreambooth"
    display_order = 0
    # size_keys: none; it trains the model itself (the UNet, and the text encoder with train_text_encoder)
    weight_meaning = "every fine-tuned tensor set to base + w·(tuned − base): w = 0 is the base model, w = 1 the fine-tuned one"
    weight_decay = 1e-2

    def __init__(
        self,
        lr: float = 1e-4,
        train_text_encoder: bool = False,
        prior_preservation: bool = True,
        prior_loss_weight: float = 1.0,
        num_class_images: int = 16,
        class_image_steps: int = 20,
        class_image_guidance: float = 5.0,
    ) -> None:
        super().__init__(lr)
        check_positive("method.prior_loss_weight", prior_loss_weight)
        if not isinstance(num_class_images, int) or num_class_images <= 0:
            raise MethodConfigError(f"method.num_class_images: must be a positive integer, got {num_class_images!r}")
        self.train_text_encoder = bool(train_text_encoder)
        self.trains_text = self.train_text_encoder
        self.prior_preservation = bool(prior_preservation)
        self.prior_loss_weight = float(prior_loss_weight)
        self.num_class_images = num_class_images
        self.class_image_steps = class_image_steps
        self.class_image_guidance = class_image_guidance
        self._base: dict[str, dict[str, torch.Tensor]] = {}
        self._components_trained: list[str] = []
        self._dtypes: dict[str, torch.dtype] = {}

    def _components(self, pipe) -> dict[str, torch.nn.Module]:
        """The UNet (the DiT families' transformer), and with `train_text_encoder` every CLIP text encoder
        (SDXL and SD 3.5: both; T5 never: `bench.family.clip_encoders`)."""
        return {denoiser_name(pipe): denoiser(pipe), **(clip_encoders(pipe) if self.train_text_encoder else {})}

    # ---- prior preservation

    def class_images(self, pipe, data: ConceptData, settings: TrainSettings) -> list[Image.Image]:
        """`num_class_images` images of the class prompt from the base model, cached on disk by content
        (the model's config and weights, not its path, so a results folder can move) and checked against the
        checksums kept with them before they are reused."""
        folder = self.class_image_dir(pipe, data, settings)
        if not folder:
            return self._generate_class_images(pipe, data, None)
        # Concepts sharing a class prompt share the folder: two workers preparing two of them at once
        # take turns, and the second reuses what the first made.
        from filelock import FileLock

        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder.parent / f".{folder.name}.lock")):
            if (folder / CHECKSUMS).is_file():
                problems = manifest_problems(folder / CHECKSUMS, folder)
                if not problems:
                    return [_read_rgb(f) for f in sorted(folder.glob("*.png"))]
                log.warning("%s: %s; generating the class images again", folder, problems[0])
            return self._generate_class_images(pipe, data, folder)

    def _generate_class_images(self, pipe, data: ConceptData, folder: Path | None) -> list[Image.Image]:
        seeds = [100_000 + i for i in range(self.num_class_images)]
        images = generate(pipe, [data.class_prompt] * len(seeds), seeds, self.class_image_steps, self.class_image_guidance)
        if folder:
            with atomic_dir(folder) as tmp:
                for i, im in enumerate(images):
                    im.save(tmp / f"{i:04d}.png")
                write_manifest(tmp / CHECKSUMS, sorted(tmp.glob("*.png")), tmp)
        return images

    def class_image_dir(self, pipe, data: ConceptData, settings: TrainSettings) -> Path | None:
        if not settings.cache_dir:
            return None
        model = settings.model_key or str(pipe.config.get("_name_or_path", ""))
        key = hashlib.sha256(json.dumps([model, data.class_prompt, self.num_class_images, self.class_image_steps, self.class_image_guidance]).encode()).hexdigest()[:16]
        return settings.cache_dir / "class_images" / key

    def generate_inputs(self, pipe, data: ConceptData, settings: TrainSettings) -> list[Path]:
        if not self.prior_preservation:
            return []
        self.class_images(pipe, data, settings)
        folder = self.class_image_dir(pipe, data, settings)
        return [folder] if folder else []

    def extra_images(self, pipe, data: ConceptData, settings: TrainSettings) -> tuple[TrainingSet, float] | None:
        if not self.prior_preservation:
            return None
        images = self.class_images(pipe, data, settings)
        return encode_set(pipe, images, [data.class_prompt] * len(images)), self.prior_loss_weight

    # ---- training

    def prepare(self, pipe, data: ConceptData) -> list[torch.nn.Parameter]:
        if self.train_text_encoder:
            require_clip(pipe, "method.train_text_encoder")
        self._components_trained = list(self._components(pipe))
        # The base weights (for `finish`'s diff and restore) wait in host memory: on a GPU a second copy
        # of the UNet there would cost what the fine-tune's gradients cost.
        self._base = {n: {k: v.detach().to("cpu", copy=True) for k, v in m.state_dict().items()} for n, m in self._components(pipe).items()}
        # A half-precision model trains with fp32 master weights (the diffusers example's rule: the trained
        # UNet in fp32, autocast for the forward); `finish` returns it to its dtype.
        self._dtypes = {n: next(m.parameters()).dtype for n, m in self._components(pipe).items()}
        params = []
        for module in self._components(pipe).values():
            cast_parameters(module, torch.float32)
            module.requires_grad_(True)
            params.extend(module.parameters())
        return params

    def snapshot(self, pipe, data: ConceptData) -> Artifact:
        """Every tensor that differs from the base model, in the base model's dtype (as it is saved)."""
        tensors = {}
        with torch.no_grad():
            for name, module in self._components(pipe).items():
                tuned = module.state_dict()
                for k, base in self._base.get(name, {}).items():
                    value = tuned[k].detach().to(base.dtype)  # fp32 master weights of a half model: saved in its dtype
                    if value.is_floating_point() and not torch.equal(value.to(base.device), base):
                        tensors[f"{name}.{k}"] = value.cpu().clone()
        return Artifact(self.name, tensors, self._meta(pipe))

    def finish(self, pipe, data: ConceptData) -> Artifact:
        # The tuned model back in the base model's dtype first, as it is saved: mode=estimate's fake tensors
        # cannot be compared (snapshot raises there) and it sizes the file from the model as left here.
        for name, module in self._components(pipe).items():
            module.requires_grad_(False)
            if name in self._dtypes:
                cast_parameters(module, self._dtypes[name])
        artifact = self.snapshot(pipe, data)
        for name, module in self._components(pipe).items():
            if name in self._base:
                module.load_state_dict(self._base[name])
        self._base, self._dtypes = {}, {}
        return artifact

    def _meta(self, pipe) -> dict:
        meta = {
            "components": self._components_trained,
            "configs": {n: dict(m.config) if hasattr(m, "config") and isinstance(m.config, dict) else m.config.to_dict() for n, m in self._components(pipe).items()},
            "base_model": str(pipe.config.get("_name_or_path", "")),
        }
        return json.loads(json.dumps(meta, default=str))

    # ---- strength

    def apply(self, pipe, artifact: Artifact, weight: float) -> None:
        self._base = {}
        for name in artifact.meta["components"]:
            module = getattr(pipe, name)
            base = {k: v.detach().clone() for k, v in module.state_dict().items()}
            self._base[name] = base
            new = {}
            for key, tuned in artifact.tensors.items():
                comp, k = key.split(".", 1)
                if comp == name:
                    # lerp is exact at both ends: w=0 is the base model, w=1 the tuned one.
                    new[k] = torch.lerp(base[k].float(), tuned.to(base[k].device).float(), float(weight)).to(base[k].dtype)
            module.load_state_dict(new, strict=False)

    def remove(self, pipe) -> None:
        for name, base in self._base.items():
            getattr(pipe, name).load_state_dict(base)
        self._base = {}

    # ---- files

    def save(self, artifact: Artifact, out_dir: Path) -> Path:
        """A diffusers pipeline folder (the base model's, with the tuned components) and the same model as
        one original-layout checkpoint, `dreambooth.safetensors`: the file people share (its size is
        reported), loadable by AUTOMATIC1111, ComfyUI and `from_single_file`."""
        folder = self.save_folder(artifact, out_dir)
        if "transformer" in artifact.meta["components"]:
            # SD 3.5 / FLUX: the tuned transformer's diffusers file is what is reported (`from_pretrained`
            # reads its folder); no original-layout single file is written for these families.
            return folder / "transformer" / WEIGHTS["transformer"]
        if not (folder / "model_index.json").is_file():
            log.warning("base model %s is not a diffusers folder: wrote the tuned components only, no single file", artifact.meta.get("base_model"))
            return folder
        parts = {n: _read_component(folder / n) for n in ("unet", "vae")}
        for name in ("text_encoder", "text_encoder_2"):
            if (folder / name).is_dir():
                parts[name] = _read_component(folder / name)
        return save_single_file(parts, out_dir / SINGLE_FILE)

    def file_content(self, artifact: Artifact | None, pipe=None):
        """The single-file checkpoint of `pipe`'s components with the tuned tensors (all of `pipe`'s own
        when `artifact` is None: `mode=estimate` sizes the file a full fine-tune writes)."""
        from bench.single_file import single_file_tensors

        model = getattr(pipe, "transformer", None)
        if model is not None:  # what `save` reports for the DiT families: the transformer's own file
            return {k: v.contiguous() for k, v in _overlay(dict(model.state_dict()), artifact, "transformer").items()}, {"format": "pt"}
        parts = {}
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            module = getattr(pipe, name, None)
            if module is None:
                continue
            state = _overlay(dict(module.state_dict()), artifact, name)
            config = dict(module.config) if isinstance(module.config, dict) else module.config.to_dict()
            parts[name] = (state, config)
        return single_file_tensors(parts), None

    def save_folder(self, artifact: Artifact, out_dir: Path) -> Path:
        base = Path(artifact.meta.get("base_model", ""))
        target = out_dir / "pipeline"
        with atomic_dir(target) as tmp:
            if (base / "model_index.json").is_file():
                shutil.copytree(base, tmp, dirs_exist_ok=True)
            for name in artifact.meta["components"]:
                comp_dir = tmp / name
                comp_dir.mkdir(parents=True, exist_ok=True)
                full = self._full_state(artifact, name, comp_dir)
                for stale in [*comp_dir.glob("*.safetensors"), *comp_dir.glob("*.safetensors.index.json")]:
                    stale.unlink()  # a sharded base component (FLUX's transformer) becomes one file
                save_file({k: v.contiguous() for k, v in full.items()}, str(comp_dir / WEIGHTS[name]), metadata={"format": "pt"})
                (comp_dir / "config.json").write_text(json.dumps(artifact.meta["configs"][name], indent=2))
            (tmp / "adapterbench.json").write_text(json.dumps({"method": self.name, "components": artifact.meta["components"], "base_model": str(base)}))
        return target

    def _full_state(self, artifact: Artifact, name: str, comp_dir: Path) -> dict[str, torch.Tensor]:
        """The component's complete weights: the copied base file overlaid with the tuned tensors."""
        full: dict[str, torch.Tensor] = {}
        for base_file in sorted(comp_dir.glob("*.safetensors")):  # every shard of a sharded component
            with safe_open(str(base_file), "pt") as f:
                full.update({k: f.get_tensor(k) for k in f.keys()})
        return _overlay(full, artifact, name)

    def load(self, path: Path) -> Artifact:
        """The tuned tensors of what `save` wrote (every weight of each tuned component)."""
        path = Path(path)
        if path.is_file():  # the reported file: the SD single file beside the folder, or a DiT's transformer file inside it
            path = path.parent.parent if path.parent.name == "transformer" else path.parent / "pipeline"
        info = json.loads((path / "adapterbench.json").read_text())
        tensors, configs = {}, {}
        for name in info["components"]:
            with safe_open(str(path / name / WEIGHTS[name]), "pt") as f:
                tensors.update({f"{name}.{k}": f.get_tensor(k) for k in f.keys()})
            configs[name] = json.loads((path / name / "config.json").read_text())
        return Artifact(self.name, tensors, {"components": info["components"], "configs": configs, "base_model": info["base_model"]})


def _read_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")
