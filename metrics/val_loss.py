"""Validation loss on fixed noise: the denoising loss of held-out concept images (never trained on) at a
fixed set of timesteps with fixed noise, in the model's own objective (epsilon, v or sample; the flow
velocity on SD 3.5 and FLUX, at sigma = t / 1000: the training target, `methods.training.noised_and_target`), plain MSE (no Min-SNR weighting, so the number means the
same whatever `train.snr_gamma` was).

The noise comes from the training run's seed alone, so every method and every adapter weight of that run's
concept and seed is scored on the very same noisy latents: a difference is the adapter's, never the draw's.
No scoring network is involved. It costs one denoiser forward per held-out image per timestep per weight
(the micro model: a batch of 20 per weight; SD 1.5 at 512 px: as many UNet passes as two images' DDIM
sampling at 10 steps).

Rows: one per held-out image (`prompt_id` holdout_<i>, seed 0) and weight, its loss averaged over the
timesteps; a run's value is their mean, as for every metric.
"""

from __future__ import annotations

import torch

from metrics.base import MetricInfo

# No `score`: the sweep's images do not hold it; the scores and curve stages compute it with the run's
# artifact applied (bench.worker.validation_loss). Not yet among the regression-checked metrics: adding a
# test to the check's family changes its false-alarm rate and power, which results/benchmarks/
# regression_power.md measured without it (to add with that benchmark's next run).
INFO = MetricInfo("val_loss", "mse", False, "denoising MSE of held-out concept images at fixed timesteps and fixed noise, in the model's objective",
                  title="val loss", measured_by="model", proxy=True, checked=False)


def fixed_noise(seed: int, n_images: int, timesteps: list[int], latent_shape: tuple[int, ...]) -> torch.Tensor:
    """[n_images, len(timesteps), *latent_shape] standard normal noise from `seed` alone (drawn on the host
    in fp32, so a GPU run and a CPU run of one seed noise the same latents)."""
    return torch.randn((n_images, len(timesteps), *latent_shape), generator=torch.Generator().manual_seed(int(seed)))


@torch.no_grad()
def per_image_loss(pipe, method, artifact, data, weight: float, timesteps: list[int], seed: int, latents: torch.Tensor | None = None) -> list[float]:
    """Each held-out image's loss (mean over `timesteps`) with `artifact` applied at `weight`; `latents`:
    the held-out images already through the VAE (`encode_images`), when the caller scores several weights."""
    from methods.conditioning import encode_images, text_condition, tokenize
    from bench.family import denoiser, family
    from methods.training import noised_and_target

    if not data.holdout or not timesteps:
        return []
    fam = family(pipe)
    scheduler = fam.training_scheduler(pipe)
    device, dtype = denoiser(pipe).device, denoiser(pipe).dtype
    x0 = encode_images(pipe, data.holdout) if latents is None else latents  # [N, C, h, w], scaled
    n, t_count = len(x0), len(timesteps)
    noise = fixed_noise(seed, n, timesteps, tuple(x0.shape[1:]))
    t = torch.tensor(timesteps, dtype=torch.long)
    losses = []
    method.apply(pipe, artifact, weight)
    try:
        ids = tokenize(pipe, [method.prompt(c, data) for c in data.holdout_captions])
        # One held-out image (its timesteps) per denoiser call: memory stays that of a sampling batch at SD scale,
        # and a value never depends on how many images are held out.
        for i in range(n):
            xt, target = noised_and_target(scheduler, x0[i : i + 1].expand(t_count, *x0.shape[1:]), noise[i], t)
            hidden, pooled = text_condition(pipe, ids[i : i + 1].to(device))
            x = xt.to(device, dtype)
            pred = fam.predict(pipe, x, t.to(device), hidden.expand(t_count, *hidden.shape[1:]).to(dtype),
                               [None if pooled is None else pooled.expand(t_count, -1).to(dtype)])
            losses.append((pred.float().cpu() - target.float()).pow(2).flatten(1).mean(1).mean().item())
    finally:
        method.remove(pipe)
    return losses


def rows(pipe, method, artifact, data, weights: list[float], timesteps: list[int], seed: int) -> list[dict]:
    """The validation loss of one run at every weight: one row per held-out image and weight."""
    from methods.conditioning import encode_images

    if not data.holdout or not timesteps:
        return []
    out, latents = [], encode_images(pipe, data.holdout)
    for weight in weights:
        for i, value in enumerate(per_image_loss(pipe, method, artifact, data, float(weight), timesteps, seed, latents)):
            out.append({"prompt_id": f"holdout_{i}", "seed": 0, "weight": float(weight), "metric": INFO.name, "value": value, "unit": INFO.unit, "scorer": "model"})
    return out
