"""Each metric against an independent computation (numpy / scipy, hand-written cosines)."""

import numpy as np
import pytest
import scipy.linalg
import torch

from bench import world
from metrics.clip_score import clip_i, clip_t
from metrics.cmmd import cmmd
from metrics.diversity import diversity
from metrics.drift import drift
from metrics.fd import frechet_distance


@pytest.fixture(scope="module")
def image_sets():
    a = [world.sample(i, seed=31).image for i in range(40)]
    b = [world.sample(i, seed=32).image for i in range(40)]
    return a, b


def unit(rng, n, d=16):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_clip_t_is_100_times_clamped_cosine(micro_encoder, image_sets):
    images = image_sets[0][:6]
    prompts = [world.caption("star", "red", "white")] * 3 + ["a circle", "a shape", "a blue square"]
    img = micro_encoder.model.encode_image(torch.stack([micro_encoder.preprocess(i) for i in images])).detach().numpy()
    txt = micro_encoder.model.encode_text(micro_encoder.tokenizer(prompts)).detach().numpy()
    cos = (img * txt).sum(1) / np.linalg.norm(img, axis=1) / np.linalg.norm(txt, axis=1)
    np.testing.assert_allclose(clip_t(micro_encoder, images, prompts).numpy(), 100 * np.maximum(cos, 0), rtol=1e-4, atol=1e-4)


def test_clip_i_is_mean_cosine_to_references(micro_encoder, image_sets):
    gen, ref = image_sets[0][:5], image_sets[1][:7]
    g = micro_encoder.model.encode_image(torch.stack([micro_encoder.preprocess(i) for i in gen])).detach().numpy()
    r = micro_encoder.model.encode_image(torch.stack([micro_encoder.preprocess(i) for i in ref])).detach().numpy()
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    np.testing.assert_allclose(clip_i(micro_encoder, gen, ref).numpy(), (g @ r.T).mean(1), rtol=1e-5, atol=1e-5)


def test_frechet_distance_matches_scipy(micro_encoder, image_sets):
    gen, ref = image_sets
    f1 = micro_encoder.images(ref).double().numpy()
    f2 = micro_encoder.images(gen).double().numpy()
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(micro_encoder, gen, ref) == pytest.approx(expected, rel=1e-3, abs=1e-4)
    assert frechet_distance(micro_encoder, ref, ref) == pytest.approx(0.0, abs=1e-3)


def test_cmmd_matches_a_loop_over_pairs():
    rng = np.random.default_rng(0)
    x, y = unit(rng, 9) * 3, unit(rng, 7) * 3 + 0.5
    k = lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * 10.0**2))  # noqa: E731
    kxx = np.mean([k(x[i], x[j]) for i in range(9) for j in range(9) if i != j])
    kyy = np.mean([k(y[i], y[j]) for i in range(7) for j in range(7) if i != j])
    kxy = np.mean([k(a, b) for a in x for b in y])
    assert cmmd(torch.tensor(x), torch.tensor(y)) == pytest.approx(1000 * (kxx + kyy - 2 * kxy), rel=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        cmmd(torch.tensor(x[:1]), torch.tensor(y))


def test_drift_and_diversity_match_numpy():
    rng = np.random.default_rng(1)
    a, b = unit(rng, 5), unit(rng, 5)
    np.testing.assert_allclose(drift(torch.tensor(a), torch.tensor(b)).numpy(), [1 - a[i] @ b[i] for i in range(5)])
    pairs = [1 - a[i] @ a[j] for i in range(5) for j in range(5) if i < j]
    assert diversity(torch.tensor(a)) == pytest.approx(np.mean(pairs))
    assert diversity(torch.tensor(np.repeat(a[:1], 3, axis=0))) == pytest.approx(0.0, abs=1e-12)
