"""The one training step every method shares: a batch from each image set, noise, timesteps, the model's
target, the (Min-SNR-weighted) loss, and the optimizer step; the attention and checkpointing options of
one training; the optimizer. `methods.base.Method.train` runs the loop around it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from methods.conditioning import TrainingSet, text_encoders
from methods.errors import MethodConfigError
from bench.family import denoiser, family, is_flow
from methods.settings import TrainSettings

if TYPE_CHECKING:  # the training step drives a Method; methods.base imports this module, not the reverse
    from methods.base import Method


class TrainStep:
    """One optimizer step of the shared loop, in two halves: `loss()` (a batch from each image set, one
    forward) and `update(loss)` (backward, optimizer step). The training loop checks the loss in between;
    `mode=estimate` runs the same two halves on fake tensors to count FLOPs and memory."""

    def __init__(self, method: "Method", pipe, params, instance: TrainingSet, prior, settings: TrainSettings) -> None:
        self.method, self.pipe, self.batch_size = method, pipe, settings.batch_size
        self.family = family(pipe)
        self.scheduler = self.family.training_scheduler(pipe)
        self.v_prediction = getattr(self.scheduler.config, "prediction_type", None) == "v_prediction"
        if settings.snr_gamma is not None and self.family.flow:
            raise MethodConfigError(f"train.snr_gamma: Min-SNR weighting is for DDPM objectives; {self.family.name} trains with rectified flow (set train.snr_gamma=null)")
        self.opt = make_optimizer(params, method.lr, method.weight_decay, settings.optimizer)
        self.gen = torch.Generator().manual_seed(settings.seed)
        self.device, self.dtype = denoiser(pipe).device, denoiser(pipe).dtype
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
            t = self.family.sample_timesteps(scheduler, len(idx), self.gen).to(device)
            xt, target = noised_and_target(scheduler, x0, noise, t)
            xts.append(xt)
            targets.append(target)
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
            pred = self.family.predict(self.pipe, x, torch.cat(ts), torch.cat(states), pooled)
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



def noised_and_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the noised latents at timesteps `t`, what the model is trained to predict from them) in the
    model's own objective, which its scheduler's `prediction_type` names: the noise (epsilon), the velocity
    (v) or the clean latents (sample); for a flow-matching scheduler (SD 3.5, FLUX) the velocity
    `noise - x0` from `(1 - sigma) x0 + sigma noise`, sigma = t / num_train_timesteps. Training and the
    validation loss share it."""
    if is_flow(scheduler):
        sigma = (t.float() / scheduler.config.num_train_timesteps).view(-1, *([1] * (x0.dim() - 1))).to(x0.device)
        return ((1 - sigma) * x0.float() + sigma * noise.float()).to(x0.dtype), noise - x0
    kind = scheduler.config.prediction_type
    targets = {"epsilon": lambda: noise, "v_prediction": lambda: scheduler.get_velocity(x0, noise, t), "sample": lambda: x0}
    if kind not in targets:
        raise ValueError(f"model: the scheduler's prediction_type {kind!r} is not one of {', '.join(targets)}")
    return scheduler.add_noise(x0, noise, t), targets[kind]()


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

    model = denoiser(pipe)
    # The UNets' processors are interchangeable; the DiT families' attention has processors of its own
    # (joint attention over text and image tokens) that already run on torch's SDPA.
    unet = family(pipe).name == "unet"
    if not unet and settings.attention != "sdpa":
        raise MethodConfigError(f"train.attention: {settings.attention} swaps UNet attention processors; {family(pipe).name} runs its own on SDPA (set train.attention=sdpa)")
    processors = model.attn_processors if unet else None
    texts = text_encoders(pipe) if method.trains_text else []
    try:
        if unet:
            model.set_attn_processor({"sdpa": AttnProcessor2_0, "eager": AttnProcessor, "xformers": XFormersAttnProcessor}[settings.attention]())
        if settings.gradient_checkpointing:
            model.enable_gradient_checkpointing()
            for text in texts:
                text.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        yield
    finally:
        if settings.gradient_checkpointing:
            model.disable_gradient_checkpointing()
            for text in texts:
                text.activation_checkpointing_disable()
        if unet:
            model.set_attn_processor(processors)



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
