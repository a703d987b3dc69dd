"""mode=estimate: what each method would cost on a model, from its architecture alone.

A user without the GPU at hand wants to know before renting one: how big is each method's file, how much
memory does its training need, how long is a step. This builds the model's real diffusers modules from
its configs (`bench/arch/<name>/`, JSON only: no weights, no hub) as fake tensors (shapes and dtypes, no
data: `torch._subclasses.FakeTensorMode`), and then runs each method's own code on them:

- `Method.train`, unchanged, with its optimizer loop replaced by `TrainStep`s (the same forward,
  loss, backward and AdamW step the real loop runs), watched by the `TensorPeak` probe the CPU
  measurement uses: the peak of live tensor bytes on the model's device, model weights included;
- `torch.utils.flop_counter` over the second training step and over one denoising step at weight 1;
- `Method.file_content` (what `save` writes to the reported file), sized byte for byte as safetensors
  lays it out, without writing it.

The model's tensors are on the "meta" device, standing for the GPU; what the code keeps in host memory
(cached latents, DreamBooth's base copy) is on the CPU and counts only with `estimate.device=cpu` (what a
CPU run's tensor peak counts). A time per step is FLOPs over the named GPU's peak rate times a stated
efficiency: a rough figure, labelled so. `benchmarks/estimate.py` compares all of it with real trainings
of the micro model.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from omegaconf import DictConfig
from torch.overrides import TorchFunctionMode

from bench.memory import MIB, TensorPeak, module_storages

log = logging.getLogger(__name__)

ARCH = Path(__file__).resolve().parent / "arch"
MICRO = Path(__file__).resolve().parent / "zoo" / "micro_sd"

# Dense peak rates in TFLOP/s from the vendors' data sheets (no sparsity), per math mode.
GPUS: dict[str, dict] = {
    "T4": {"memory_gib": 16, "tflops": {"fp32": 8.1, "fp16": 65.0}},
    "A10G": {"memory_gib": 24, "tflops": {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0}},
    "L4": {"memory_gib": 24, "tflops": {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0}},
    "RTX4090": {"memory_gib": 24, "tflops": {"fp32": 82.6, "bf16": 165.2, "fp16": 165.2}},
    "A100-40GB": {"memory_gib": 40, "tflops": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}},
    "A100-80GB": {"memory_gib": 80, "tflops": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}},
    "H100-SXM": {"memory_gib": 80, "tflops": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}},
}
SAFETENSORS_DTYPES = {torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.float16: "F16",
                      torch.bfloat16: "BF16", torch.int32: "I32", torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}
# safetensors writes tensors sorted by dtype (this order, descending), then by name.
_DTYPE_ORDER = ["BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64"]


class EstimateConfigError(ValueError):
    """An estimate that cannot be made as configured; the message names the key."""


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> int:
    """The exact size of the file `safetensors.torch.save_file(tensors, path, metadata)` writes: an 8-byte
    length, the JSON header (compact, padded with spaces to 8 bytes), then the raw data."""
    items = sorted(tensors.items(), key=lambda kv: (-_DTYPE_ORDER.index(SAFETENSORS_DTYPES[kv[1].dtype]), kv[0]))
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, t in items:
        n = t.numel() * t.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    h = len(json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode())
    return 8 + h + (8 - h % 8) % 8 + offset


def arch_folder(model: DictConfig) -> Path:
    """The folder of component configs for `model`: the embedded micro model's own, a shipped architecture
    (bench/arch/<name>), or the user's local diffusers folder (`model.path`; only its configs are read)."""
    if model.get("embedded"):
        return MICRO
    path = model.get("path")
    if path not in (None, "???") and Path(str(path)).is_dir():
        return Path(str(path))
    folder = ARCH / str(model.name)
    if not _has_denoiser(folder):
        known = sorted(p.name for p in ARCH.iterdir() if _has_denoiser(p))
        raise EstimateConfigError(f"model.name: no architecture configs for {model.name!r} in {ARCH} (shipped: {', '.join(known)}, micro), "
                                  "and model.path is not a local diffusers folder")
    return folder


@contextlib.contextmanager
def _without_value_init():
    """torch.nn.init's fills as no-ops while fake modules are built: fake tensors hold no values, and each
    fill is an op through the fake-tensor mode (FLUX.1's pipeline: 5.3 s built with them, 0.3 s without)."""
    import torch.nn.init as init

    fills = {n: getattr(init, n) for n in dir(init) if n.endswith("_") and not n.startswith("_") and callable(getattr(init, n))}
    for name in fills:
        setattr(init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fill in fills.items():
            setattr(init, name, fill)


def _has_denoiser(folder: Path) -> bool:
    return any((folder / c / "config.json").is_file() for c in ("unet", "transformer"))


def _pipeline_kind(folder: Path) -> str | None:
    index = folder / "model_index.json"
    return json.loads(index.read_text()).get("_class_name") if index.is_file() else None


def stand_in_t5_tokenizer(words: list[str], max_length: int):
    """A T5 tokenizer (SentencePiece-style unigram, `</s>` appended, pad id 0) over `words`: T5's layout and
    padding with a vocabulary small enough to ship. mode=estimate reads lengths, not which words; the tests'
    tiny T5 models embed exactly these ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = ["<pad>", "</s>", "<unk>", *dict.fromkeys(f"\u2581{w}" for w in words)]
    tk = Tokenizer(models.Unigram([(p, -1.0) for p in pieces], unk_id=2))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0, model_max_length=max_length)


QWEN_CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                      "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and enable_thinking is false %}"
                      "<think>\n\n</think>\n\n{% endif %}{% endif %}")


def stand_in_qwen_tokenizer(max_length: int = 512):
    """A Qwen2 tokenizer with Qwen3's chat template (the parts FLUX.2 klein's prompt encoding uses: a user
    turn, the assistant's opening, thinking off) and its special tokens, over single bytes only (byte-level
    BPE without merges): the layout and padding of Qwen's own with a vocabulary that ships in a few KB.
    mode=estimate reads lengths (the pipeline pads to 512 tokens); the tests' tiny Qwen3 embeds these ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tk = Tokenizer(models.BPE({c: i for i, c in enumerate(alphabet)}, []))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    return Qwen2TokenizerFast(tokenizer_object=tk, pad_token="<|endoftext|>", eos_token="<|im_end|>", model_max_length=max_length,
                              chat_template=QWEN_CHAT_TEMPLATE, additional_special_tokens=["<|im_start|>", "<|im_end|>"])


def _fake_klein_pipeline(folder: Path, dtype: torch.dtype):
    from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from methods.conditioning import cast_parameters

    with torch.device("meta"), _without_value_init():
        transformer = Flux2Transformer2DModel.from_config(_config(folder, "transformer"))
        vae = AutoencoderKLFlux2.from_config(_config(folder, "vae"))
        qwen = Qwen3ForCausalLM(Qwen3Config(**_config(folder, "text_encoder")))
    for m in (transformer, vae, qwen):
        m.eval()
        cast_parameters(m, dtype)
    return Flux2KleinPipeline(scheduler=_flow_scheduler(folder), vae=vae, text_encoder=qwen, tokenizer=stand_in_qwen_tokenizer(), transformer=transformer)


def _fake_dit_pipeline(folder: Path, kind: str, dtype: torch.dtype, resolution: int | None):
    """SD 3.5, FLUX.1 or FLUX.2 klein from `folder`'s configs as fake tensors (see `fake_pipeline`).
    Tokenizers: the micro model's CLIP tokenizer at CLIP's 77, a stand-in T5 tokenizer
    (`stand_in_t5_tokenizer`), a stand-in Qwen tokenizer (`stand_in_qwen_tokenizer`)."""
    pipe = _fake_klein_pipeline(folder, dtype) if kind == "Flux2KleinPipeline" else _fake_sd3_or_flux_pipeline(folder, kind, dtype)
    if resolution:
        pipe.default_sample_size = int(resolution) // pipe.vae_scale_factor
    pipe.register_to_config(_name_or_path=str(folder))
    return pipe


def _flow_scheduler(folder: Path):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():  # the scheduler reads its own sigmas' values as it is made (a few thousand floats)
        return FlowMatchEulerDiscreteScheduler.from_config(_config(folder, "scheduler"))


def _fake_sd3_or_flux_pipeline(folder: Path, kind: str, dtype: torch.dtype):
    from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizerFast, T5Config, T5EncoderModel

    from bench import world
    from methods.conditioning import cast_parameters
    from bench.family import FAMILIES

    sd3 = kind == "StableDiffusion3Pipeline"
    with torch.device("meta"), _without_value_init():
        vae = AutoencoderKL.from_config(_config(folder, "vae"))
        transformer = (SD3Transformer2DModel if sd3 else FluxTransformer2DModel).from_config(_config(folder, "transformer"))
        clips = [(CLIPTextModelWithProjection if sd3 else CLIPTextModel)(CLIPTextConfig(**_config(folder, "text_encoder")))]
        if sd3:
            clips.append(CLIPTextModelWithProjection(CLIPTextConfig(**_config(folder, "text_encoder_2"))))
        t5 = T5EncoderModel(T5Config(**_config(folder, "text_encoder_3" if sd3 else "text_encoder_2")))
    for m in (transformer, vae, *clips, t5):
        m.eval()
        cast_parameters(m, dtype)
    clip_tok = CLIPTokenizerFast.from_pretrained(MICRO / "tokenizer", model_max_length=clips[0].config.max_position_embeddings)
    t5_tok = stand_in_t5_tokenizer(world.vocabulary(), next(iter(FAMILIES[kind].text_lengths.values())))
    scheduler = _flow_scheduler(folder)
    if sd3:
        pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=clips[0], tokenizer=clip_tok,
                                        text_encoder_2=clips[1], tokenizer_2=copy.deepcopy(clip_tok), text_encoder_3=t5, tokenizer_3=t5_tok)
    else:
        pipe = FluxPipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=clips[0], tokenizer=clip_tok,
                            text_encoder_2=t5, tokenizer_2=t5_tok)
    return pipe


def _config(folder: Path, component: str) -> dict:
    for name in ("config.json", "scheduler_config.json"):
        f = folder / component / name
        if f.is_file():
            return json.loads(f.read_text())
    raise EstimateConfigError(f"model: {folder / component} has no config.json")


def fake_pipeline(folder: Path, dtype: torch.dtype = torch.float32, resolution: int | None = None):
    """The pipeline (SD, or SDXL when `folder` has a second text encoder; SD 3.5 or FLUX.1 when its
    model_index.json says so) whose modules are built from `folder`'s configs as fake tensors on "meta",
    its weights in `dtype` (`resolution`: the DiT pipelines' default image size).
    Call inside a FakeTensorMode. The tokenizer is the micro model's (its token ids are valid in any CLIP
    vocabulary), padded to the text encoder's length: costs depend on lengths, not on which words."""
    kind = _pipeline_kind(folder)
    if kind in ("StableDiffusion3Pipeline", "FluxPipeline", "Flux2KleinPipeline"):
        return _fake_dit_pipeline(folder, kind, dtype, resolution)
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizerFast

    from methods.conditioning import cast_parameters

    text_config = CLIPTextConfig(**_config(folder, "text_encoder"))
    sdxl = (folder / "text_encoder_2").is_dir()
    with torch.device("meta"), _without_value_init():
        unet = UNet2DConditionModel.from_config(_config(folder, "unet"))
        vae = AutoencoderKL.from_config(_config(folder, "vae"))
        text_encoder = CLIPTextModel(text_config)
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_config(folder, "text_encoder_2"))) if sdxl else None
    tokenizer = CLIPTokenizerFast.from_pretrained(MICRO / "tokenizer", model_max_length=text_config.max_position_embeddings)
    scheduler = DDPMScheduler.from_config(_config(folder, "scheduler"))
    for m in (unet, vae, text_encoder, text_encoder_2):
        if m is not None:
            m.eval()
            cast_parameters(m, dtype)
    if sdxl:
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                                         tokenizer_2=copy.deepcopy(tokenizer),  # its own object: TI adds tokens per tokenizer
                                         unet=unet, scheduler=scheduler)
    else:
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.register_to_config(_name_or_path=str(folder))
    return pipe


@contextlib.contextmanager
def _fake_modules():
    """Make the methods' module code run on fake tensors. `Module.to()` on fake parameters always swaps
    tensors, which fails ("has weakref") even when nothing moves; a move to where a tensor already is
    can keep it, so that failure is skipped. And new modules (peft's LoRA layers, hypernetwork MLPs, a
    resized token table) are created on "meta", next to the model, as they would be on its device."""
    real_swap = torch.utils.swap_tensors

    def swap(t1, t2):
        try:
            real_swap(t1, t2)
        except RuntimeError:
            if (t1.device, t1.dtype, t1.shape) != (t2.device, t2.dtype, t2.shape):
                raise

    # transformers initialises rows added to a token table from the table's mean and covariance and checks
    # the covariance numerically, which fake tensors cannot; Textual Inversion overwrites those rows at
    # once, so the estimate skips that initialisation (a temporary of hidden_size^2 floats).
    from transformers.modeling_utils import PreTrainedModel

    real_init = PreTrainedModel._init_added_embeddings_weights_with_mean
    torch.utils.swap_tensors = swap
    PreTrainedModel._init_added_embeddings_weights_with_mean = lambda *a, **k: None
    try:
        yield
    finally:
        torch.utils.swap_tensors = real_swap
        PreTrainedModel._init_added_embeddings_weights_with_mean = real_init


class _Attention(TorchFunctionMode):
    """Attention as the GPU computes it. On "meta", PyTorch's scaled_dot_product_attention falls back to
    its math path, which keeps every attention matrix (gigabytes at 512 px); CUDA picks a fused kernel
    that keeps only the output and its log-sum-exp. `efficient` runs that kernel's op (memory-efficient
    attention, whose shapes and FLOP formula torch registers); `math` leaves the fallback."""

    def fresh(self) -> "_Attention":
        return _Attention()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
        a = {**dict(zip(names, args)), **kwargs}
        if a.get("enable_gqa") or a["query"].shape[-3] != a["key"].shape[-3]:
            return func(*args, **kwargs)
        grad = torch.is_grad_enabled() and any(a[n].requires_grad for n in ("query", "key", "value"))
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            a["query"], a["key"], a["value"], a.get("attn_mask"), grad, float(a.get("dropout_p", 0.0)), bool(a.get("is_causal", False)),
            scale=a.get("scale"))[0]


# CUDA autocast's policy (torch/csrc/autocast_mode.cpp), at the level of the functions the models call:
# these run in the low dtype...
_LOW_PRECISION = {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.linear, F.scaled_dot_product_attention,
                  torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.bmm, torch.baddbmm, torch.addmm,
                  torch.Tensor.baddbmm, torch.Tensor.bmm, torch.einsum}
# ...these in fp32 on CUDA (normalisations, softmax, losses, upsampling, exp/log/pow). The CPU's list keeps
# only the losses (and has no normalisation or softmax in fp32): `policy="cpu"`, checked against torch's
# own CPU autocast by benchmarks/estimate.py.
_FP32_CUDA = {F.layer_norm, F.group_norm, torch.group_norm, torch.layer_norm, F.softmax, F.log_softmax, torch.softmax,
              torch.Tensor.softmax, F.mse_loss, F.interpolate, torch.exp, torch.log, torch.pow, torch.Tensor.pow, torch.rsqrt, torch.cumsum}
_FP32_CPU = {F.mse_loss}


class _Autocast(TorchFunctionMode):
    """torch.autocast for the fake "meta" model, which autocast ignores (it acts per device, and has no
    meta). Inputs of the listed functions are cast as autocast casts them, through autograd (so backward
    keeps what the real one keeps); like autocast, one cast per trainable leaf weight is kept for the
    length of the region (its weight cache), other casts are temporaries."""

    def __init__(self, dtype: torch.dtype, policy: str = "cuda") -> None:
        super().__init__()
        self.dtype = dtype
        self.fp32 = _FP32_CUDA if policy == "cuda" else _FP32_CPU
        self.policy = policy
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def fresh(self) -> "_Autocast":
        return _Autocast(self.dtype, self.policy)

    def _cast(self, x, dtype: torch.dtype):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dtype in (dtype, torch.float64):
            return x
        if dtype is self.dtype and x.is_leaf and x.requires_grad:
            if id(x) not in self.cache:
                self.cache[id(x)] = (x, x.to(dtype))  # the source kept too: its id stays its own
            return self.cache[id(x)][1]
        return x.to(dtype)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dtype = self.dtype if func in _LOW_PRECISION else torch.float32 if func in self.fp32 else None
        if dtype is None:
            return func(*args, **kwargs)
        cast = lambda v: [self._cast(x, dtype) for x in v] if isinstance(v, (list, tuple)) else self._cast(v, dtype)  # noqa: E731
        return func(*[cast(a) for a in args], **{k: cast(v) for k, v in kwargs.items()})


class _AdamW8bitState(torch.optim.Optimizer):
    """What bitsandbytes' AdamW8bit allocates, for fake tensors (bitsandbytes runs no meta kernels): per
    tensor of at least 4,096 values two uint8 moments of its shape, a float32 absmax per block of 256
    values for each and a 256-entry float32 code map for each; smaller tensors two float32 moments. Its
    update works in place (a fused kernel). Checked against bitsandbytes' own state in the tests."""

    MIN_8BIT, BLOCK = 4096, 256

    def __init__(self, params) -> None:
        super().__init__(params, {})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or self.state[p]:
                    continue
                if p.numel() >= self.MIN_8BIT:
                    blocks = -(-p.numel() // self.BLOCK)
                    self.state[p] = {f"{k}{i}": t for i in (1, 2) for k, t in (
                        ("state", torch.zeros_like(p, dtype=torch.uint8)), ("absmax", torch.zeros(blocks, device=p.device)),
                        ("qmap", torch.zeros(256, device=p.device)))}
                else:
                    self.state[p] = {"state1": torch.zeros_like(p, dtype=torch.float32), "state2": torch.zeros_like(p, dtype=torch.float32)}


def bnb_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in an optimizer's state."""
    return sum(t.numel() * t.element_size() for st in optimizer.state.values() for t in st.values() if isinstance(t, torch.Tensor))


@dataclass(frozen=True)
class Variant:
    """One way of training on the GPU: `precision` (fp32, or bf16/fp16 mixed: the frozen model in that
    dtype, the trained weights fp32, the forward autocast), gradient checkpointing, the optimizer. Written
    as in `estimate.variants`: `fp16+ckpt+adamw8bit`."""

    precision: str = "fp32"
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"

    @classmethod
    def parse(cls, text: str) -> "Variant":
        from methods.settings import PRECISIONS

        precision, *rest = str(text).split("+")
        unknown = [r for r in rest if r not in ("ckpt", "adamw8bit")]
        if precision not in PRECISIONS or unknown or len(set(rest)) != len(rest):
            raise EstimateConfigError(f"estimate.variants: {text!r} is not <precision>[+ckpt][+adamw8bit] with precision one of {', '.join(PRECISIONS)}")
        return cls(precision, "ckpt" in rest, "adamw8bit" if "adamw8bit" in rest else "adamw")

    @property
    def label(self) -> str:
        return "+".join([self.precision] + (["ckpt"] if self.gradient_checkpointing else []) + (["adamw8bit"] if self.optimizer == "adamw8bit" else []))


def configured_variant(cfg: DictConfig) -> Variant:
    """The variant `train.*` of this config trains as (what `mode=run` with the same overrides would do)."""
    t = cfg.train
    return Variant(str(t.get("precision", "fp32")), bool(t.get("gradient_checkpointing", False)), str(t.get("optimizer", "adamw")))


def _checkpoint_keeping_modes(function, *args, **kwargs):
    """torch.utils.checkpoint whose recomputation (in backward) runs under the torch-function modes of
    the forward: the estimate's attention kernel and autocast stand-ins act only where they are active,
    and backward does not carry them over; without them the recomputation differs from the forward."""
    from torch.overrides import _get_current_function_mode_stack

    modes = [m for m in _get_current_function_mode_stack() if isinstance(m, (_Attention, _Autocast))]

    @contextlib.contextmanager
    def recompute_context():
        with contextlib.ExitStack() as stack:
            for mode in modes:
                stack.enter_context(mode.fresh())
            yield

    kwargs.pop("use_reentrant", None)
    return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), recompute_context()), **kwargs)


def _keep_modes_in_recomputation(*modules: torch.nn.Module) -> None:
    for module in modules:
        for m in module.modules():
            if getattr(m, "gradient_checkpointing", False) and hasattr(m, "_gradient_checkpointing_func"):
                m._gradient_checkpointing_func = _checkpoint_keeping_modes


def _without_random_skips(model: torch.nn.Module) -> None:
    """peft's LyCORIS layers (LoHa, LoKr) draw `torch.rand(1) > module_dropout` in training mode to decide
    whether to run at all, a value fake tensors do not have. With both dropouts at 0 (the configs') the draw
    always runs the adapter, exactly as in eval mode: those layers are put in eval mode for the estimate."""
    from peft.tuners.lycoris_utils import LycorisLayer

    for m in model.modules():
        if isinstance(m, LycorisLayer) and not any(m.module_dropout.values()) and not any(m.rank_dropout.values()):
            m.eval()


def _on_meta(fn):
    def wrapped(*args, **kwargs):
        with torch.device("meta"):
            return fn(*args, **kwargs)

    return wrapped


def estimate_method(cfg: DictConfig, name: str, folder: Path, device_types: tuple[str, ...] = ("meta",), steps: bool = True,
                    variant: Variant = Variant(), policy: str = "cuda") -> dict:
    """Parameters, file bytes, training peak memory and FLOPs of one method on the model in `folder`,
    trained as `variant` (`steps=False`: parameters and file bytes only, without running the training
    steps; `policy`: whose autocast lists a mixed-precision variant follows, "cuda" or "cpu")."""
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException, FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    from bench.data import load_world_concept
    from methods import build_method
    from methods.conditioning import text_condition, text_encoders, tokenize
    from bench.family import denoiser, family
    from methods.settings import PRECISIONS, TrainSettings
    from methods.training import TrainStep

    resolution = int(cfg.model.resolution)
    method = build_method(cfg, name)
    settings = TrainSettings(steps=2, batch_size=int(cfg.train.batch_size), seed=0, progress=False, precision=variant.precision,
                             gradient_checkpointing=variant.gradient_checkpointing)
    concept = load_world_concept("sks_crescent", int(cfg.data.n_images), resolution)
    if hasattr(method, "class_images"):  # DreamBooth's prior: the base model's images, here stand-ins of the same size
        method.class_images = lambda pipe, data, s: [concept.images[0]] * int(method.num_class_images)
    method.prepare, method.finish = _on_meta(method.prepare), _on_meta(method.finish)
    out: dict = {}
    attention = _Attention() if str(cfg.estimate.attention) == "efficient" else contextlib.nullcontext()
    with FakeTensorMode(allow_non_fake_inputs=True), _fake_modules(), attention:
        pipe = fake_pipeline(folder, PRECISIONS[variant.precision] or torch.float32, resolution)
        weights = module_storages(denoiser(pipe), pipe.vae, *text_encoders(pipe))
        model_bytes = sum(s.nbytes() for s in weights)
        probe = TensorPeak(model_bytes, known=weights, device_types=device_types)
        del weights  # the probe holds them weakly: a weight replaced during training is freed, and counted so

        def two_steps(pipe, params, instance, prior, s):
            _without_random_skips(denoiser(pipe))
            step = TrainStep(method, pipe, params, instance, prior, s)
            if variant.gradient_checkpointing:
                _keep_modes_in_recomputation(denoiser(pipe), *text_encoders(pipe))
            if variant.optimizer == "adamw8bit":
                step.opt = _AdamW8bitState(params)
            if s.autocast_dtype is not None:
                step.autocast = lambda: _Autocast(s.autocast_dtype, policy)
            out["trainable_params"] = sum(p.numel() for p in params)
            if not steps:
                return []
            step.update(step.loss())  # the first step creates the optimizer state
            step.update(step.loss())  # a steady step: the training's peak
            # FLOPs on a third step, unwatched: the counter's module hooks keep a checkpointed block's
            # recomputed tensors alive longer than training does (micro: +7-35 % when it was watched).
            probe.stop()
            counter = FlopCounterMode(display=False)
            with counter:
                step.update(step.loss())
            out["train_step_flops"] = counter.get_total_flops()
            # One denoising step with the method in place as trained (weight 1), guidance doubling the batch.
            # FLUX.1-dev is guidance-distilled: one pass per sample (guidance is an input), no doubled batch.
            fam = family(pipe)
            n = int(cfg.estimate.gen_batch) * (1 if fam.name == "flux1" else 2)
            # The latents the pipeline samples: a UNet's at model.resolution; a DiT's as its pipeline lays them
            # out (FLUX.2 klein's 2x2-patchified: half the side, four times the channels).
            shape = (fam.latent_shape(pipe)[0], resolution // pipe.vae_scale_factor, resolution // pipe.vae_scale_factor) if fam.name == "unet" else fam.latent_shape(pipe)
            x = torch.zeros(n, *shape, device="meta", dtype=denoiser(pipe).dtype)
            with torch.no_grad():
                hidden, pooled = text_condition(pipe, tokenize(pipe, ["a sks shape"] * n).to("meta"))
            counter = FlopCounterMode(display=False)
            with torch.no_grad(), counter:
                fam.predict(pipe, x, torch.zeros(n, dtype=torch.long, device="meta"), hidden.to(x.dtype), [None if pooled is None else pooled.to(x.dtype)])
            out["gen_step_flops"] = counter.get_total_flops()
            return []

        probe.start()
        try:
            artifact = method.train(pipe, concept, settings, loop=two_steps).artifact
        except (DataDependentOutputException, DynamicOutputShapeException):
            # DreamBooth's finish compares tensor values, which fake tensors do not have; its file comes
            # from the pipe's own weights below.
            if "trainable_params" not in out:
                raise
            artifact = None
        finally:
            probe.stop()
        if steps:
            out["peak_bytes"] = probe.peak_bytes
        out["model_bytes"] = model_bytes
        tensors, metadata = method.file_content(artifact, pipe)  # DreamBooth's (artifact None) from the pipe's own weights
        out["file_bytes"] = safetensors_bytes(tensors, metadata)
    return out


def smallest_card(peak_bytes: float) -> str:
    """The GPU of `GPUS` with the least memory that holds `peak_bytes` (ties: the first listed), or 'none
    listed' above 80 GiB. Memory only: activations beyond the estimate and the CUDA context (a few hundred
    MiB) come on top."""
    fits = [(g["memory_gib"], name) for name, g in GPUS.items() if peak_bytes / 2**30 <= g["memory_gib"]]
    return min(fits, key=lambda f: f[0])[1] if fits else "none listed"


def estimate(cfg: DictConfig) -> pd.DataFrame:
    e = cfg.estimate
    if str(e.gpu) not in GPUS:
        raise EstimateConfigError(f"estimate.gpu: unknown GPU {e.gpu!r}; known: {', '.join(GPUS)}")
    precision = str(e.precision)
    if precision not in GPUS[str(e.gpu)]["tflops"]:
        raise EstimateConfigError(f"estimate.precision: {precision!r} has no listed rate on {e.gpu} (listed: {', '.join(GPUS[str(e.gpu)]['tflops'])})")
    if not 0 < float(e.efficiency) <= 1:
        raise EstimateConfigError(f"estimate.efficiency: the fraction of peak FLOP rate reached, in (0, 1], got {e.efficiency}")
    if str(e.device) not in ("cuda", "cpu"):
        raise EstimateConfigError(f"estimate.device: 'cuda' (memory on the GPU) or 'cpu' (every tensor, as a CPU run counts), got {e.device!r}")
    if str(e.attention) not in ("efficient", "math"):
        raise EstimateConfigError(f"estimate.attention: 'efficient' (a fused kernel, as CUDA runs it) or 'math' (every attention matrix kept), got {e.attention!r}")
    if int(e.gen_batch) < 1:
        raise EstimateConfigError(f"estimate.gen_batch: images per denoising step, at least 1, got {e.gen_batch}")
    folder = arch_folder(cfg.model)
    device_types = ("meta",) if e.device == "cuda" else ("meta", "cpu")
    from methods import build_method

    for name in cfg.method:
        build_method(cfg, name)  # every method's settings checked before the first (slow) estimate
    variants = [Variant.parse(v) for v in (e.get("variants") or ["fp32"])]
    configured = configured_variant(cfg)
    if configured not in variants:  # the run this config would train is always among the rows
        variants.insert(0, configured)
    rows = []
    from tqdm.auto import tqdm

    # A model at SD scale takes seconds to minutes per (method, variant) (SDXL: 8.5 min for 16): a bar says how far.
    bar = tqdm(total=len(cfg.method) * len(variants), desc=f"estimate {cfg.model.name}", unit="estimate", disable=not cfg.get("progress", True), leave=False)
    for name in cfg.method:
        for variant in variants:
            start = time.perf_counter()
            bar.set_postfix_str(f"{name} {variant.label}")
            r = estimate_method(cfg, name, folder, device_types, variant=variant)
            bar.update()
            log.info("estimated %s (%s) on %s in %.1f s", name, variant.label, cfg.model.name, time.perf_counter() - start)
            # fp32 training runs at the configured fp32 math mode (fp32 or tf32); mixed precision at its dtype's rate.
            math = precision if variant.precision == "fp32" else variant.precision
            tflops = GPUS[str(e.gpu)]["tflops"].get(math)
            step_s = r["train_step_flops"] / (tflops * 1e12 * float(e.efficiency)) if tflops else float("nan")
            rows.append({
                "model": str(cfg.model.name), "method": name, "variant": variant.label, "as configured": variant == configured,
                "resolution": int(cfg.model.resolution),
                "batch": int(cfg.train.batch_size), "trainable params": r["trainable_params"], "file (bytes)": r["file_bytes"],
                "train peak memory (MiB)": r["peak_bytes"] / MIB, "model weights (MiB)": r["model_bytes"] / MIB,
                "train step (GFLOP)": r["train_step_flops"] / 1e9, "gen step (GFLOP)": r["gen_step_flops"] / 1e9,
                "gpu": str(e.gpu), "math": math, "efficiency": float(e.efficiency),
                "est. s/step": step_s, f"est. train time, {int(cfg.train.steps)} steps (s)": step_s * int(cfg.train.steps),
                "fits in GPU memory": r["peak_bytes"] / 2**30 <= GPUS[str(e.gpu)]["memory_gib"],
                "smallest card it fits": smallest_card(r["peak_bytes"]),
            })
    bar.close()
    return pd.DataFrame(rows)


def gen_samples(cfg: DictConfig) -> str:
    """What one counted denoising step computes: classifier-free guidance doubles the batch, except on
    FLUX.1-dev, whose guidance is an input of one pass (guidance distillation)."""
    n = int(cfg.estimate.gen_batch)
    if _pipeline_kind(arch_folder(cfg.model)) == "FluxPipeline":
        return f"{n} sample{'s' if n > 1 else ''}, guidance distilled into one pass"
    return f"{2 * n} samples with guidance"


def render(cfg: DictConfig, table: pd.DataFrame, note: str = "") -> str:
    from bench.plots import human_bytes

    e = cfg.estimate
    shown = table.copy()
    shown["file"] = shown["file (bytes)"].map(human_bytes)
    shown["trainable params"] = shown["trainable params"].map(lambda n: f"{n:,}")
    steps_col = next(c for c in shown.columns if c.startswith("est. train time"))
    shown["train peak memory"] = shown["train peak memory (MiB)"].map(lambda m: f"{m / 1024:.3g} GiB" if m >= 1024 else f"{m:.3g} MiB")
    shown["variant"] = [f"**{v}** (train.*)" if c else v for v, c in zip(shown["variant"], shown["as configured"])]
    cols = ["method", "variant", "trainable params", "file", "train peak memory", "train step (GFLOP)", "gen step (GFLOP)", "est. s/step", steps_col,
            "fits in GPU memory", "smallest card it fits"]
    where = "on the GPU (the model's tensors)" if e.device == "cuda" else "of every tensor, host included (as a CPU run counts)"
    head = (f"# Estimated cost: {cfg.model.name} at {int(cfg.model.resolution)} px, batch {int(cfg.train.batch_size)}\n\n"
            f"From the architecture configs alone (`python run.py mode=estimate model={cfg.model.name}`): each method's own training code run "
            f"on fake tensors. {note}Memory: peak of live tensor bytes {where} during the first two training steps, model weights included. "
            "Variant: `fp32` trains and keeps the model in fp32 with AdamW; `fp16`/`bf16`: mixed precision (the frozen model in that dtype, "
            "trained weights in fp32, the forward under autocast as CUDA casts it), `ckpt`: gradient checkpointing, `adamw8bit`: bitsandbytes' "
            "8-bit AdamW (the `train.*` options of the same names); in bold, the variant this config's `train.*` trains. "
            f"FLOPs: one training step (forward + backward; recomputation included with `ckpt`) and one denoising step ({gen_samples(cfg)}). "
            f"Time: training FLOPs / ({e.gpu} peak at the variant's math, fp32 as `{e.precision}`, x efficiency {float(e.efficiency):g}), a rough figure. "
            f"File: the size `save` writes, exact (DreamBooth's in the model's dtype).\n\n")
    return head + shown[cols].to_markdown(index=False, floatfmt=".4g") + "\n"


def figure(table: pd.DataFrame, out: Path, name: str, title: str, gpu_gib: float | None = None) -> Path:
    """File size (log scale: bytes to gigabytes), training memory (with the GPU's memory as a line) and
    estimated training time per method, as out/name.{png,svg}."""
    from bench.plots import colours, human_bytes, method_rank, plt, save_figure

    steps_col = next(c for c in table.columns if c.startswith("est. train time"))
    table = table.reset_index(drop=True)
    labels = [f"{m} · {v}" for m, v in zip(table.method, table.variant)] if "variant" in table else list(table.method)
    gib = table["train peak memory (MiB)"] / 1024
    panels = [(table["file (bytes)"], "file size", True, [human_bytes(v) for v in table["file (bytes)"]]),
              (gib, "training memory (GiB)", False, [f"{v:.3g} GiB" for v in gib]),
              (table[steps_col], steps_col.replace("est. ", "estimated "), False, [f"{v:.3g} s" for v in table[steps_col]])]
    fig, axes = plt.subplots(1, 3, figsize=(13, 1.2 + 0.32 * len(table)))
    colour = colours(sorted(set(table.method), key=method_rank))  # each method in the report's colour (a row per variant)
    for ax, (values, label, log, texts) in zip(axes, panels):
        ax.barh(range(len(table)), values, color=[colour[m] for m in table.method])
        ax.set_yticks(range(len(table)), labels, fontsize=8)
        if log:
            ax.set_xscale("log")
            ax.set_xticks([1e3, 1e6, 1e9])
            ax.set_xticklabels(["1 KB", "1 MB", "1 GB"])
            # Limits of its own: autoscaling a log axis around a single bar (one method, one variant) has no span.
            ax.set_xlim(min(min(values) / 10, 1e2), max(max(values) * 100, 1e10))
        ax.set_xlabel(label)
        for y, (v, text) in enumerate(zip(values, texts)):
            if v == v:  # no text for a missing (NaN) time
                ax.text(v, y, f" {text}", va="center", fontsize=8)
        if not log:
            ax.margins(x=0.3)
        ax.invert_yaxis()
    if gpu_gib:
        axes[1].axvline(gpu_gib, color="grey", linestyle="--", linewidth=1)
        axes[1].text(gpu_gib, len(table) - 0.45, f" GPU {gpu_gib:g} GiB", color="grey", fontsize=8, va="bottom")
    for ax in axes[1:]:
        ax.set_yticklabels([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out, name)


EXPERIMENTS = Path(__file__).resolve().parents[1] / "conf" / "experiment"


def model_experiment(name: str) -> Path | None:
    """The shipped experiment that trains model `name` (conf/experiment/*.yaml with `override /model: name`)."""
    for f in sorted(EXPERIMENTS.glob("*.yaml")):
        if f"override /model: {name}\n" in f.read_text():
            return f
    return None


def with_model_training_defaults(cfg: DictConfig, told: set[str]) -> tuple[DictConfig, str]:
    """The config an estimate of a model from disk is made with, and a sentence saying so: the model's own
    training set-up, batch 1 at its native resolution (the diffusers examples' default) for the steps of the
    shipped experiment that trains it, unless the command line sets `train.batch_size` / `train.steps` or
    picks an experiment (`told`: the keys it set). The embedded micro model's own set-up is `train.*`."""
    if cfg.model.get("embedded") or any(k.lstrip("+~").startswith("experiment") for k in told):
        return cfg, ""
    cfg = copy.deepcopy(cfg)
    said = []
    if "train.batch_size" not in told:
        cfg.train.batch_size = 1
        said.append("batch 1 (the model's own training default; `train.batch_size=N` for another)")
    experiment = model_experiment(str(cfg.model.name))
    if "train.steps" not in told and experiment is not None:
        from omegaconf import OmegaConf

        steps = OmegaConf.load(experiment).get("train", {}).get("steps")
        if steps:
            cfg.train.steps = int(steps)
            said.append(f"{int(steps)} steps (the `{experiment.stem}` experiment's; `train.steps=N` for another)")
    return cfg, ("Training set-up: " + ", ".join(said) + ". ") if said else ""


def run_estimate(cfg: DictConfig, told: set[str] = frozenset()) -> int:
    from bench.io import atomic_path, atomic_write_text

    cfg, note = with_model_training_defaults(cfg, set(told))
    table = estimate(cfg)
    text = render(cfg, table, note)
    print(text)
    folder = Path(cfg.results_dir) / "estimate"
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"estimate_{cfg.model.name}"
    atomic_write_text(stem.with_suffix(".md"), text)
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)
    figure(table, folder, stem.name, f"{cfg.model.name}, {int(cfg.model.resolution)} px, batch {int(cfg.train.batch_size)}: file, training memory, "
           f"time on {cfg.estimate.gpu} (fp32 math {cfg.estimate.precision}, mixed at its dtype; efficiency {float(cfg.estimate.efficiency):g})",
           gpu_gib=GPUS[str(cfg.estimate.gpu)]["memory_gib"] if cfg.estimate.device == "cuda" else None)
    print(f"adapterbench: estimate written to {stem}.{{md,csv,png,svg}}")
    return 0


def training_floor(cfg: DictConfig, methods: dict, concept, device: torch.device) -> dict[str, tuple[int, int]]:
    """Per method: (trainable parameters, the bytes its training needs at the least) on `cfg.model`, from
    the architecture alone: each method's own `prepare` on fake tensors (about a second a model, no
    weights read). The floor is the model's weights as training holds them (DreamBooth's upcast, peft's
    layers included), the trained parameters' own weights where they are new, their fp32 gradients and
    the optimizer's moments; activations come on top, so a training above the floor surely cannot fit.
    Empty when the model's configs are not at hand (a single-file checkpoint of an unshipped architecture)."""
    import warnings

    from torch._subclasses.fake_tensor import FakeTensorMode

    from bench.models import quiet_libraries, resolve_dtype
    from methods import qualified
    from methods.conditioning import text_encoders
    from methods.errors import MethodConfigError
    from bench.family import denoiser
    from methods.settings import TrainSettings

    try:
        folder = arch_folder(cfg.model)
    except EstimateConfigError:
        return {}
    quiet_libraries()
    state_bytes = 2 if TrainSettings.from_config(cfg).optimizer == "adamw8bit" else 8  # two moments, 8-bit or fp32
    out = {}
    # Fake tensors cannot be compared, copied into or initialised from data; the warnings those no-ops give
    # (e.g. DreamBooth's restore loading a state dict into "meta") are about values, which the floor never reads.
    with warnings.catch_warnings(), FakeTensorMode(allow_non_fake_inputs=True), _fake_modules():
        warnings.simplefilter("ignore")
        pipe = fake_pipeline(folder, resolve_dtype(str(cfg.model.get("dtype") or "auto"), device), int(cfg.model.resolution))
        modules = (denoiser(pipe), pipe.vae, *text_encoders(pipe))
        for name, method in methods.items():
            try:
                with torch.device("meta"):
                    params = method.prepare(pipe, concept)
            except MethodConfigError as e:  # e.g. a LoRA rank above its layers' sides: refused here, at planning
                raise qualified(e, name) from None
            try:
                storages = module_storages(*modules)
                held = {s._cdata for s in storages}
                new = sum(p.numel() * p.element_size() for p in params if p.untyped_storage()._cdata not in held)
                trained = sum(p.numel() * (4 + state_bytes) for p in params)
                out[name] = (sum(p.numel() for p in params), sum(s.nbytes() for s in storages) + new + trained)
            finally:
                with torch.device("meta"):
                    method.remove(pipe)
    return out


def check_fits(cfg: DictConfig, methods: dict, concept, workers: int) -> None:
    """Refuse, before any heavy work, a configuration whose training cannot fit this machine's memory
    (e.g. `method.hypernetwork.layer_structure=[1,1000,1]`), naming the key that sets its size."""
    from bench.memory import available_bytes
    from bench.models import resolve_device
    from methods import qualified
    from methods.errors import MethodConfigError

    device = resolve_device(str(cfg.device))
    free = available_bytes(device)
    if free is None:
        return
    floors = training_floor(cfg, methods, concept, device)
    gib = 2**30
    for name, (n, need) in floors.items():
        if need > free:
            keys = type(methods[name]).size_keys
            cost = (f"makes {n:,} trainable parameters; training on {device} needs at least {need / gib:.1f} GiB (the model's weights, "
                    f"the trained parameters, their gradients and optimizer moments, before activations) and {free / gib:.1f} GiB are free")
            if keys:
                raise qualified(MethodConfigError(f"method.{keys[0]}: {cfg.method[name].get(keys[0])!r} {cost}; make it smaller "
                                                  f"({', '.join(f'method.{name}.{k}' for k in keys)})"), name)
            raise MethodConfigError(f"method.{name}: fine-tuning this model {cost}; train.optimizer=adamw8bit shrinks the moments, "
                                    "otherwise it needs a machine with more memory")
    if device.type == "cpu" and workers > 1 and floors:
        name, (n, need) = max(floors.items(), key=lambda kv: kv[1][1])
        if need * workers > free:
            raise MethodConfigError(f"workers: {workers} workers each training at least {need / gib:.1f} GiB ({name}) need {need * workers / gib:.1f} GiB "
                                    f"and {free / gib:.1f} GiB are free; set workers={max(1, int(free // need))}")
