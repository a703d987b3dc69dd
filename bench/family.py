"""What differs between the model families the harness trains, in one place: which module denoises, how
its latents are scaled, what the text side gives it, what it is trained to predict and at which timesteps.

- **UNet** (SD 1.x/2.x, SDXL, the micro model): `pipe.unet`, a DDPM objective (epsilon, v or sample, as
  the scheduler's `prediction_type` says), timesteps uniform over the training schedule.
- **SD 3.5** (`StableDiffusion3Pipeline`): an MMDiT `pipe.transformer`; CLIP-L and CLIP-G penultimate states
  (concatenated, zero-padded to T5's width) followed by T5's states, the two CLIPs' pooled embeddings
  concatenated; rectified flow with the timesteps of diffusers' SD3 DreamBooth example (logit-normal,
  mean 0, std 1, on the scheduler's shifted schedule).
- **FLUX.1** (`FluxPipeline`): `pipe.transformer` on 2x2-packed latents with positional ids; T5 states and
  CLIP-L's pooled output; the guidance embedding where the model has one (dev);
  rectified flow with uniform timesteps on the unshifted schedule (diffusers' FLUX DreamBooth example).
  The guidance embedding reads 1.0 in training, as the commands of diffusers' FLUX DreamBooth README train
  FLUX.1-dev (the script's own default is 3.5).

- **FLUX.2 [klein]** (`Flux2KleinPipeline`, the base 4B model of peft's image-generation benchmark):
  `pipe.transformer` on 2x2-patchified latents (32 -> 128 channels) normalised by the VAE's batch-norm
  statistics, one token per latent pixel with 4-D positional ids; the Qwen3 text encoder reads the prompt
  in its chat template and its hidden states after layers 9, 18 and 27 are stacked (the pipeline's
  defaults), no pooled embedding; rectified flow with uniform timesteps (diffusers' klein example);
  no guidance embedding on the base model (classifier-free guidance at sampling).

Flow families are trained to predict `noise - x0` from `(1 - sigma) x0 + sigma noise`, sigma = t / 1000
(the scheduler's own relation between its timesteps and sigmas). Each family conditions training exactly as
its pipeline conditions generation (same encoders, layers, lengths), so what is trained is what is swept.
"""

from __future__ import annotations

import torch


TEXT_ENCODERS = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"), ("text_encoder_3", "tokenizer_3"))  # pipe attributes


def named_text_encoders(pipe) -> dict[str, torch.nn.Module]:
    """The pipe's text encoders by attribute name: one for SD 1.x/2.x and FLUX.2 klein (Qwen3), two for SDXL
    (CLIP ViT-L and OpenCLIP ViT-bigG) and FLUX.1 (CLIP-L, T5), three for SD 3.5 (CLIP-L, CLIP-G, T5)."""
    return {name: e for name, _ in TEXT_ENCODERS if (e := getattr(pipe, name, None)) is not None}


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


def denoiser_name(pipe) -> str:
    """'transformer' for the DiT families, 'unet' for the UNet ones (the pipeline attribute and the
    component folder name alike)."""
    return "transformer" if getattr(pipe, "transformer", None) is not None else "unet"


def denoiser_label(pipe) -> str:
    """How messages name the denoiser: 'UNet' or 'transformer'."""
    return "UNet" if denoiser_name(pipe) == "unet" else "transformer"


def denoiser(pipe) -> torch.nn.Module:
    return getattr(pipe, denoiser_name(pipe))


def is_flow(scheduler) -> bool:
    """Whether a scheduler belongs to a flow-matching model (its timesteps are sigma x 1000)."""
    return "FlowMatch" in type(scheduler).__name__


class UNetFamily:
    """SD 1.x/2.x, SDXL and the micro model."""

    name = "unet"
    flow = False
    text_lengths: dict[str, int] = {}  # tokenizer attribute -> padded length, when not the tokenizer's own

    def training_scheduler(self, pipe):
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(pipe.scheduler.config)

    def sample_timesteps(self, scheduler, n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=gen)

    def predict(self, pipe, x: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor, pooled: list[torch.Tensor | None]) -> torch.Tensor:
        return pipe.unet(x, t, encoder_hidden_states=hidden, added_cond_kwargs=added_conditions(pipe, pooled, x)).sample

    def latent_shape(self, pipe) -> tuple[int, int, int]:
        """(channels, height, width) of one image's latents at the pipeline's default size."""
        unet = pipe.unet
        return unet.config.in_channels, unet.config.sample_size, unet.config.sample_size

    def pipeline_latents(self, pipe, x: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, h, w] in the layout the pipeline's `latents=` argument takes."""
        return x

    def image_size(self, pipe) -> int:
        """The side in pixels of the images the pipeline makes by default (and the harness trains at)."""
        return pipe.unet.config.sample_size * pipe.vae_scale_factor

    def vae_latents(self, pipe, mean: torch.Tensor) -> torch.Tensor:
        """The VAE posterior's mean as the denoiser reads it: shifted (SD 3.5, FLUX.1) and scaled."""
        shift = getattr(pipe.vae.config, "shift_factor", None) or 0.0
        return (mean - shift) * pipe.vae.config.scaling_factor

    def template(self, pipe, prompt: str) -> str:
        """The text the tokenizers read for a prompt (FLUX.2 klein: its chat template around it)."""
        return prompt


class SD3Family(UNetFamily):
    name = "sd3"
    flow = True
    timestep_sampling = "logit_normal"
    text_lengths = {"tokenizer_3": 256}  # the pipeline's default max_sequence_length for T5

    def training_scheduler(self, pipe):
        """A fresh copy at the training schedule (the pipe's own is set to the sampling steps by each sweep).
        Its constructor reads one of its sigmas' values, which mode=estimate's fake tensors cannot give:
        it is made from real tensors whatever mode is active (a few thousand floats)."""
        from diffusers import FlowMatchEulerDiscreteScheduler
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        with unset_fake_temporarily():
            return FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)

    def sample_timesteps(self, scheduler, n: int, gen: torch.Generator) -> torch.Tensor:
        """The training examples' rule: u in [0, 1) (uniform, or the sigmoid of a standard normal), then the
        training schedule's timestep at index floor(u x 1000)."""
        if self.timestep_sampling == "logit_normal":
            u = torch.sigmoid(torch.randn(n, generator=gen))
        else:
            u = torch.rand(n, generator=gen)
        indices = (u * scheduler.config.num_train_timesteps).long().clamp(max=len(scheduler.timesteps) - 1)
        return scheduler.timesteps[indices]

    def predict(self, pipe, x, t, hidden, pooled):
        return pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=hidden, pooled_projections=torch.cat(pooled)).sample

    def latent_shape(self, pipe):
        # `default_sample_size`: the pipeline's own default (the transformer's sample size); `load_pipeline`
        # sets it from model.resolution, as FLUX's transformer has no size of its own.
        return pipe.transformer.config.in_channels, pipe.default_sample_size, pipe.default_sample_size

    def image_size(self, pipe) -> int:
        return pipe.default_sample_size * pipe.vae_scale_factor


class FluxFamily(SD3Family):
    name = "flux1"
    timestep_sampling = "uniform"
    text_lengths = {"tokenizer_2": 512}  # FLUX.1-dev's max_sequence_length
    guidance = 1.0  # the guidance embedding's input in training (diffusers' FLUX DreamBooth README commands)

    def predict(self, pipe, x, t, hidden, pooled):
        from diffusers import FluxPipeline

        b, c, h, w = x.shape
        packed = FluxPipeline._pack_latents(x, b, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)
        txt_ids = torch.zeros(hidden.shape[1], 3, device=x.device, dtype=x.dtype)
        tr = pipe.transformer
        guidance = torch.full((b,), self.guidance, device=x.device, dtype=torch.float32) if tr.config.guidance_embeds else None
        out = tr(hidden_states=packed, timestep=t.to(x.dtype) / 1000, guidance=guidance, pooled_projections=torch.cat(pooled),
                 encoder_hidden_states=hidden, txt_ids=txt_ids, img_ids=img_ids).sample
        return FluxPipeline._unpack_latents(out, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor, pipe.vae_scale_factor)

    def latent_shape(self, pipe):
        return pipe.transformer.config.in_channels // 4, pipe.default_sample_size, pipe.default_sample_size

    def pipeline_latents(self, pipe, x):
        from diffusers import FluxPipeline

        b, c, h, w = x.shape
        return FluxPipeline._pack_latents(x, b, c, h, w)


def clip_encoders(pipe) -> dict[str, torch.nn.Module]:
    """The text encoders a method may train (LoRA's `text_encoder`, Textual Inversion), by attribute name:
    every CLIP encoder; never T5 (SD 3.5's `text_encoder_3`, FLUX.1's `text_encoder_2`), which no
    diffusers LoRA loader or embedding format of these families covers."""
    kind = family(pipe).name
    if kind == "flux2_klein":
        return {}  # its one text encoder is Qwen3, a language model, not CLIP
    t5 = {"sd3": "text_encoder_3", "flux1": "text_encoder_2"}.get(kind)
    return {name: e for name, e in named_text_encoders(pipe).items() if name != t5}


def clip_pairs(pipe) -> list[tuple[object, torch.nn.Module]]:
    """(tokenizer, encoder) of every CLIP text encoder (`clip_encoders`), in the pipeline's order."""
    names = clip_encoders(pipe)
    return [(getattr(pipe, tok), names[enc]) for enc, tok in TEXT_ENCODERS if enc in names]


T5_TOKENIZER = {"sd3": "tokenizer_3", "flux1": "tokenizer_2"}


def t5_tokenizer(pipe):
    """The T5 tokenizer of a DiT family's pipeline, None for the UNet families."""
    name = T5_TOKENIZER.get(family(pipe).name)
    return getattr(pipe, name, None) if name else None


class Flux2KleinFamily(FluxFamily):
    name = "flux2_klein"
    text_lengths = {"tokenizer": 512}  # the pipeline's max_sequence_length
    text_layers = (9, 18, 27)  # the pipeline's text_encoder_out_layers

    def predict(self, pipe, x, t, hidden, pooled):
        from diffusers import Flux2KleinPipeline as P

        b, _, h, w = x.shape
        packed = P._pack_latents(x)
        img_ids = P._prepare_latent_ids(x).to(x.device)
        txt_ids = P._prepare_text_ids(hidden).to(x.device)
        tr = pipe.transformer
        guidance = torch.full((b,), self.guidance, device=x.device, dtype=torch.float32) if tr.config.guidance_embeds else None
        out = tr(hidden_states=packed, timestep=t.to(x.dtype) / 1000, guidance=guidance, encoder_hidden_states=hidden,
                 txt_ids=txt_ids, img_ids=img_ids).sample[:, : packed.shape[1]]
        return P._unpack_latents_with_ids(out, img_ids, h, w)  # its size given: read off the ids it would need their values

    def latent_shape(self, pipe):
        # The pipeline's latents: 2x2-patchified, so half the VAE's latent side and four times its channels.
        side = pipe.default_sample_size // 2
        return pipe.transformer.config.in_channels, side, side

    def pipeline_latents(self, pipe, x):
        return x

    def vae_latents(self, pipe, mean):
        from diffusers import Flux2KleinPipeline as P

        bn = pipe.vae.bn
        x = P._patchify_latents(mean)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps)
        return (x - bn.running_mean.view(1, -1, 1, 1).to(x)) / std.to(x)

    def template(self, pipe, prompt):
        return pipe.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=False)


FAMILIES = {"StableDiffusion3Pipeline": SD3Family(), "FluxPipeline": FluxFamily(), "Flux2KleinPipeline": Flux2KleinFamily()}
_UNET = UNetFamily()


def family(pipe) -> UNetFamily:
    """The family of a loaded (or fake) pipeline, by its class."""
    return FAMILIES.get(type(pipe).__name__, _UNET)
