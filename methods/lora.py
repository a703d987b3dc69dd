"""LoRA through peft: low-rank `B @ A` beside frozen attention projections, scaled by `weight`."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from bench.data import ConceptData
from bench.io import atomic_path
from methods.base import Artifact, Method
from methods.conditioning import per_sample_scale, require_clip, text_encoders
from methods.errors import MethodConfigError, check_positive
from bench.family import clip_encoders, denoiser, denoiser_label, denoiser_name
from methods.files import load_tensors, save_tensors

ADAPTER = "adapterbench"
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FILE = "lora_kohya.safetensors"
PREFIXES = {"unet": "lora_unet", "text_encoder": "lora_te"}
SDXL_PREFIXES = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}  # kohya's names for SDXL's two encoders


class LoRA(Method):
    name = "lora"
    display_order = 2
    a1111_tags = ("lora", "lyco")  # the LyCORIS extension's <lyco:...> named the same files
    size_keys = ("rank", "target_modules", "text_encoder")
    weight_meaning = "the low-rank update added at scale w (peft adapter weight): W x + w·(alpha/r)·B A x"
    batched_weights = True

    def __init__(
        self,
        lr: float = 1e-3,
        rank: int = 4,
        alpha: float | None = None,
        target_modules: list[str] | tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0"),
        text_encoder: bool = False,
        text_target_modules: list[str] | tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj"),
    ) -> None:
        super().__init__(lr)
        if not isinstance(rank, int) or rank <= 0:
            raise MethodConfigError(f"method.rank: must be a positive integer, got {rank!r}")
        self.rank = rank
        self.alpha = float(alpha if alpha is not None else rank)
        check_positive("method.alpha", self.alpha)
        if not target_modules:
            raise MethodConfigError("method.target_modules: empty; name at least one module, e.g. to_q")
        self.target_modules = list(target_modules)
        self.text_encoder = bool(text_encoder)
        self.text_target_modules = list(text_target_modules)
        self.trains_text = self.text_encoder

    def _config(self, targets: list[str], alpha: float):
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=alpha, target_modules=targets, init_lora_weights="gaussian")

    def check_rank(self, module: torch.nn.Module, targets: list[str], where: str) -> None:
        """A rank above a layer's smaller side adds parameters, memory and file size but no expressiveness
        (the update is already full rank): refused before the adapter is built (rank=100000 on the micro
        model would have been 1.2e9 parameters, 21 GB of RAM and two 4.7 GB files)."""
        sides = [min(m.in_features, m.out_features) for n, m in module.named_modules()
                 if isinstance(m, torch.nn.Linear) and any(n == t or n.endswith(f".{t}") for t in targets)]
        if sides and self.rank > max(sides):
            raise MethodConfigError(f"method.rank: {self.rank} is above the smaller side of every targeted layer of the {where} "
                                    f"(at most {max(sides)}), where an update is already full rank; choose a rank up to {max(sides)}")

    def prepare(self, pipe, data: ConceptData) -> list[torch.nn.Parameter]:
        if self.text_encoder:
            require_clip(pipe, "method.text_encoder")
        model, where = denoiser(pipe), denoiser_name(pipe)
        self.check_rank(model, self.target_modules, denoiser_label(pipe))
        for name, module in self._components(pipe).items():
            if name != where:
                self.check_rank(module, self.text_target_modules, name)
        model.add_adapter(self._config(self.target_modules, self.alpha), adapter_name=ADAPTER)
        for name, module in self._components(pipe).items():
            if name != where:
                module.add_adapter(self._config(self.text_target_modules, self.alpha), adapter_name=ADAPTER)
        params = []
        for module in self._components(pipe).values():
            for pname, p in module.named_parameters():
                if "lora_" in pname:
                    p.data = p.data.float()  # adapters train in fp32 whatever the base dtype
                    p.requires_grad_(True)
                    params.append(p)
        if not params:
            raise MethodConfigError(f"method.target_modules: {self.target_modules} matched no module of the {denoiser_label(pipe)}")
        return params

    def _components(self, pipe) -> dict[str, torch.nn.Module]:
        """The UNet (or the DiT families' transformer), and with `text_encoder` every CLIP text encoder
        (SDXL and SD 3.5: both; never T5: `bench.family.clip_encoders`)."""
        return {denoiser_name(pipe): denoiser(pipe), **(clip_encoders(pipe) if self.text_encoder else {})}

    def finish(self, pipe, data: ConceptData) -> Artifact:
        artifact = self.snapshot(pipe, data)
        for module in self._components(pipe).values():
            if getattr(module, "peft_config", None) and ADAPTER in module.peft_config:
                remove_peft(module)
        return artifact

    def snapshot(self, pipe, data: ConceptData) -> Artifact:
        from peft.utils import get_peft_model_state_dict

        tensors: dict[str, torch.Tensor] = {}
        for prefix, module in self._components(pipe).items():
            if not getattr(module, "peft_config", None) or ADAPTER not in module.peft_config:
                continue
            for key, value in get_peft_model_state_dict(module, adapter_name=ADAPTER, save_embedding_layers=False).items():
                value = value.detach().float().cpu().clone()
                # Fold alpha/rank into B: the file then means the same to every loader, including those
                # that assume alpha == rank when a file carries no alpha.
                if "lora_B" in key:
                    value *= self.alpha / self.rank
                tensors[f"{prefix}.{key}"] = value
        return Artifact(self.name, tensors, {"rank": self.rank, "alpha": self.alpha, "scale_folded": True})

    def apply(self, pipe, artifact: Artifact, weight: float) -> None:
        pipe.load_lora_weights(dict(artifact.tensors), adapter_name=ADAPTER)
        pipe.set_adapters([ADAPTER], adapter_weights=[float(weight)])

    def apply_many(self, pipe, artifact: Artifact, weights: list[float]) -> None:
        """Per-sample strengths: before each LoRA layer runs, its scale becomes a [batch, 1, ...] tensor
        (repeated over the [uncond; cond] halves of a classifier-free-guidance batch). The text encoders'
        layers too, when the file has them: the pipeline encodes one prompt per sample (and the negative
        prompts apart, as many), so their batch is the samples'. Hooked on the UNet alone, a text encoder
        LoRA stayed at full strength in every sample, weight 0 included."""
        self.apply(pipe, artifact, 1.0)
        self._sample_weights = torch.ones(1)
        self._hooks = []
        modules = [m for component in [denoiser(pipe), *text_encoders(pipe)] for m in component.modules()]
        for module in modules:
            scaling = getattr(module, "scaling", None)
            if isinstance(scaling, dict) and ADAPTER in scaling and hasattr(module, "lora_A"):
                base = float(scaling[ADAPTER])

                def per_sample(mod, args, base=base):
                    mod.scaling[ADAPTER] = per_sample_scale(self._sample_weights * base, args[0])

                self._hooks.append(module.register_forward_pre_hook(per_sample))

    def set_sample_weights(self, pipe, weights: list[float]) -> None:
        self._sample_weights = torch.tensor(weights, dtype=torch.float32)

    def remove(self, pipe) -> None:
        for hook in getattr(self, "_hooks", []):
            hook.remove()
        self._hooks = []
        pipe.unload_lora_weights()

    def save(self, artifact: Artifact, out_dir: Path) -> Path:
        """diffusers/peft format (the reported file) plus, for the UNet families, the kohya format
        AUTOMATIC1111 and ComfyUI read. A DiT family's diffusers file (`transformer.<module>.lora_A.weight`)
        is also the layout ai-toolkit writes for FLUX.1; kohya's FLUX/SD3 layouts (fused qkv, renamed blocks) are not written."""
        out_dir.mkdir(parents=True, exist_ok=True)
        main = save_tensors(out_dir / DIFFUSERS_FILE, self.name, artifact.tensors, artifact.meta)
        if any(k.startswith("transformer.") for k in artifact.tensors):
            return main
        with atomic_path(out_dir / KOHYA_FILE) as tmp:
            kohya_meta = {"ss_network_dim": str(self.rank), "ss_network_alpha": str(self.rank), "ss_network_module": "networks.lora"}
            save_file(to_kohya(artifact.tensors, self.rank), str(tmp), metadata=kohya_meta)
        return main

    def load(self, path: Path) -> Artifact:
        path = Path(path)
        file = path / DIFFUSERS_FILE if path.is_dir() else path
        tensors, meta = load_tensors(file)
        return Artifact(self.name, tensors, meta or {"rank": self.rank, "alpha": self.alpha, "scale_folded": True})


def remove_peft(module: torch.nn.Module) -> None:
    """Remove peft's wrappers themselves, not just the adapter: the module tree (and so its state-dict keys)
    is exactly the base model's again."""
    from diffusers.utils.peft_utils import recurse_remove_peft_layers

    recurse_remove_peft_layers(module)
    if hasattr(module, "peft_config"):
        del module.peft_config
    module._hf_peft_config_loaded = False


def to_kohya(tensors: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """diffusers keys (`unet.<module path>.lora_A.weight`) -> kohya keys
    (`lora_unet_<module path with _>.lora_down.weight`, `.lora_up.weight`, `.alpha`)."""
    out: dict[str, torch.Tensor] = {}
    prefixes = SDXL_PREFIXES if any(k.startswith("text_encoder_2.") for k in tensors) else PREFIXES
    for key, value in tensors.items():
        component, rest = key.split(".", 1)
        module, kind = rest.rsplit(".lora_", 1)  # kind: 'A.weight' or 'B.weight'
        name = f"{prefixes[component]}_{module.replace('.', '_')}"
        out[f"{name}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = value.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out
