"""The Method interface and the one training loop every method shares.

A method decides *what* trains (`prepare`) and how its learned change is packed (`finish`), applied at a
strength (`apply`/`remove`) and stored (`save`/`load`). The loop — latents, noise, timesteps, targets,
loss, optimizer, divergence check — is the same code for all of them, so that only the method differs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bench.data import ConceptData
from bench.stages import digest, model_identity

log = logging.getLogger(__name__)


class MethodConfigError(ValueError):
    """A nonsense hyper-parameter; the message names the config key."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the method is stopped and recorded as failed."""


@dataclass
class Artifact:
    """What a method learned: tensors plus JSON-able facts needed to apply them."""

    method: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    artifact: Artifact
    losses: list[float]
    trainable_params: int
    steps: int


@dataclass
class TrainSettings:
    """The identical conditions: every method reads these from the same `train` config."""

    steps: int = 200
    batch_size: int = 4
    seed: int = 0
    progress: bool = True
    cache_dir: Path | None = None  # where generated inputs (DreamBooth's class images) are kept
    model_key: str = ""  # identifies the base model by its config and weights (not its path): keys those caches
    on_step: Callable[[int], None] | None = None  # called after each optimizer step (the memory probe)
    # What a GPU needs at SD scale; the defaults are plain fp32 training.
    precision: str = "fp32"  # fp32 | bf16 | fp16: the forward's autocast dtype; trained weights stay fp32
    gradient_checkpointing: bool = False  # recompute activations in backward instead of keeping them
    optimizer: str = "adamw"  # adamw | adamw8bit
    attention: str = "sdpa"  # sdpa | eager | xformers
    snr_gamma: float | None = None  # Min-SNR-gamma loss weighting; None: the plain MSE
    checkpoints: tuple[int, ...] = ()  # steps after which the artifact so far is also saved (learning curves)

    def __post_init__(self) -> None:
        check_positive("train.steps", self.steps)
        check_positive("train.batch_size", self.batch_size)
        for key, value, allowed in (("precision", self.precision, PRECISIONS), ("optimizer", self.optimizer, OPTIMIZERS),
                                    ("attention", self.attention, ATTENTION)):
            if value not in allowed:
                raise MethodConfigError(f"train.{key}: {value!r} is not one of {', '.join(allowed)}")
        if not isinstance(self.gradient_checkpointing, bool):
            raise MethodConfigError(f"train.gradient_checkpointing: true or false, got {self.gradient_checkpointing!r}")
        if self.snr_gamma is not None:
            if isinstance(self.snr_gamma, bool) or not isinstance(self.snr_gamma, (int, float)) or not 0 < self.snr_gamma < math.inf:
                raise MethodConfigError(f"train.snr_gamma: a positive number (5 in the Min-SNR paper) or null, got {self.snr_gamma!r}")

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.precision]

    def check_packages(self) -> None:
        """Before any real training: the optional packages the chosen options need are installed."""
        for key, value, package, hint in (("optimizer", self.optimizer, "bitsandbytes", "pip install -e '.[bnb]'"),
                                          ("attention", self.attention, "xformers", "a CUDA build of xformers matching torch")):
            if value == OPTIONAL_PACKAGE[key] and importlib.util.find_spec(package) is None:
                raise MethodConfigError(f"train.{key}: {value} needs the {package} package, which is not installed ({hint})")

    @classmethod
    def from_config(cls, cfg, seed: int = 0) -> "TrainSettings":
        """The settings a run's config gives every method for training seed `seed` (checked on construction)."""
        for key in ("steps", "batch_size"):
            value = cfg.train[key]
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_COUNT:
                raise MethodConfigError(f"train.{key}: must be a whole number from 1 to {MAX_COUNT:,}, got {value!r}")
        settings = cls(
            steps=int(cfg.train.steps),
            batch_size=int(cfg.train.batch_size),
            seed=int(seed),
            progress=bool(cfg.get("progress", True)),
            cache_dir=Path(cfg.results_dir) / "cache",
            model_key=model_cache_key(cfg.model),
            precision=str(cfg.train.get("precision", "fp32")),
            gradient_checkpointing=cfg.train.get("gradient_checkpointing", False),
            optimizer=str(cfg.train.get("optimizer", "adamw")),
            attention=str(cfg.train.get("attention", "sdpa")),
            snr_gamma=cfg.train.get("snr_gamma"),
            checkpoints=checkpoint_steps(cfg.train.get("checkpoints") or [], int(cfg.train.steps)),
        )
        settings.check_packages()
        return settings


def model_cache_key(model_cfg) -> str:
    """The key of caches generated by the base model (DreamBooth's class images): its config and weights
    (`stages.model_identity`). A model not on this machine (planning, mode=estimate of an SD model
    described only by its architecture) generates nothing, so it has no key."""
    from bench.models import ModelConfigError

    try:
        return digest({"model": model_identity(model_cfg)})
    except ModelConfigError:
        return ""


MAX_COUNT = 10_000_000  # steps, batch sizes: anything larger is a typo, not an experiment
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
OPTIMIZERS = ("adamw", "adamw8bit")
ATTENTION = ("sdpa", "eager", "xformers")
OPTIONAL_PACKAGE = {"optimizer": "adamw8bit", "attention": "xformers"}  # the option values that need a package


def checkpoint_steps(fractions, steps: int) -> tuple[int, ...]:
    """`train.checkpoints` (fractions of the budget) as the distinct steps before the last at which the
    artifact is saved: 1/8 of 300 steps is step 38 (rounded), and a fraction that rounds to the last step
    adds nothing (the final artifact is always saved)."""
    out = set()
    for i, f in enumerate(fractions):
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
            raise MethodConfigError(f"train.checkpoints[{i}]: a fraction of train.steps between 0 and 1 (e.g. 0.25), got {f!r}")
        step = max(1, round(f * steps))
        if step < steps:
            out.add(step)
    return tuple(sorted(out))


def check_positive(key: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise MethodConfigError(f"{key}: must be a positive number, got {value!r}")


@dataclass
class TrainingSet:
    """Cached latents and token ids of one image set (instance or class images)."""

    latents: torch.Tensor  # [N, C, h, w], already scaled by the VAE's scaling factor
    distinct_ids: torch.Tensor  # [U, E, L]: each distinct caption's token ids once, a row per text encoder (SDXL has two)
    row_of: torch.Tensor  # [N]: the row of distinct_ids that is each image's caption
    hidden_states: torch.Tensor | None = None  # [N, L, D] when the text side is frozen
    pooled: torch.Tensor | None = None  # [N, P]: SDXL's pooled text embedding (its UNet's added condition)

    @property
    def input_ids(self) -> torch.Tensor:
        """[N, E, L]: each image's caption's token ids."""
        return self.distinct_ids[self.row_of]


class Method(ABC):
    """One personalization method. `weight` means 'how much of the learned change is used':
    0 is the base model, 1 the trained result; negative and >1 are legal."""

    name: ClassVar[str]
    trains_text: ClassVar[bool] = False  # the text encoder's output changes during training
    weight_decay: ClassVar[float] = 1e-2
    # Several weights in one denoising batch (apply_many / prompt_at / set_sample_weights).
    batched_weights: ClassVar[bool] = False
    # One line for the report: what adapter weight w does in this method.
    weight_meaning: ClassVar[str] = ""
    # The hyper-parameters that set how many parameters it trains, first the one to lower (a refusal names it).
    size_keys: ClassVar[tuple[str, ...]] = ()
    # The AUTOMATIC1111 prompt tags whose strength scales this method's weight (<lora:NAME:W> ...), as the
    # web UI applies them: a tag of another kind leaves the method alone.
    a1111_tags: ClassVar[tuple[str, ...]] = ()
    display_order: ClassVar[int] = 99  # its place in tables and figures (methods.display_order)

    def __init__(self, lr: float) -> None:
        check_positive("method.lr", lr)
        self.lr = float(lr)

    @classmethod
    def weight_meaning_for(cls, mcfg: dict) -> str:
        """The report's line on what weight w does, for one configured method (`mcfg`: its config)."""
        return cls.weight_meaning

    # ---- what a method defines

    @abstractmethod
    def prepare(self, pipe, data: ConceptData) -> list[torch.nn.Parameter]:
        """Install trainable parts into `pipe` and return the parameters to optimise."""

    @abstractmethod
    def finish(self, pipe, data: ConceptData) -> Artifact:
        """Pack what was learned into an Artifact and return `pipe` to the base model."""

    def snapshot(self, pipe, data: ConceptData) -> Artifact:
        """What training has learned so far, packed as `finish` packs it, with training left untouched
        (a checkpoint part-way through the budget: `train.checkpoints`)."""
        raise MethodConfigError(f"train.checkpoints: method {self.name} cannot save an artifact part-way through training; set train.checkpoints=[]")

    @abstractmethod
    def apply(self, pipe, artifact: Artifact, weight: float) -> None:
        """Use the learned change at strength `weight` (0 reproduces the base model)."""

    @abstractmethod
    def remove(self, pipe) -> None:
        """Undo `apply`: afterwards `pipe` is the base model again."""

    @abstractmethod
    def save(self, artifact: Artifact, out_dir: Path) -> Path:
        """Write the artifact; returns the main file, whose size is reported."""

    @abstractmethod
    def load(self, path: Path) -> Artifact:
        """Read an artifact written by `save`."""

    def file_content(self, artifact: Artifact, pipe=None) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
        """The tensors and metadata of the file `save` reports, exactly as it writes them: `mode=estimate`
        sizes the file from these without writing it. `pipe`: the model the artifact belongs to."""
        return tensor_file_content(self.name, artifact.tensors, artifact.meta)

    def prompt(self, text: str, data: ConceptData) -> str:
        """The prompt as this method's artifact expects it (Textual Inversion swaps in its placeholder)."""
        return text

    def apply_many(self, pipe, artifact: Artifact, weights: list[float]) -> None:
        """Make every weight in `weights` available at once (methods with `batched_weights`)."""
        raise NotImplementedError(f"{self.name} cannot put several weights in one batch")

    def prompt_at(self, text: str, data: ConceptData, weight: float) -> str:
        """The prompt for one sample at `weight` while `apply_many` is in force."""
        return self.prompt(text, data)

    def set_sample_weights(self, pipe, weights: list[float]) -> None:
        """The weight of each sample of the next batch while `apply_many` is in force."""

    def base_prompt(self, text: str, data: ConceptData) -> str:
        """The base-model prompt whose image weight 0 must reproduce exactly."""
        return text

    def extra_images(self, pipe, data: ConceptData, settings: TrainSettings) -> tuple[TrainingSet, float] | None:
        """An optional second image set and its loss weight (DreamBooth's prior preservation)."""
        return None

    def generate_inputs(self, pipe, data: ConceptData, settings: TrainSettings) -> list[Path]:
        """Make and cache whatever the base model must generate before training (DreamBooth's class
        images), so that this work is timed apart from training and shared by every training seed;
        returns the files or folders made (their checksums are kept with the stage)."""
        return []

    # ---- the shared loop

    def train(self, pipe, data: ConceptData, settings: TrainSettings, loop=None) -> TrainResult:
        """Train on `data` under `settings`; leaves `pipe` as the base model. `loop`: replaces the optimizer
        loop (`mode=estimate` runs two `TrainStep`s on fake tensors through this same method)."""
        for module in (pipe.unet, pipe.vae, *text_encoders(pipe)):
            module.requires_grad_(False)
        prior = self.extra_images(pipe, data, settings)  # generated by the base model, before any change
        # Adapters draw their initial weights (LoRA's A matrices, hypernetwork MLPs) from torch's global
        # generator: seed it, or two runs with the same train.seed start from different adapters.
        torch.manual_seed(settings.seed)
        params = self.prepare(pipe, data)
        try:  # from here on the pipe holds the method's changes: never leave them behind on a failure
            for p in params:
                # Master weights in fp32 whatever the model's dtype: half-precision updates lose small steps
                # (lr x update below the weight's resolution); autocast gives the forward its low precision.
                if p.dtype in (torch.float16, torch.bfloat16):
                    p.data = p.data.float()
            instance = encode_set(pipe, data.images, [self.prompt(c, data) for c in data.captions])
            if not self.trains_text:
                for s in [instance] + ([prior[0]] if prior else []):
                    s.hidden_states, s.pooled = encode_text(pipe, s.input_ids)
            n_params = sum(p.numel() for p in params)
            with training_options(pipe, self, settings):
                losses = (loop or self._loop)(pipe, params, instance, prior, settings)
        except BaseException:
            self.finish(pipe, data)  # a worker trains its next run on the same pipe
            raise
        return TrainResult(self.finish(pipe, data), losses, n_params, settings.steps)

    def _loop(self, pipe, params, instance: TrainingSet, prior, settings: TrainSettings) -> list[float]:
        step_fn = TrainStep(self, pipe, params, instance, prior, settings)
        losses = []
        bar = tqdm(range(settings.steps), desc=f"train {self.name}", disable=not settings.progress, leave=False)
        pipe.unet.train()
        try:
            for step in bar:
                total = step_fn.loss()
                if not torch.isfinite(total):
                    raise TrainingDiverged(f"method {self.name}: loss became {total.item()} at step {step}; lower method.{self.name}.lr (now {self.lr})")
                step_fn.update(total)
                losses.append(total.item())
                if settings.on_step is not None:
                    settings.on_step(step)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
        finally:
            pipe.unet.eval()
        return losses

    def encode(self, pipe, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text hidden states (and SDXL's pooled embedding) with gradients, for methods whose text side trains."""
        return text_condition(pipe, input_ids)


class TrainStep:
    """One optimizer step of the shared loop, in two halves: `loss()` (a batch from each image set, one
    forward) and `update(loss)` (backward, optimizer step). The training loop checks the loss in between;
    `mode=estimate` runs the same two halves on fake tensors to count FLOPs and memory."""

    def __init__(self, method: "Method", pipe, params, instance: TrainingSet, prior, settings: TrainSettings) -> None:
        from diffusers import DDPMScheduler

        self.method, self.pipe, self.batch_size = method, pipe, settings.batch_size
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.v_prediction = self.scheduler.config.prediction_type == "v_prediction"
        self.opt = make_optimizer(params, method.lr, method.weight_decay, settings.optimizer)
        self.gen = torch.Generator().manual_seed(settings.seed)
        self.device, self.dtype = pipe.unet.device, pipe.unet.dtype
        self.sets = [(instance, 1.0)] + ([prior] if prior else [])
        self.snr_gamma = settings.snr_gamma
        self.low_dtype = settings.autocast_dtype
        # fp16's range is narrow: small gradients underflow to 0 unless the loss is scaled up first (and
        # a step is skipped when the scaled gradients overflow). bf16 has fp32's range and needs none.
        real = self.device.type in ("cpu", "cuda")  # mode=estimate's fake "meta" model: the scaler's two scalars are not worth counting
        self.scaler = torch.amp.GradScaler(self.device.type) if real and self.low_dtype is torch.float16 else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward's precision: autocast to `train.precision` (mode=estimate replaces this on "meta")."""
        if self.low_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.low_dtype)

    def loss(self) -> torch.Tensor:
        # Each image set draws its own batch; all sets then go through the UNet as one batch (one forward
        # and backward, as the diffusers DreamBooth example does), each set keeping its loss.
        scheduler, device, dtype = self.scheduler, self.device, self.dtype
        xts, ts, targets, states, pooled = [], [], [], [], []
        for s, _ in self.sets:
            idx = torch.randint(0, len(s.latents), (self.batch_size,), generator=self.gen)
            x0 = s.latents[idx].to(device, dtype)
            noise = torch.randn(x0.shape, generator=self.gen).to(device, dtype)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=self.gen).to(device)
            xts.append(scheduler.add_noise(x0, noise, t))
            targets.append(scheduler.get_velocity(x0, noise, t) if self.v_prediction else noise)
            ts.append(t)
            if s.hidden_states is not None:
                states.append(s.hidden_states[idx].to(device, dtype))
                pooled.append(s.pooled[idx].to(device, dtype) if s.pooled is not None else None)
            else:
                with self.autocast():
                    hidden, pool = batch_text(self.method, self.pipe, s, idx, device)
                states.append(hidden)
                pooled.append(pool)
        x = torch.cat(xts)
        with self.autocast():
            pred = self.pipe.unet(x, torch.cat(ts), encoder_hidden_states=torch.cat(states),
                                  added_cond_kwargs=added_conditions(self.pipe, pooled, x)).sample
        return sum(w * self.set_loss(p, target, t) for (_, w), p, target, t in zip(self.sets, pred.split(self.batch_size), targets, ts))

    def set_loss(self, pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One image set's loss: the MSE on the model's target, each sample weighted by `min_snr_weights`
        when `train.snr_gamma` is set."""
        if self.snr_gamma is None:
            return F.mse_loss(pred.float(), target.float())
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)
        weights = min_snr_weights(self.scheduler.alphas_cumprod.to(t.device), t, self.snr_gamma, self.v_prediction)
        return (weights * per_sample).mean()

    def update(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.opt.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()


def min_snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float, v_prediction: bool) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023) for timesteps `t`, with SNR = alpha_bar / (1 - alpha_bar):
    min(SNR, gamma) / SNR on an epsilon target and min(SNR, gamma) / (SNR + 1) on a v target, both the
    weight that makes the loss min(SNR, gamma) x the x0 error. The plain MSE weights the x0 error by SNR
    (epsilon) or SNR + 1 (v): the nearly clean timesteps, where the image is already decided, rule the
    gradient. At SNR 0 (a zero-terminal-SNR schedule's last step) the epsilon weight is its limit, 1."""
    alpha_bar = alphas_cumprod.float()[t]
    snr = alpha_bar / (1 - alpha_bar)
    clipped = torch.minimum(snr, torch.full_like(snr, float(gamma)))
    if v_prediction:
        return clipped / (snr + 1)
    return torch.where(snr > 0, clipped / snr.clamp(min=torch.finfo(torch.float32).tiny), torch.ones_like(snr))


@contextlib.contextmanager
def training_options(pipe, method: "Method", settings: TrainSettings) -> Iterator[None]:
    """The attention implementation and gradient checkpointing for the length of one training; the
    pipe's own processors and mode come back afterwards (sweeps generate with the model as loaded)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, XFormersAttnProcessor

    unet = pipe.unet
    processors = unet.attn_processors
    texts = text_encoders(pipe) if method.trains_text else []
    try:
        unet.set_attn_processor({"sdpa": AttnProcessor2_0, "eager": AttnProcessor, "xformers": XFormersAttnProcessor}[settings.attention]())
        if settings.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            for text in texts:
                text.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        yield
    finally:
        if settings.gradient_checkpointing:
            unet.disable_gradient_checkpointing()
            for text in texts:
                text.activation_checkpointing_disable()
        unet.set_attn_processor(processors)


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float, kind: str = "adamw") -> torch.optim.Optimizer:
    """AdamW, fused where torch has a fused kernel for these parameters (CPU and CUDA, float types): on
    DreamBooth's full UNet the per-tensor loop costs several times the fused step. `adamw8bit`:
    bitsandbytes' AdamW with both moments stored in 8 bits (blockwise quantised), a quarter of AdamW's
    state (tensors under 4,096 values keep 32-bit moments: bitsandbytes' own rule)."""
    if kind == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise MethodConfigError(f"train.optimizer: adamw8bit needs the bitsandbytes package ({e}); pip install -e '.[bnb]'") from e
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    if all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params):
        try:
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, ValueError):
            pass
    # No fused kernel (e.g. the fake "meta" tensors of mode=estimate): the per-tensor loop, which like the
    # fused kernel allocates nothing beyond the optimizer state but one tensor's temporaries at a time.
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=False)


def per_sample_scale(weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample weights [n] shaped to scale a batch x [B, ...] sample by sample. Classifier-free
    guidance runs [uncond; cond] as one batch, so n weights repeat B // n times."""
    if weights.numel() != x.shape[0] and x.shape[0] % weights.numel() == 0:
        weights = weights.repeat(x.shape[0] // weights.numel())
    return weights.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))


def tensor_file_content(method: str, tensors: dict[str, torch.Tensor], meta: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """What `save_tensors` writes: the tensors, and the artifact's facts as JSON metadata under 'adapterbench'."""
    import json

    return dict(tensors), {"adapterbench": json.dumps({"method": method, **meta})}


def save_tensors(path: Path, method: str, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """An artifact as safetensors (atomically), its facts as JSON metadata under 'adapterbench'."""
    from safetensors.torch import save_file

    from bench.io import atomic_path

    tensors, metadata = tensor_file_content(method, tensors, meta)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return path


def save_a1111_pt(path: Path, body: dict, name: str, step: int = 0) -> Path:
    """An AUTOMATIC1111 `.pt` (embedding or hypernetwork): `body` plus the fields both carry."""
    from bench.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save({**body, "name": name, "step": step, "sd_checkpoint": None, "sd_checkpoint_name": None}, tmp)
    return path


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """What `save_tensors` wrote: (tensors, meta)."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("adapterbench", "{}"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.pop("method", None)
    return tensors, meta


@torch.no_grad()
def encode_images(pipe, images) -> torch.Tensor:
    """VAE latents (the posterior mean, scaled), computed once per image set: the VAE is frozen."""
    import numpy as np

    x = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32)).permute(2, 0, 1) for im in images])
    vae = pipe.vae
    # A half-precision VAE whose config says `force_upcast` (diffusers' default; SDXL's overflows in fp16, and its
    # pipeline decodes in fp32 for that reason) encodes in fp32: latents are computed once, precision is cheap here.
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        cast_parameters(vae, torch.float32)
    try:
        x = (x / 127.5 - 1.0).to(vae.device, vae.dtype)
        # As many images per VAE call as 32 at 64 px: at 512 px the encoder's activations for a batch of 8
        # would be the largest thing a LoRA training ever holds (several GiB), so SD-scale images go one at a time.
        n = max(1, 32 * 64 * 64 // (x.shape[-2] * x.shape[-1]))
        chunks = [vae.encode(x[i : i + n]).latent_dist.mean for i in range(0, len(x), n)]
    finally:
        if upcast:
            cast_parameters(vae, torch.float16)
    return torch.cat(chunks).float().cpu() * vae.config.scaling_factor


TEXT_ENCODERS = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))  # pipe attributes: SDXL has the second pair


def named_text_encoders(pipe) -> dict[str, torch.nn.Module]:
    """The pipe's text encoders by attribute name: one for SD 1.x/2.x, two for SDXL (CLIP ViT-L and OpenCLIP ViT-bigG)."""
    return {name: e for name, _ in TEXT_ENCODERS if (e := getattr(pipe, name, None)) is not None}


def text_encoders(pipe) -> list[torch.nn.Module]:
    return list(named_text_encoders(pipe).values())


def tokenizers(pipe) -> list:
    """The tokenizer of each text encoder, in the same order."""
    return [getattr(pipe, tok) for name, tok in TEXT_ENCODERS if getattr(pipe, name, None) is not None]


def tokenize(pipe, prompts: list[str]) -> torch.Tensor:
    """Token ids [N, E, L], a row per text encoder, padded to the model's length; multi-vector placeholders
    expanded by each tokenizer as the pipeline does."""
    rows = []
    for tok in tokenizers(pipe):
        converted = [pipe.maybe_convert_prompt(p, tok) for p in prompts]
        rows.append(tok(converted, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids)
    if len({r.shape[-1] for r in rows}) > 1:
        raise ValueError(f"the text encoders' tokenizers pad to different lengths {[r.shape[-1] for r in rows]}; SDXL's both pad to 77")
    return torch.stack(rows, dim=1)


def text_condition(pipe, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states [N, L, D], pooled [N, P] or None) of token ids [N, E, L], as the pipeline conditions
    its UNet: SD 1.x/2.x the encoder's last hidden states; SDXL each encoder's penultimate hidden states,
    concatenated, and the second encoder's projected pooled output."""
    encoders = text_encoders(pipe)
    if len(encoders) == 1:
        return encoders[0](input_ids[:, 0].to(encoders[0].device))[0], None
    hidden, pooled = [], None
    for k, encoder in enumerate(encoders):
        out = encoder(input_ids[:, k].to(encoder.device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds
            pooled = out[0]
    return torch.cat(hidden, dim=-1), pooled


@torch.no_grad()
def encode_text(pipe, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`text_condition` without gradients, kept in fp32 on the host (a frozen text side is encoded once)."""
    hidden, pooled = text_condition(pipe, input_ids)
    return hidden.float().cpu(), (pooled.float().cpu() if pooled is not None else None)


def added_conditions(pipe, pooled: list[torch.Tensor | None], x: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """SDXL's added UNet conditions for a batch of latents `x`: the pooled text embedding and the six size
    and crop numbers (original size, crop top-left, target size), here the training resolution uncropped,
    as the diffusers SDXL trainers pass them for square images. None for SD 1.x/2.x UNets."""
    if getattr(pipe.unet.config, "addition_embed_type", None) != "text_time":
        return None
    if any(p is None for p in pooled):
        raise ValueError("this UNet needs SDXL's pooled text embedding, which the text encoders did not give")
    side = x.shape[-1] * pipe.vae_scale_factor
    time_ids = torch.tensor([[side, side, 0, 0, side, side]], dtype=x.dtype).to(x.device).repeat(x.shape[0], 1)
    return {"text_embeds": torch.cat(pooled).to(x.dtype), "time_ids": time_ids}


def encode_set(pipe, images, prompts: list[str]) -> TrainingSet:
    """The images' latents and their captions' token ids (the text states, when frozen, are added by `train`)."""
    distinct = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
    for tok in tokenizers(pipe):
        for p in distinct:
            n = len(tok(pipe.maybe_convert_prompt(p, tok)).input_ids)
            if n > tok.model_max_length:
                from bench.data import ConceptDataError

                raise ConceptDataError(f"data: a caption is {n} tokens and the text encoder reads {tok.model_max_length}, so training would see it cut: "
                                       f"shorten it ({p[:80]!r}{'...' if len(p) > 80 else ''})")
    return TrainingSet(encode_images(pipe, images), tokenize(pipe, list(distinct)), torch.tensor([distinct[p] for p in prompts]))


def batch_text(method: Method, pipe, s: TrainingSet, idx: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The text condition of the images `idx` of `s` through `method.encode` (with gradients). Captions
    repeat (a concept with one instance prompt, the usual DreamBooth set-up, has one): when the set has fewer
    distinct captions than the batch has images, each is encoded once and indexed out to its images, which
    gives every image the states of its own caption and, through the index's backward (a sum over the
    repeats), the gradient of encoding every row. The choice depends on sizes only, not on which images
    were drawn, so it is the same at every step (and on mode=estimate's fake tensors)."""
    if len(s.distinct_ids) >= len(idx):
        return method.encode(pipe, s.input_ids[idx].to(device))
    hidden, pooled = method.encode(pipe, s.distinct_ids.to(device))
    take = s.row_of[idx].to(hidden.device)
    return hidden[take], (pooled[take] if pooled is not None else None)


def cast_parameters(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Floating parameters and buffers to `dtype` in place (the same Parameter objects, so an optimizer or
    hook holding them still does; `Module.to` may swap them for new ones, and cannot on fake tensors)."""
    for t in [*module.parameters(), *module.buffers()]:
        if t.is_floating_point() and t.dtype != dtype:
            t.data = t.data.to(dtype)
