"""What the denoiser reads besides its noisy input: VAE latents of image sets, tokens, the text encoders'
states (and SDXL's, SD 3.5's and FLUX's pooled embeddings and added conditions). Shared by the training
loop, the methods and mode=estimate, for every family (`bench.family`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.family import TEXT_ENCODERS, clip_encoders, family, named_text_encoders


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



def per_sample_scale(weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample weights [n] shaped to scale a batch x [B, ...] sample by sample. Classifier-free
    guidance runs [uncond; cond] as one batch, so n weights repeat B // n times."""
    if weights.numel() != x.shape[0] and x.shape[0] % weights.numel() == 0:
        weights = weights.repeat(x.shape[0] // weights.numel())
    return weights.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))



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
    # SD 3.5's and FLUX's VAEs also shift their latents, FLUX.2's patchifies and normalises them (`bench.family`).
    return family(pipe).vae_latents(pipe, torch.cat(chunks).float().cpu())



def text_encoders(pipe) -> list[torch.nn.Module]:
    return list(named_text_encoders(pipe).values())



def tokenizers(pipe) -> list:
    """The tokenizer of each text encoder, in the same order."""
    return [getattr(pipe, tok) for name, tok in TEXT_ENCODERS if getattr(pipe, name, None) is not None]


def text_lengths(pipe) -> list[int]:
    """The length each tokenizer pads to, as the pipeline encodes a prompt: CLIP's 77; T5 the pipeline's
    default `max_sequence_length` (SD 3.5: 256, FLUX.1: 512)."""
    lengths = family(pipe).text_lengths
    return [lengths.get(tok, getattr(pipe, tok).model_max_length) for name, tok in TEXT_ENCODERS if getattr(pipe, name, None) is not None]



def tokenize(pipe, prompts: list[str]) -> torch.Tensor:
    """Token ids [N, E, L], a row per text encoder, each padded to its model's length (`text_lengths`) and
    then, where encoders read different lengths (T5 beside CLIP), with its pad id to the longest; multi-vector
    placeholders expanded by each tokenizer as the pipeline does."""
    rows = []
    convert = getattr(pipe, "maybe_convert_prompt", lambda p, tok: p)  # pipelines without Textual Inversion (SD 3.5) have none
    fam = family(pipe)
    for tok, length in zip(tokenizers(pipe), text_lengths(pipe)):
        converted = [fam.template(pipe, convert(p, tok)) for p in prompts]
        rows.append(tok(converted, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids)
    longest = max(r.shape[-1] for r in rows)
    rows = [torch.nn.functional.pad(r, (0, longest - r.shape[-1]), value=tok.pad_token_id or 0) for r, tok in zip(rows, tokenizers(pipe))]
    return torch.stack(rows, dim=1)



def text_condition(pipe, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states [N, L, D], pooled [N, P] or None) of token ids [N, E, L], as the pipeline conditions
    its denoiser: SD 1.x/2.x the encoder's last hidden states; SDXL each encoder's penultimate hidden states,
    concatenated, and the second encoder's projected pooled output; SD 3.5 and FLUX.1 as `bench.family`
    describes."""
    encoders = named_text_encoders(pipe)
    lengths = text_lengths(pipe)
    ids = [input_ids[:, k, :n] for k, n in enumerate(lengths)]
    kind = family(pipe).name
    if kind == "flux2_klein":
        # FLUX.2 klein: Qwen3's hidden states after the pipeline's layers, side by side per token; its
        # attention mask is where the padded ids are not the pad token (right padding, as the pipeline pads).
        qwen, layers = encoders["text_encoder"], family(pipe).text_layers
        mask = (ids[0] != pipe.tokenizer.pad_token_id).long()
        out = qwen(input_ids=ids[0].to(qwen.device), attention_mask=mask.to(qwen.device), output_hidden_states=True, use_cache=False)
        stacked = torch.stack([out.hidden_states[k] for k in layers], dim=1)  # [N, 3, L, D]
        n, c, length, d = stacked.shape
        return stacked.permute(0, 2, 1, 3).reshape(n, length, c * d), None
    if kind == "flux1":
        # FLUX.1: T5's last hidden states; CLIP-L's pooled output (its unprojected EOS state).
        clip, t5 = encoders["text_encoder"], encoders["text_encoder_2"]
        pooled = clip(ids[0].to(clip.device), output_hidden_states=False).pooler_output
        return t5(ids[1].to(t5.device), output_hidden_states=False)[0], pooled
    if kind == "sd3":
        hidden, pooled = [], []
        for k, name in enumerate(("text_encoder", "text_encoder_2")):
            out = encoders[name](ids[k].to(encoders[name].device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled.append(out[0])  # CLIPTextModelWithProjection: text_embeds
        clip = torch.cat(hidden, dim=-1)
        width = pipe.transformer.config.joint_attention_dim
        if "text_encoder_3" in encoders:
            t5 = encoders["text_encoder_3"](ids[2].to(encoders["text_encoder_3"].device))[0]
        else:  # SD 3.5 loaded without T5: the pipeline's zeros in its place
            t5 = torch.zeros(clip.shape[0], family(pipe).text_lengths["tokenizer_3"], width, device=clip.device, dtype=clip.dtype)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5.to(clip.dtype)], dim=-2), torch.cat(pooled, dim=-1)
    encoders = list(encoders.values())
    if len(encoders) == 1:
        return encoders[0](ids[0].to(encoders[0].device))[0], None
    hidden, pooled = [], None
    for k, encoder in enumerate(encoders):
        out = encoder(ids[k].to(encoder.device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds
            pooled = out[0]
    return torch.cat(hidden, dim=-1), pooled



@torch.no_grad()
def encode_text(pipe, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`text_condition` without gradients, kept in fp32 on the host (a frozen text side is encoded once)."""
    hidden, pooled = text_condition(pipe, input_ids)
    return hidden.float().cpu(), (pooled.float().cpu() if pooled is not None else None)



def encode_set(pipe, images, prompts: list[str]) -> TrainingSet:
    """The images' latents and their captions' token ids (the text states, when frozen, are added by `train`)."""
    distinct = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
    convert = getattr(pipe, "maybe_convert_prompt", lambda p, tok: p)
    for tok, length in zip(tokenizers(pipe), text_lengths(pipe)):
        for p in distinct:
            n = len(tok(family(pipe).template(pipe, convert(p, tok))).input_ids)
            if n > length:
                from bench.data import ConceptDataError

                raise ConceptDataError(f"data: a caption is {n} tokens and the text encoder reads {length}, so training would see it cut: "
                                       f"shorten it ({p[:80]!r}{'...' if len(p) > 80 else ''})")
    return TrainingSet(encode_images(pipe, images), tokenize(pipe, list(distinct)), torch.tensor([distinct[p] for p in prompts]))



def cast_parameters(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Floating parameters and buffers to `dtype` in place (the same Parameter objects, so an optimizer or
    hook holding them still does; `Module.to` may swap them for new ones, and cannot on fake tensors)."""
    for t in [*module.parameters(), *module.buffers()]:
        if t.is_floating_point() and t.dtype != dtype:
            t.data = t.data.to(dtype)


def require_clip(pipe, what: str) -> None:
    """One line for a method (or option) that trains CLIP text encoders, on a model that has none."""
    from methods.errors import MethodConfigError

    if not clip_encoders(pipe):
        raise MethodConfigError(f"{what}: {family(pipe).name} has no CLIP text encoder to train (its Qwen3 text encoder is a language "
                                "model with no token-embedding format its loaders read); train the transformer only")
