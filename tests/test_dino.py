"""DINO-I, DINO drift and FD in DINO space (metrics.dino) on a tiny random-weight Dinov2 folder made here
(the real-model path, offline), against computations written out by hand."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch

from bench import world
from bench.data import load_world_concept
from bench.score import sweep_rows
from bench.sweep import SweepPrompt
from metrics.dino import DinoConfigError, dino_folder, load_dino
from metrics.fd import frechet_distance

# facebook/dinov2-base's preprocessing (BitImageProcessor), with a smaller crop for a tiny model
PREPROCESSOR = dict(do_resize=True, size={"shortest_edge": 40}, resample=3, do_center_crop=True, crop_size={"height": 28, "width": 28},
                    do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_convert_rgb=True)


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "dinov2-tiny"
    Dinov2Model(Dinov2Config(image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)).save_pretrained(folder)
    BitImageProcessor(**PREPROCESSOR).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def images():
    return [world.sample(i, seed=41).image for i in range(12)], [world.sample(i, seed=42).image for i in range(10)]


def hand_features(folder, images) -> np.ndarray:
    """CLS token after the final layer norm, L2-normalised, of images resized (shorter side), centre-cropped
    and normalised as the folder's preprocessor_config.json says: written out with PIL and numpy."""
    from PIL import Image
    from transformers import Dinov2Model

    cfg = json.loads((folder / "preprocessor_config.json").read_text())
    side, crop = cfg["size"]["shortest_edge"], cfg["crop_size"]["height"]
    arrays = []
    for im in images:
        im = im.convert("RGB").resize((side, side), Image.BICUBIC)  # square images: the shorter side is both
        left = (side - crop) // 2
        arr = np.asarray(im.crop((left, left, left + crop, left + crop)), np.float32) / 255
        arrays.append(((arr - cfg["image_mean"]) / cfg["image_std"]).transpose(2, 0, 1))
    model = Dinov2Model.from_pretrained(folder).eval()
    with torch.no_grad():
        # the CLS token of the last hidden states, which Dinov2Model returns after its final layer norm
        cls = model(pixel_values=torch.tensor(np.stack(arrays), dtype=torch.float32)).last_hidden_state[:, 0]
    f = cls.numpy().astype(np.float64)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def test_a_dinov2_folder_scores_dino_i_and_drift_as_written_out_by_hand(dinov2_dir, images, micro_encoder):
    encoder = load_dino(f"local-dir:{dinov2_dir}")
    assert encoder.name == "dinov2-tiny"
    gen, ref = images
    np.testing.assert_allclose(encoder.images(gen).numpy(), hand_features(dinov2_dir, gen), atol=2e-3)

    data = load_world_concept("sks_crescent", 4, 64)
    prompts = [SweepPrompt("instance_0", "instance", "a sks crescent"), SweepPrompt("unrelated_0", "unrelated", "a red star on a grey background")]
    sweep = {("instance_0", s, 1.0): gen[s] for s in range(3)} | {("unrelated_0", s, 1.0): gen[3 + s] for s in range(3)}
    base = {("a red star on a grey background", s): ref[s] for s in range(3)}
    rows = sweep_rows(micro_encoder, data, prompts, sweep, base, {}, dino=encoder)
    got = {(r["metric"], r.get("prompt_id"), r.get("seed")): r["value"] for r in rows}
    g, inst, b = hand_features(dinov2_dir, gen), hand_features(dinov2_dir, data.images), hand_features(dinov2_dir, ref)
    for s in range(3):
        assert got[("dino_i", "instance_0", s)] == pytest.approx((g[s] @ inst.T).mean(), abs=2e-3)  # mean of the cosines to each instance image
        assert got[("dino_drift", "unrelated_0", s)] == pytest.approx(1 - g[3 + s] @ b[s], abs=2e-3)
    assert ("fd_dinov2-tiny", None, None) in got
    # An image against itself: DINO-I 1
    one = load_world_concept("sks_crescent", 1, 64)
    self_sim = sweep_rows(micro_encoder, one, prompts[:1], {("instance_0", 0, 1.0): one.images[0]}, {}, {}, dino=encoder)
    assert next(r["value"] for r in self_sim if r["metric"] == "dino_i") == pytest.approx(1.0, abs=1e-5)


def test_fd_in_dino_space_matches_scipy_and_is_zero_for_a_set_against_itself(dinov2_dir, images):
    encoder = load_dino(f"local-dir:{dinov2_dir}")
    gen, ref = images
    f1, f2 = hand_features(dinov2_dir, ref), hand_features(dinov2_dir, gen)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    expected = ((f1.mean(0) - f2.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(encoder, gen, ref) == pytest.approx(expected, rel=2e-2, abs=2e-3)
    assert frechet_distance(encoder, ref, ref) == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d / "nowhere", "holds no config.json"),
    (lambda d: (d / "clip").mkdir() or (d / "clip" / "config.json").write_text('{"model_type": "clip"}') and d / "clip", "is a 'clip' model, not dinov2"),
    (lambda d: (d / "bad").mkdir() or (d / "bad" / "config.json").write_text("{not json") and d / "bad", "is not a readable JSON object"),
])
def test_a_folder_that_is_not_dinov2_is_named_under_metrics_dino(tmp_path, make, message):
    with pytest.raises(DinoConfigError, match=rf"^metrics\.dino: .*{message}"):
        dino_folder(f"local-dir:{make(tmp_path)}")
    with pytest.raises(DinoConfigError, match=r"^metrics\.dino: 'ViT-B-32' is neither 'micro' nor 'local-dir:"):
        dino_folder("ViT-B-32")


@pytest.mark.parametrize("recipe", ["dino", "simclr"])
def test_each_micro_dino_recipe_writes_a_folder_the_metric_loads(recipe, tmp_path):
    """A few steps of each build recipe (bench/build/dino.py) on a handful of renders: the folder is a
    Dinov2Model with its processor, which `metrics.dino=local-dir:` loads and scores with, and it records
    which recipe made it. (Whether a build learns shape is benchmarks/micro_dino.py's question.)"""
    from bench.build import dino as build

    if recipe == "dino":
        trained = build.train(tmp_path / "m", n_images=8, steps=2, batch=4, prototypes=16)
    else:
        trained = build.train_simclr(tmp_path / "m", n_images=8, steps=2, batch=4)
    assert json.loads((tmp_path / "m" / "training.json").read_text()) == trained
    assert trained["recipe"].startswith({"dino": "DINO", "simclr": "SimCLR"}[recipe])
    encoder = load_dino(f"local-dir:{tmp_path / 'm'}")
    features = encoder.images([world.sample(i, seed=3).image for i in range(3)])
    assert features.shape == (3, build.BACKBONE["hidden_size"]) and torch.isfinite(features).all()
    assert torch.allclose(features.norm(dim=-1), torch.ones(3), atol=1e-5)
