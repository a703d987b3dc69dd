"""Hypernetworks as AUTOMATIC1111 / NovelAI define them.

In every attention layer, the tensor that feeds the k and v projections (the text context in
cross-attention, the hidden states in self-attention) passes through a small residual MLP first:
`k_in = x + mlp_k(x) * multiplier`, `v_in = x + mlp_v(x) * multiplier`, with one (k, v) pair of MLPs per
enabled input size, picked by the tensor's last dimension. `weight` is that multiplier.

On SD 3.5 and FLUX.1 (joint attention: text and image tokens attend together) the analog is defined on the
text stream's key/value inputs, the place a UNet's cross-attention reads its text context: the MLPs sit
before `add_k_proj` and `add_v_proj` of every block that has them (SD 3.5: all; FLUX.1: the 19
double-stream blocks; its single-stream blocks mix text and image tokens in one projection and are left
alone). The image stream's own k/v (the self-attention analog) stay untouched: on these models the text
stream carries the prompt, as the context does in a UNet.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bench.data import ConceptData
from methods.base import Artifact, Method
from methods.conditioning import per_sample_scale
from methods.errors import MethodConfigError
from bench.family import denoiser, family
from methods.files import load_tensors, save_a1111_pt, save_tensors

SAFETENSORS_FILE = "hypernetwork.safetensors"
A1111_FILE = "hypernetwork_a1111.pt"
ACTIVATIONS = {"linear": None, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU, "swish": nn.Hardswish, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "mish": nn.Mish}


class HypernetworkModule(nn.Module):
    """One residual MLP. Built layer for layer like AUTOMATIC1111's, so state-dict keys
    (`linear.<i>.weight`) match its files."""

    def __init__(self, dim: int, layer_structure: list[float], activation: str, layer_norm: bool, dropout: float, activate_output: bool, last_layer_dropout: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        n = len(layer_structure)
        for i in range(n - 1):
            layers.append(nn.Linear(int(dim * layer_structure[i]), int(dim * layer_structure[i + 1])))
            if ACTIVATIONS[activation] is not None and (i < n - 2 or activate_output):
                layers.append(ACTIVATIONS[activation]())
            if layer_norm:
                layers.append(nn.LayerNorm(int(dim * layer_structure[i + 1])))
            if dropout > 0 and (i < n - 3 or (last_layer_dropout and i < n - 2)):
                layers.append(nn.Dropout(p=dropout))
        self.linear = nn.Sequential(*layers)
        for layer in self.linear:
            if isinstance(layer, nn.Linear):
                # AUTOMATIC1111's "Normal" initialisation: a near-zero branch, so training starts at the base model.
                nn.init.normal_(layer.weight, mean=0.0, std=0.01)
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class HyperLinear(nn.Module):
    """A k or v projection whose input first goes through `x + mlp(x) * multiplier`.

    `multiplier` is a float, or a per-sample tensor [B] for batched weight sweeps."""

    def __init__(self, projection: nn.Linear, mlp: HypernetworkModule, multiplier: float | torch.Tensor = 1.0) -> None:
        super().__init__()
        self.projection, self.mlp, self.multiplier = projection, mlp, multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.multiplier
        if isinstance(m, torch.Tensor):
            m = per_sample_scale(m, x)
        return self.projection(x + self.mlp(x.to(self.mlp_dtype)).to(x.dtype) * m)

    @property
    def in_features(self) -> int:
        return self.projection.in_features

    @property
    def mlp_dtype(self) -> torch.dtype:
        return next(self.mlp.parameters()).dtype


class Hypernetwork(Method):
    name = "hypernetwork"
    display_order = 3
    a1111_tags = ("hypernet",)
    size_keys = ("layer_structure", "enable_sizes")
    weight_meaning = "each attention k/v input x becomes x + w·MLP(x) (AUTOMATIC1111's hypernetwork multiplier)"
    batched_weights = True

    def __init__(
        self,
        lr: float = 5e-4,
        enable_sizes: list[int] | None = None,
        layer_structure: list[float] | tuple[float, ...] = (1, 2, 1),
        activation: str = "linear",
        layer_norm: bool = False,
        dropout: float = 0.0,
        activate_output: bool = False,
        last_layer_dropout: bool = False,
    ) -> None:
        super().__init__(lr)
        ls = [float(x) for x in layer_structure]
        if len(ls) < 2 or ls[0] != 1 or ls[-1] != 1 or any(x <= 0 for x in ls):
            raise MethodConfigError(f"method.layer_structure: must start and end with 1 and be positive, got {list(layer_structure)}")
        if activation not in ACTIVATIONS:
            raise MethodConfigError(f"method.activation: {activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if not 0 <= dropout < 1:
            raise MethodConfigError(f"method.dropout: must be in [0, 1), got {dropout}")
        self.enable_sizes = list(enable_sizes) if enable_sizes else None  # None: every size the model has
        self.options = dict(layer_structure=ls, activation=activation, layer_norm=bool(layer_norm), dropout=float(dropout), activate_output=bool(activate_output), last_layer_dropout=bool(last_layer_dropout))
        self.modules: nn.ModuleDict | None = None

    # ---- building and installing

    @staticmethod
    def projections(pipe) -> tuple[str, str]:
        """The attributes of the k and v projections the MLPs feed: a UNet's `to_k`/`to_v`, a DiT's text stream's."""
        return ("to_k", "to_v") if family(pipe).name == "unet" else ("add_k_proj", "add_v_proj")

    @classmethod
    def attention_inputs(cls, pipe) -> dict[str, int]:
        """Each attention layer the MLPs go into and the input size of its k/v projections."""
        from diffusers.models.attention_processor import Attention

        k, _ = cls.projections(pipe)
        if k == "to_k":
            return {name: m.to_k.in_features for name, m in denoiser(pipe).named_modules() if isinstance(m, Attention)}
        return {name: getattr(m, k).in_features for name, m in denoiser(pipe).named_modules() if getattr(m, k, None) is not None}

    def build(self, sizes: list[int], options: dict | None = None) -> nn.ModuleDict:
        o = options or self.options
        mods = {}
        for size in sizes:
            for kv in ("k", "v"):
                mods[f"{size}_{kv}"] = HypernetworkModule(size, o["layer_structure"], o["activation"], o["layer_norm"], o["dropout"], o["activate_output"], o["last_layer_dropout"])
        return nn.ModuleDict(mods)

    def install(self, pipe, modules: nn.ModuleDict, multiplier: float | torch.Tensor) -> None:
        sizes = {int(k.split("_")[0]) for k in modules.keys()}
        for name, size in self.attention_inputs(pipe).items():
            if size not in sizes:
                continue
            attn = denoiser(pipe).get_submodule(name)
            for kv, attr in zip(("k", "v"), self.projections(pipe)):
                proj = getattr(attn, attr)
                base = proj.projection if isinstance(proj, HyperLinear) else proj
                setattr(attn, attr, HyperLinear(base, modules[f"{size}_{kv}"], multiplier))

    def uninstall(self, pipe) -> None:
        for name in self.attention_inputs(pipe):
            attn = denoiser(pipe).get_submodule(name)
            for attr in self.projections(pipe):
                proj = getattr(attn, attr)
                if isinstance(proj, HyperLinear):
                    setattr(attn, attr, proj.projection)

    def set_multiplier(self, pipe, multiplier: float | torch.Tensor) -> None:
        for m in denoiser(pipe).modules():
            if isinstance(m, HyperLinear):
                m.multiplier = multiplier

    # ---- the Method interface

    def prepare(self, pipe, data: ConceptData) -> list[nn.Parameter]:
        available = sorted(set(self.attention_inputs(pipe).values()))
        sizes = self.enable_sizes or available
        missing = [s for s in sizes if s not in available]
        if missing:
            raise MethodConfigError(f"method.enable_sizes: {missing} match no attention input of this model (it has {available})")
        self.modules = self.build(sizes).to(denoiser(pipe).device)
        self.modules.train()
        self.install(pipe, self.modules, 1.0)
        return list(self.modules.parameters())

    def finish(self, pipe, data: ConceptData) -> Artifact:
        self.uninstall(pipe)
        return self.snapshot(pipe, data)

    def snapshot(self, pipe, data: ConceptData) -> Artifact:
        if self.modules is None:
            return Artifact(self.name, {}, {})
        tensors = {k: v.detach().float().cpu().clone() for k, v in self.modules.state_dict().items()}
        sizes = sorted({int(k.split("_")[0]) for k in self.modules.keys()})
        return Artifact(self.name, tensors, {"sizes": sizes, **self.options, "name": data.name})

    def modules_from(self, artifact: Artifact) -> nn.ModuleDict:
        modules = self.build(artifact.meta["sizes"], {k: artifact.meta[k] for k in self.options})
        modules.load_state_dict(artifact.tensors)
        return modules.eval()

    def apply(self, pipe, artifact: Artifact, weight: float | torch.Tensor) -> None:
        self.install(pipe, self.modules_from(artifact).to(denoiser(pipe).device), weight)

    def apply_many(self, pipe, artifact: Artifact, weights: list[float]) -> None:
        self.apply(pipe, artifact, 1.0)

    def set_sample_weights(self, pipe, weights: list[float]) -> None:
        self.set_multiplier(pipe, torch.tensor(weights, dtype=torch.float32))

    def remove(self, pipe) -> None:
        self.uninstall(pipe)

    def save(self, artifact: Artifact, out_dir: Path) -> Path:
        """safetensors (the reported file) and AUTOMATIC1111's `.pt` layout:
        `{size: [k_state_dict, v_state_dict], 'layer_structure': ..., ...}`."""
        out_dir.mkdir(parents=True, exist_ok=True)
        main = save_tensors(out_dir / SAFETENSORS_FILE, self.name, artifact.tensors, artifact.meta)
        m = artifact.meta
        a1111: dict = {}
        for size in m["sizes"]:
            a1111[size] = [
                {k.split(".", 1)[1]: v for k, v in artifact.tensors.items() if k.startswith(f"{size}_{kv}.")} for kv in ("k", "v")
            ]
        a1111.update(
            layer_structure=m["layer_structure"],
            activation_func=m["activation"],
            is_layer_norm=m["layer_norm"],
            weight_initialization="Normal",
            use_dropout=m["dropout"] > 0,
            dropout_structure=None,
            activate_output=m["activate_output"],
            last_layer_dropout=m["last_layer_dropout"],
        )
        save_a1111_pt(out_dir / A1111_FILE, a1111, m.get("name", "adapterbench"), m.get("steps", 0))
        return main

    def load(self, path: Path) -> Artifact:
        path = Path(path)
        file = path / SAFETENSORS_FILE if path.is_dir() else path
        if file.suffix == ".pt":
            return self.load_a1111(file)
        tensors, meta = load_tensors(file)
        return Artifact(self.name, tensors, meta)

    def load_a1111(self, file: Path) -> Artifact:
        """An AUTOMATIC1111 hypernetwork `.pt` (untrusted: tensors and plain containers only)."""
        d = torch.load(file, map_location="cpu", weights_only=True)
        sizes = sorted(k for k in d if isinstance(k, int))
        tensors = {f"{size}_{kv}.{name}": t for size in sizes for kv, sd in zip(("k", "v"), d[size]) for name, t in sd.items()}
        meta = {
            "sizes": sizes,
            "layer_structure": [float(x) for x in d.get("layer_structure", [1, 2, 1])],
            "activation": d.get("activation_func", "linear"),
            "layer_norm": bool(d.get("is_layer_norm", False)),
            "dropout": 0.0,
            "activate_output": bool(d.get("activate_output", False)),
            "last_layer_dropout": bool(d.get("last_layer_dropout", False)),
            "name": d.get("name", file.stem),
        }
        return Artifact(self.name, tensors, meta)
