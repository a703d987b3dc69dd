"""The training options a GPU needs at SD scale (train.precision / gradient_checkpointing / optimizer /
attention), shown on the micro model on the CPU: each trains to the loss fp32 reaches, and does what it is
for (less memory, the model's dtype kept, the pipe given back as it was)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from bench.cost import measure_training
from bench.data import load_world_concept
from methods.errors import MethodConfigError
from methods.settings import TrainSettings
from methods.training import make_optimizer, training_options
from methods.dreambooth import DreamBooth
from methods.lora import LoRA

STEPS = 20


@pytest.fixture(scope="module")
def concept():
    return load_world_concept("sks_crescent", 8, 64)


def losses(pipe, concept, method_factory, steps=STEPS, **options) -> torch.Tensor:
    settings = TrainSettings(steps=steps, batch_size=2, seed=3, progress=False, **options)
    return torch.tensor(method_factory().train(pipe, concept, settings).losses)


def test_mixed_precision_and_checkpointing_train_to_the_fp32_loss(micro_pipe, concept):
    """Same seed, so every step draws the same noise and timesteps: the per-step losses can be compared."""
    lora = lambda: LoRA(lr=2e-3)  # noqa: E731
    fp32 = losses(micro_pipe, concept, lora)
    for precision in ("bf16", "fp16"):
        low = losses(micro_pipe, concept, lora, precision=precision)
        assert not torch.equal(low, fp32), f"{precision}: autocast changed nothing"
        # bf16 keeps 8 bits of mantissa: a step's loss moves by about a percent, the curve stays put.
        assert ((low - fp32).abs() / fp32).max() < 0.03, precision
        assert abs(low[-10:].mean() - fp32[-10:].mean()) < 0.01 * fp32[-10:].mean(), precision
    checkpointed = losses(micro_pipe, concept, lora, gradient_checkpointing=True)
    torch.testing.assert_close(checkpointed, fp32, rtol=1e-5, atol=1e-6)  # recomputation, not approximation


def test_checkpointing_and_attention_change_memory_and_are_undone(micro_pipe, concept, tmp_path):
    processors = {k: type(v) for k, v in micro_pipe.unet.attn_processors.items()}

    def peak(**options) -> float:
        settings = TrainSettings(steps=3, batch_size=4, seed=0, progress=False, **options)
        return measure_training(LoRA(lr=2e-3), micro_pipe, concept, settings, tmp_path / str(options))[1].peak_mem_mib

    plain, checkpointed, eager = peak(), peak(gradient_checkpointing=True), peak(attention="eager")
    assert checkpointed < plain - 4  # activations recomputed in backward, not kept (37.5 -> 29.8 MiB measured)
    assert eager > plain  # the attention matrices are kept for backward
    assert {k: type(v) for k, v in micro_pipe.unet.attn_processors.items()} == processors
    assert not micro_pipe.unet.is_gradient_checkpointing


@pytest.fixture(scope="module")
def half_pipe():
    from bench.models import load_pipeline

    return load_pipeline({"name": "micro", "embedded": True, "dtype": "float16"}, "cpu")


def test_dreambooth_trains_a_float16_model_with_fp32_master_weights(half_pipe, micro_pipe, concept):
    """Refused before; now the UNet trains in fp32 under fp16 autocast with loss scaling, and the model
    (and the file) stay float16."""
    before = {k: v.clone() for k, v in half_pipe.unet.state_dict().items()}
    settings = TrainSettings(steps=8, batch_size=2, seed=0, progress=False)
    result = DreamBooth(lr=6e-4, prior_preservation=False).train(half_pipe, concept, TrainSettings(**{**settings.__dict__, "precision": "fp16"}))
    reference = DreamBooth(lr=6e-4, prior_preservation=False).train(micro_pipe, concept, settings)
    half, full = torch.tensor(result.losses), torch.tensor(reference.losses)
    # The same draws: the first steps' losses match the fp32 model's to fp16's precision (a full
    # fine-tune's trajectories part later, as any two precisions' do).
    assert torch.isfinite(half).all() and ((half[:4] - full[:4]).abs() / full[:4]).max() < 0.02
    assert result.artifact.tensors and {t.dtype for t in result.artifact.tensors.values()} == {torch.float16}
    assert result.artifact.tensors.keys() == reference.artifact.tensors.keys()
    assert half_pipe.unet.dtype == torch.float16
    assert all(torch.equal(v, before[k]) for k, v in half_pipe.unet.state_dict().items())  # the base model again


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes (the bnb extra) is not installed")
def test_8bit_adamw_keeps_8_bit_moments_and_trains_like_adamw(micro_pipe, concept):
    big, small = torch.nn.Parameter(torch.randn(64, 128)), torch.nn.Parameter(torch.randn(8, 16))
    opt = make_optimizer([big, small], 1e-3, 1e-2, "adamw8bit")
    (big.sum() + small.sum()).backward()
    opt.step()
    assert opt.state[big]["state1"].dtype == torch.uint8 and opt.state[big]["state2"].dtype == torch.uint8
    assert opt.state[small]["state1"].dtype == torch.float32  # under 4,096 values: 32-bit moments
    db = lambda: DreamBooth(lr=6e-4, prior_preservation=False)  # noqa: E731
    fp32, eight = losses(micro_pipe, concept, db), losses(micro_pipe, concept, db, optimizer="adamw8bit")
    assert not torch.equal(eight, fp32)
    assert abs(eight[-10:].mean() - fp32[-10:].mean()) < 0.05 * fp32[-10:].mean()


def test_options_are_checked_by_key(monkeypatch, micro_pipe, concept):
    with pytest.raises(MethodConfigError, match="train.precision"):
        TrainSettings(precision="fp8")
    with pytest.raises(MethodConfigError, match="train.gradient_checkpointing"):
        TrainSettings(gradient_checkpointing="yes")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(MethodConfigError, match="train.optimizer: adamw8bit needs the bitsandbytes package"):
        TrainSettings(optimizer="adamw8bit").check_packages()
    with training_options(micro_pipe, LoRA(lr=1e-3), TrainSettings(attention="eager")):
        assert {type(p).__name__ for p in micro_pipe.unet.attn_processors.values()} == {"AttnProcessor"}
    assert {type(p).__name__ for p in micro_pipe.unet.attn_processors.values()} == {"AttnProcessor2_0"}


def test_min_snr_weights_match_the_papers_formula_computed_from_the_betas():
    """`train.snr_gamma`: the weights against numpy from the scheduler's betas, for both targets; the
    epsilon weight at a zero-terminal-SNR schedule's last step is its limit, 1."""
    import numpy as np
    from diffusers import DDPMScheduler

    from methods.training import min_snr_weights

    for zero_snr in (False, True):
        scheduler = DDPMScheduler(beta_schedule="scaled_linear", rescale_betas_zero_snr=zero_snr)
        betas = np.asarray(scheduler.betas, dtype=np.float64)
        alpha_bar = np.cumprod(1 - betas)
        t = np.array([0, 10, 250, 500, 900, 999])
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = alpha_bar[t] / (1 - alpha_bar[t])
            eps = np.where(snr > 0, np.minimum(snr, 5) / snr, 1.0)
        v = np.minimum(snr, 5) / (snr + 1)
        got_eps = min_snr_weights(scheduler.alphas_cumprod, torch.tensor(t), 5, v_prediction=False).numpy()
        got_v = min_snr_weights(scheduler.alphas_cumprod, torch.tensor(t), 5, v_prediction=True).numpy()
        # rtol: the scheduler keeps alpha_bar in float32; near t=0, 1 - alpha_bar loses a few digits there
        np.testing.assert_allclose(got_eps, eps, rtol=1e-3)
        np.testing.assert_allclose(got_v, v, rtol=1e-3)
        assert got_eps[0] < 0.01 and got_eps[-1] == 1.0  # a nearly clean step weighs little, the noisiest fully
    assert torch.isfinite(min_snr_weights(DDPMScheduler(rescale_betas_zero_snr=True).alphas_cumprod, torch.tensor([999]), 5, False)).all()


def test_min_snr_weighting_changes_the_loss_and_still_trains(micro_pipe, concept):
    """Same seed, same noise and timesteps: with `snr_gamma` each step's loss is the weighted one (not
    the plain MSE), and training still lowers it."""
    lora = lambda: LoRA(lr=2e-3)  # noqa: E731
    plain = losses(micro_pipe, concept, lora)
    weighted = losses(micro_pipe, concept, lora, snr_gamma=5.0)
    assert not torch.allclose(plain, weighted)
    assert weighted[-10:].mean() < weighted[:10].mean()


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "5"])
def test_nonsense_snr_gamma_is_refused_by_key(bad):
    with pytest.raises(MethodConfigError, match="train.snr_gamma"):
        TrainSettings(snr_gamma=bad)
