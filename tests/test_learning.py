"""Every method, at its default config and the default step budget, really learns the default concept:
on seeds never used in training, images of the instance prompt at weight 1 are closer to the instance
images (micro CLIP image similarity) than at weight 0."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bench.data import load_concepts
from bench.images import generate
from methods.settings import TrainSettings
from metrics.clip_score import clip_i

CONF = Path(__file__).resolve().parents[1] / "conf"
METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
EVAL_SEEDS = [9000, 9001, 9002, 9003]  # training draws noise from seed 0; these are unseen


@pytest.mark.parametrize("name", METHODS)
def test_default_config_learns_the_default_concept(name, micro_pipe, micro_encoder, tmp_path):
    train = OmegaConf.load(CONF / "train" / "default.yaml")
    data_cfg = OmegaConf.load(CONF / "data" / "sks_crescent.yaml")
    [concept] = load_concepts(data_cfg, 64)
    method = instantiate(OmegaConf.load(CONF / "method" / f"{name}.yaml"))
    result = method.train(micro_pipe, concept, TrainSettings(steps=train.steps, batch_size=train.batch_size, progress=False, cache_dir=tmp_path))
    # The loss fell: on one fixed batch of instance latents, noise and timesteps (the training curve
    # itself is too noisy over random timesteps to show it), weight 1 denoises better than weight 0.
    losses = {w: fixed_batch_loss(micro_pipe, method, result.artifact, concept, w) for w in (0.0, 1.0)}
    assert losses[1.0] < losses[0.0], losses

    prompt = method.prompt(concept.instance_prompt, concept)
    scores = {}
    for weight in (0.0, 1.0):
        method.apply(micro_pipe, result.artifact, weight)
        try:
            images = generate(micro_pipe, [prompt] * len(EVAL_SEEDS), EVAL_SEEDS)
        finally:
            method.remove(micro_pipe)
        scores[weight] = clip_i(micro_encoder, images, concept.images).mean().item()
    assert scores[1.0] > scores[0.0] + 0.02, scores


@torch.no_grad()
def fixed_batch_loss(pipe, method, artifact, concept, weight: float) -> float:
    """The training objective of the model's family (`bench.family`) on one fixed batch of the concept's
    images: the same noise and timesteps at every weight."""
    from methods.conditioning import encode_images, text_condition, tokenize
    from bench.family import family
    from methods.training import noised_and_target

    fam = family(pipe)
    scheduler = fam.training_scheduler(pipe)
    gen = torch.Generator().manual_seed(1234)
    x0 = encode_images(pipe, concept.images).repeat(4, 1, 1, 1)
    noise = torch.randn(x0.shape, generator=gen)
    t = fam.sample_timesteps(scheduler, len(x0), gen)
    method.apply(pipe, artifact, weight)
    try:
        hidden, pooled = text_condition(pipe, tokenize(pipe, [method.prompt(concept.instance_prompt, concept)] * len(x0)))
        xt, target = noised_and_target(scheduler, x0, noise, t)
        pred = fam.predict(pipe, xt, t, hidden, [pooled])
    finally:
        method.remove(pipe)
    return torch.nn.functional.mse_loss(pred, target).item()
