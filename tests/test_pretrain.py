"""The pretraining script's SD phases: phase 2 starts from phase 1's weights and writes snapshots.

(A few steps on random latents: this checks the plumbing, not quality; quality is
benchmarks/base_quality.py's job.)"""

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from bench import world, zoo
from bench.build.pretrain import build_tokenizer, train_sd


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


def test_micro_clips_text_tower_converts_to_a_clip_text_model_with_the_same_states(tmp_path):
    """`--text-encoder clip`: the SD text encoder is micro CLIP's text tower as a transformers
    CLIPTextModel. Per token, its last hidden state must equal open_clip's own forward (token + position
    embedding, causal transformer, ln_final), written here from open_clip's modules, on prompts with rare
    tokens and padding."""
    import open_clip

    from bench.build.pretrain import clip_text_encoder

    clip_dir = zoo.micro_clip_dir()
    model = open_clip.create_model(f"local-dir:{clip_dir}").eval()
    encoder = clip_text_encoder(clip_dir)
    assert not any(p.requires_grad for p in encoder.parameters())
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    prompts = ["a sks crescent", world.caption("star", "red", "white"), "", "a shape in zwx style"]
    ids = tokenizer(prompts, padding="max_length", max_length=32, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        x = model.token_embedding(ids) + model.positional_embedding
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
        got = encoder(ids).last_hidden_state
    assert got.shape == x.shape
    torch.testing.assert_close(got, x, atol=1e-5, rtol=1e-4)


def test_sd_training_on_a_frozen_clip_text_encoder_leaves_it_unchanged(tmp_path):
    from transformers import CLIPTokenizer

    from bench.build.pretrain import clip_text_encoder

    clip_dir = zoo.micro_clip_dir()
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    latents = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    texts = [world.caption("star", "red", "white"), "a circle", "a shape", "a blue square"]
    train_sd(tmp_path / "sd", vae_dir=zoo.micro_sd_dir() / "vae", tokenizer=tokenizer, latents=latents, texts=texts, batch=2, seed=0,
             steps=2, lr=1e-2, clip_dir=clip_dir)
    written = load_file(tmp_path / "sd" / "text_encoder" / "model.safetensors")
    converted = clip_text_encoder(clip_dir).state_dict()
    assert {k for k in written} <= set(converted) and all(torch.equal(written[k], converted[k]) for k in written)
