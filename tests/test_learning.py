"""Every method, at its default config and the default step budget, really learns the default concept:
on seeds never used in training, images of the instance prompt at weight 1 are closer to the instance
images (micro CLIP image similarity) than at weight 0."""

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bench.data import load_concept
from bench.images import generate
from methods.base import TrainSettings
from metrics.clip_score import clip_i

CONF = Path(__file__).resolve().parents[1] / "conf"
METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
EVAL_SEEDS = [9000, 9001, 9002, 9003]  # training draws noise from seed 0; these are unseen


@pytest.mark.parametrize("name", METHODS)
def test_default_config_learns_the_default_concept(name, micro_pipe, micro_encoder, tmp_path):
    train = OmegaConf.load(CONF / "train" / "default.yaml")
    data_cfg = OmegaConf.load(CONF / "data" / "sks_crescent.yaml")
    concept = load_concept(data_cfg, 64)
    method = instantiate(OmegaConf.load(CONF / "method" / f"{name}.yaml"))
    result = method.train(micro_pipe, concept, TrainSettings(steps=train.steps, batch_size=train.batch_size, progress=False, cache_dir=tmp_path))
    assert sum(result.losses[-50:]) / 50 < sum(result.losses[:50]) / 50  # the loss fell

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
