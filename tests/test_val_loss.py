"""The validation loss on fixed noise (metrics.val_loss): checked against a hand computation of the model's
v-prediction loss, at weight 0 equal to the base model's, the same noise for every method and weight, and
lower after training on the concept than before."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bench.data import ConceptDataError, load_concepts, load_folder, load_world_concept
from methods.settings import TrainSettings
from metrics import val_loss

CONF = Path(__file__).resolve().parents[1] / "conf" / "method"
TIMESTEPS = [50, 400, 900]


def make(name: str, **overrides):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    cfg.update(overrides)
    return instantiate(cfg)


@pytest.fixture(scope="module")
def concept():
    return load_world_concept("sks_crescent", 4, 64, holdout=3)


@pytest.fixture(scope="module")
def lora(micro_pipe, concept, tmp_path_factory):
    method = make("lora")
    result = method.train(micro_pipe, concept, TrainSettings(steps=40, batch_size=4, progress=False, cache_dir=tmp_path_factory.mktemp("lora")))
    return method, result.artifact


def hand_loss(pipe, prompt_ids, image, timesteps, noise) -> float:
    """The v-prediction MSE written out from the schedule's alpha-bar (not through the scheduler's helpers)."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    with torch.no_grad():
        x0 = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
        hidden = pipe.text_encoder(prompt_ids)[0]
        losses = []
        for k, t in enumerate(timesteps):
            a = pipe.scheduler.alphas_cumprod[t].double()
            eps = noise[k : k + 1].double()
            xt = a.sqrt() * x0.double() + (1 - a).sqrt() * eps
            v = a.sqrt() * eps - (1 - a).sqrt() * x0.double()
            pred = pipe.unet(xt.float(), torch.tensor([t]), encoder_hidden_states=hidden).sample
            losses.append(((pred.double() - v) ** 2).mean().item())
    return float(np.mean(losses))


def test_the_loss_is_the_models_v_prediction_mse_on_the_runs_fixed_noise(micro_pipe, concept, lora):
    assert micro_pipe.scheduler.config.prediction_type == "v_prediction"  # the micro model's objective, which the hand loss writes out
    method, artifact = lora
    got = val_loss.per_image_loss(micro_pipe, method, artifact, concept, 0.5, TIMESTEPS, seed=7)
    noise = val_loss.fixed_noise(7, len(concept.holdout), TIMESTEPS, (4, 16, 16))
    method.apply(micro_pipe, artifact, 0.5)
    try:
        ids = micro_pipe.tokenizer(concept.holdout_captions, padding="max_length", max_length=micro_pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
        want = [hand_loss(micro_pipe, ids[i : i + 1], im, TIMESTEPS, noise[i]) for i, im in enumerate(concept.holdout)]
    finally:
        method.remove(micro_pipe)
    assert got == pytest.approx(want, rel=1e-4)


def test_weight_zero_is_the_base_models_loss_and_training_lowers_the_loss_at_weight_one(micro_pipe, concept, lora):
    method, artifact = lora
    rows = val_loss.rows(micro_pipe, method, artifact, concept, [0.0, 1.0], TIMESTEPS, seed=3)
    by_weight = {w: np.mean([r["value"] for r in rows if r["weight"] == w]) for w in (0.0, 1.0)}
    assert len(rows) == 2 * len(concept.holdout) and {r["prompt_id"] for r in rows} == {"holdout_0", "holdout_1", "holdout_2"}

    class Base:  # no adapter at all: the base model reading the instance captions
        def apply(self, pipe, artifact, weight):
            pass

        def remove(self, pipe):
            pass

        def prompt(self, text, data):
            return text

    base = val_loss.per_image_loss(micro_pipe, Base(), None, concept, 0.0, TIMESTEPS, seed=3)
    assert [r["value"] for r in rows if r["weight"] == 0.0] == pytest.approx(base, rel=1e-6)
    assert by_weight[1.0] < by_weight[0.0]  # 40 steps on the concept: its held-out renders denoise better


def test_the_noise_is_the_runs_alone_whatever_else_is_scored(micro_pipe, concept, lora):
    method, artifact = lora
    alone = val_loss.rows(micro_pipe, method, artifact, concept, [1.0], TIMESTEPS, seed=3)
    among = [r for r in val_loss.rows(micro_pipe, method, artifact, concept, [-0.5, 0.0, 1.0], TIMESTEPS, seed=3) if r["weight"] == 1.0]
    assert [r["value"] for r in alone] == [r["value"] for r in among]
    other_seed = val_loss.rows(micro_pipe, method, artifact, concept, [1.0], TIMESTEPS, seed=4)
    assert [r["value"] for r in other_seed] != [r["value"] for r in alone]


def test_held_out_images_are_fresh_renders_or_a_folders_last_images_never_trained_on(tmp_path):
    world = load_world_concept("sks_crescent", 8, 64)
    trained = {im.tobytes() for im in world.images}
    assert len(world.holdout) == 4 and not trained & {im.tobytes() for im in world.holdout}
    assert world.fingerprint() == load_world_concept("sks_crescent", 8, 64, holdout=0).fingerprint()  # holding out never retrains

    folder = tmp_path / "10_sks dog"
    folder.mkdir()
    rng = np.random.default_rng(0)
    from PIL import Image

    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "4.txt").write_text("a sks dog on a lawn")
    data = load_folder(folder, 64, holdout=2)
    assert len(data.images) == 3 and len(data.holdout) == 2 and data.holdout_captions == ["sks dog", "a sks dog on a lawn"]
    assert load_concepts({"concepts": [str(folder)]}, 64)[0].holdout == []  # a folder sets nothing aside unless asked
    with pytest.raises(ConceptDataError, match=r"^data\.holdout: 5 held-out images of the 5 .* would leave none to train on"):
        load_folder(folder, 64, holdout=5)
    with pytest.raises(ConceptDataError, match=r"^data\.holdout: -1 is not a whole number"):
        load_concepts({"concepts": ["sks_crescent"], "holdout": -1}, 64)
