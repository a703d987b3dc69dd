"""The pretraining script's SD phases: phase 2 starts from phase 1's weights and writes snapshots.

(A few steps on random latents: this checks the plumbing, not quality; quality is
benchmarks/base_quality.py's job.)"""

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from bench import world, zoo
from bench.pretrain import build_tokenizer, train_sd


def test_two_phase_sd_training_resumes_from_phase_one_and_snapshots(tmp_path):
    tokenizer = build_tokenizer(world.vocabulary())
    latents = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    texts = [world.caption("star", "red", "white"), "a circle", "a shape", "a blue square"]
    vae_dir = zoo.micro_sd_dir() / "vae"
    common = dict(vae_dir=vae_dir, tokenizer=tokenizer, latents=latents, texts=texts, batch=2, seed=0)
    train_sd(tmp_path / "phase1", steps=1, lr=1e-3, **common)
    phase1 = load_file(tmp_path / "phase1" / "unet" / "diffusion_pytorch_model.safetensors")
    train_sd(tmp_path / "phase2", steps=3, lr=0.0, init=tmp_path / "phase1", snapshot_every=2, snapshot_dir=tmp_path / "snaps", **common)

    assert [p.name for p in (tmp_path / "snaps").iterdir()] == ["step2"]
    # At a learning rate of 0 nothing moves, so phase 2 must hand back phase 1's weights exactly: the
    # weights were loaded (not freshly initialised), and the EMA started from them.
    phase2 = load_file(tmp_path / "phase2" / "unet" / "diffusion_pytorch_model.safetensors")
    assert phase2.keys() == phase1.keys()
    assert all(torch.equal(phase1[k], phase2[k]) for k in phase1)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "phase2", local_files_only=True)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
