"""Generation with fixed seeds."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from bench.family import denoiser, family


@torch.no_grad()
def generate(pipe, prompts: Sequence[str], seeds: Sequence[int], steps: int = 20, guidance: float = 5.0, batch: int = 16) -> list[Image.Image]:
    """One image per (prompt, seed) pair; each pair's initial noise depends only on its seed."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts for {len(seeds)} seeds")
    out: list[Image.Image] = []
    device = pipe.device
    side = family(pipe).image_size(pipe)
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[i : i + batch]]
        latents = family(pipe).pipeline_latents(pipe, initial_latents(pipe, gens, device))
        result = pipe(
            prompt=list(prompts[i : i + batch]),  # by name: FLUX.2 klein's first argument is a reference image
            height=side,  # FLUX unpacks its latents by these; the others read them off the latents
            width=side,
            num_inference_steps=steps,
            guidance_scale=guidance,
            latents=latents,
            output_type="pil",
        )
        out.extend(result.images)
    return out


def initial_latents(pipe, generators: Sequence[torch.Generator], device) -> torch.Tensor:
    """Seeded noise [B, C, h, w] drawn on the CPU, so a seed gives the same start on every device."""
    shape = family(pipe).latent_shape(pipe)
    noise = [torch.randn((1, *shape), generator=g) for g in generators]
    return torch.cat(noise).to(device=device, dtype=denoiser(pipe).dtype)


def to_unit(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1] (what the VAE reads)."""
    return images_u8.float().div(127.5).sub(1.0)
