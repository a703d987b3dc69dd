"""Any of peft's weight adapters on the UNet, from a peft config in YAML: LoHa, LoKr, DoRA, OFT (and LoRA).

`conf/method/<name>.yaml` gives the peft config under `adapter` (`_target_: peft.LoHaConfig`, ...), so a
new adapter of these families is one YAML file. What weight `w` does depends on the family, and each keeps
weight 0 exactly the base model:
- LoRA, LoHa, LoKr: the adapter's update (B·A, the Hadamard or Kronecker product) is added at scale w, as
  peft's and AUTOMATIC1111's multiplier does; at w = 0 the update is zeros.
- DoRA: the low-rank direction at scale w, and each output row's learned magnitude moved from the base
  weight's row norm (w = 0) to the trained magnitude (w = 1); at w = 0 the magnitude over the norm is 1.
- OFT: the skew-symmetric generator of each block rotation multiplied by w, so the rotation goes from the
  identity (w = 0) to the trained one (w = 1); negative w rotates the other way.
Weights go one at a time (the update is formed from the weights, so a batch cannot mix strengths).
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.data import ConceptData
from methods.base import Artifact, Method
from methods.errors import MethodConfigError
from methods.files import load_tensors, save_tensors
from methods.lora import ADAPTER, remove_peft
from bench.family import denoiser, denoiser_label

FILE = "adapter.safetensors"
LYCORIS_FILE = "lycoris.safetensors"  # LoHa/LoKr in the LyCORIS/kohya layout AUTOMATIC1111 and ComfyUI read
LYCORIS_PREFIX = "lora_unet_"
# The factor each LyCORIS module's scale is folded into, in the order looked for.
FOLD_INTO = ("hada_w1_a", "lokr_w1", "lokr_w1_a")
# peft's tuner type -> the word the report and the errors use for it.
FAMILIES = {"LORA": "lora", "LOHA": "loha", "LOKR": "lokr", "OFT": "oft"}
MEANINGS = {
    "lora": "the low-rank update B·A added at scale w (peft's adapter scale)",
    "dora": "the low-rank direction at scale w, and each row's magnitude moved from the base weight's norm (w = 0) to the trained one (w = 1)",
    "loha": "the Hadamard-product update (W1a·W1b)⊙(W2a·W2b) added at scale w (AUTOMATIC1111/LyCORIS multiplier)",
    "lokr": "the Kronecker-product update W1⊗W2 added at scale w (AUTOMATIC1111/LyCORIS multiplier)",
    "oft": "each block rotation's skew-symmetric generator multiplied by w: identity at w = 0, the trained rotation at w = 1",
}


def family(config, name: str = "<name>") -> str:
    """'lora', 'dora', 'loha', 'lokr' or 'oft' for a peft config; anything else is refused by name."""
    kind = str(getattr(config.peft_type, "value", config.peft_type))
    if kind not in FAMILIES:
        raise MethodConfigError(f"method.{name}.adapter: peft type {kind} has no defined adapter weight here; use one of "
                                f"{', '.join(sorted(FAMILIES))} (LoRA with use_dora: DoRA)")
    name = FAMILIES[kind]
    return "dora" if name == "lora" and getattr(config, "use_dora", False) else name


class PeftAdapter(Method):
    name = "peft_adapter"  # each YAML names its own (`name:`), e.g. loha
    display_order = 4  # after the four compared methods; the families among themselves by name
    a1111_tags = ("lora", "lyco")  # the web UI loads LoHa, LoKr, DoRA and OFT files through <lora:...> too
    size_keys = ("adapter",)
    weight_meaning = "per adapter family: " + "; ".join(f"{k}: {v}" for k, v in MEANINGS.items())
    batched_weights = False

    def __init__(self, name: str, adapter, lr: float = 1e-3) -> None:
        super().__init__(lr)
        from peft import PeftConfig

        if not isinstance(adapter, PeftConfig):
            raise MethodConfigError(f"method.{name}.adapter: a peft config (_target_: peft.LoHaConfig, ...), got {type(adapter).__name__}")
        self.name = str(name)
        self.family = family(adapter, name)
        if not adapter.target_modules:
            raise MethodConfigError(f"method.{name}.adapter.target_modules: empty; name at least one module, e.g. to_q")
        self.adapter = adapter

    @classmethod
    def weight_meaning_for(cls, mcfg: dict) -> str:
        """The report's line for one configured method (its peft family)."""
        from hydra.utils import instantiate

        return MEANINGS[family(instantiate(mcfg["adapter"]))]

    def _config(self):
        import copy

        return copy.deepcopy(self.adapter)  # peft writes into the config it injects

    # ---- training

    def prepare(self, pipe, data: ConceptData) -> list[torch.nn.Parameter]:
        model = denoiser(pipe)
        try:
            model.add_adapter(self._config(), adapter_name=ADAPTER)
            params = [p for n, p in model.named_parameters() if f".{ADAPTER}" in n]
            if not params:
                raise ValueError("no adapter parameters")
        except ValueError as e:  # peft's "target modules not found" among them
            remove_peft(model)
            raise MethodConfigError(f"method.{self.name}.adapter.target_modules: {sorted(self.adapter.target_modules)} matched no module of the "
                                    f"{denoiser_label(pipe)} ({str(e).splitlines()[0][:160]})") from None
        for p in params:
            p.data = p.data.float()  # adapters train in fp32 whatever the base dtype
            p.requires_grad_(True)
        return params

    def finish(self, pipe, data: ConceptData) -> Artifact:
        artifact = self.snapshot(pipe, data)
        if getattr(denoiser(pipe), "peft_config", None) and ADAPTER in denoiser(pipe).peft_config:
            remove_peft(denoiser(pipe))
        return artifact

    def snapshot(self, pipe, data: ConceptData) -> Artifact:
        from peft.utils import get_peft_model_state_dict

        unet = denoiser(pipe)
        tensors = {}
        if getattr(unet, "peft_config", None) and ADAPTER in unet.peft_config:
            tensors = {k: v.detach().float().cpu().clone() for k, v in get_peft_model_state_dict(unet, adapter_name=ADAPTER, save_embedding_layers=False).items()}
        return Artifact(self.name, tensors, {"peft_config": _config_dict(self.adapter), "family": self.family})

    # ---- strength

    def apply(self, pipe, artifact: Artifact, weight: float) -> None:
        from peft.utils import set_peft_model_state_dict

        unet = denoiser(pipe)
        tensors, folded = artifact.tensors, is_lycoris(artifact.tensors)
        if folded:
            tensors = from_lycoris(tensors, [n for n, _ in unet.named_modules()])
        unet.add_adapter(self._config(), adapter_name=ADAPTER)
        result = set_peft_model_state_dict(unet, tensors, adapter_name=ADAPTER)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            remove_peft(unet)
            raise MethodConfigError(f"method.{self.name}: the artifact's tensors do not fit this adapter config ({unexpected[0]} ...)")
        for p in unet.parameters():
            p.requires_grad_(False)
        w = float(weight)
        with torch.no_grad():
            for module in unet.modules():
                if folded and isinstance(getattr(module, "scaling", None), dict) and ADAPTER in module.scaling:
                    module.scaling[ADAPTER] = 1.0  # the file's factors carry the scale
                self._set_weight(module, w)
        unet.eval()

    def _set_weight(self, module: torch.nn.Module, w: float) -> None:
        scaling = getattr(module, "scaling", None)
        if self.family == "oft":
            rotations = getattr(module, "oft_R", None)
            if rotations is not None and ADAPTER in rotations:
                rotations[ADAPTER].weight.mul_(w)
            return
        if not (isinstance(scaling, dict) and ADAPTER in scaling):
            return
        scaling[ADAPTER] = scaling[ADAPTER] * w
        if self.family == "dora":
            magnitude = module.lora_magnitude_vector[ADAPTER].weight
            base = module.get_base_layer().weight
            # The row norms DoRA divides by at w = 0 (the update scaled to nothing), computed as its forward does.
            norm = torch.linalg.norm(base.to(magnitude.dtype), dim=1).to(magnitude.dtype)
            magnitude.copy_(torch.lerp(norm, magnitude, w))

    def remove(self, pipe) -> None:
        if getattr(denoiser(pipe), "peft_config", None):
            remove_peft(denoiser(pipe))

    # ---- files

    def save(self, artifact: Artifact, out_dir: Path) -> Path:
        """peft's own state-dict keys and the peft config (metadata), as safetensors (the reported file);
        LoHa and LoKr also in the LyCORIS layout (`lycoris.safetensors`)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        main = save_tensors(out_dir / FILE, self.name, artifact.tensors, artifact.meta)
        if self.family in ("loha", "lokr") and not is_lycoris(artifact.tensors):
            save_tensors(out_dir / LYCORIS_FILE, self.name, to_lycoris(artifact.tensors, self._scaling()), {"family": self.family})
        return main

    def _scaling(self) -> float:
        return float(self.adapter.alpha) / float(self.adapter.r)

    def load(self, path: Path) -> Artifact:
        """What `save` wrote, or a LyCORIS-layout LoHa/LoKr file (its module names are matched to the UNet's
        when the artifact is applied)."""
        path = Path(path)
        file = path / FILE if path.is_dir() else path
        tensors, meta = load_tensors(file)
        return Artifact(self.name, tensors, meta)


def _config_dict(config) -> dict:
    import json

    return json.loads(json.dumps(config.to_dict(), default=lambda v: sorted(v) if isinstance(v, set) else str(v)))


def is_lycoris(tensors: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(LYCORIS_PREFIX) for k in tensors)


def to_lycoris(tensors: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """peft LoHa/LoKr keys (`<module path>.hada_w1_a`) -> LyCORIS keys (`lora_unet_<path with _>.hada_w1_a`,
    and `.alpha`). The factors' shapes are LyCORIS's already (peft ported them); peft's scale (alpha / r) is
    folded into the first factor and `alpha` written as the rank, so every loader's alpha / rank is 1 (for
    a LoKr without low-rank factors LyCORIS uses scale 1 itself)."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        module, part = key.rsplit(".", 1)
        modules.setdefault(module, {})[part] = value
    out: dict[str, torch.Tensor] = {}
    for module, parts in modules.items():
        name = LYCORIS_PREFIX + module.replace(".", "_")
        fold = next(p for p in FOLD_INTO if p in parts)
        rank = next((parts[p].shape[0] for p in ("hada_w1_b", "lokr_w2_b", "lokr_w1_b") if p in parts), None)
        for part, value in parts.items():
            out[f"{name}.{part}"] = (value * scaling if part == fold else value).contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(rank if rank is not None else 1.0))
    return out


def from_lycoris(tensors: dict[str, torch.Tensor], module_names: list[str]) -> dict[str, torch.Tensor]:
    """LyCORIS keys back to peft's, by the UNet's module names (underscores are ambiguous on their own).
    The scale stays folded (the caller sets peft's scale to 1); `alpha` entries are dropped."""
    by_flat = {n.replace(".", "_"): n for n in module_names if n}
    out = {}
    for key, value in tensors.items():
        flat, part = key.split(".", 1)
        if part == "alpha":
            continue
        module = by_flat.get(flat.removeprefix(LYCORIS_PREFIX))
        if module is None:
            raise MethodConfigError(f"LyCORIS file: module {flat!r} is not in this UNet")
        out[f"{module}.{part}"] = value
    return out
