"""Tiny SD 3.5 and FLUX.1 pipelines made in the test (no download): each family's real diffusers and
transformers classes at toy sizes, seeded, so its mechanics (joint attention over text and image tokens,
CLIP + T5 conditioning, packed latents, the guidance embedding, the flow-matching scheduler) run here.
The VAE, the CLIP tokenizer and FLUX's CLIP-L encoder are the micro model's (a VAE that decodes to
recognisable images); the rest is random. Nothing about image quality is claimed."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from bench.estimate import stand_in_t5_tokenizer

RESOLUTION = 64


def _t5(vocab_size: int, width: int = 32):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=width, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                   feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False))


def _vae(micro_pipe, shift: float):
    """The micro VAE with a latent shift, as SD 3.5's and FLUX's VAEs have (their pipelines subtract it)."""
    vae = copy.deepcopy(micro_pipe.vae)
    vae.register_to_config(shift_factor=shift, use_quant_conv=True, use_post_quant_conv=True)
    return vae


def _words() -> list[str]:
    from bench import world

    return world.vocabulary()


def tiny_sd3(micro_pipe):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(0)
    te = micro_pipe.text_encoder.config

    def clip(projection: int):
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=te.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=te.max_position_embeddings, projection_dim=projection, bos_token_id=te.bos_token_id,
            eos_token_id=te.eos_token_id, pad_token_id=te.pad_token_id, hidden_act="gelu"))

    t5_tok = stand_in_t5_tokenizer(_words(), 256)
    transformer = SD3Transformer2DModel(
        sample_size=RESOLUTION // 4, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=24, pos_embed_max_size=32,
        qk_norm="rms_norm")
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(micro_pipe, 0.06),
        text_encoder=clip(8), tokenizer=micro_pipe.tokenizer, text_encoder_2=clip(16), tokenizer_2=copy.deepcopy(micro_pipe.tokenizer),
        text_encoder_3=_t5(len(t5_tok)), tokenizer_3=t5_tok)


def tiny_flux(micro_pipe):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    t5_tok = stand_in_t5_tokenizer(_words(), 512)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=micro_pipe.text_encoder.config.hidden_size, guidance_embeds=True, axes_dims_rope=(2, 2, 4))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(transformer=transformer, scheduler=scheduler, vae=_vae(micro_pipe, 0.1159),
                        text_encoder=copy.deepcopy(micro_pipe.text_encoder), tokenizer=copy.deepcopy(micro_pipe.tokenizer),
                        text_encoder_2=_t5(len(t5_tok)), tokenizer_2=t5_tok)


def save(pipe, folder: Path) -> Path:
    pipe.save_pretrained(folder)
    return folder


def tiny_flux2_klein():
    """FLUX.2 klein: its transformer at toy size, a fresh tiny AutoencoderKLFlux2 (32 -> here 4 latent
    channels, patchified to 16), and a tiny Qwen3 (28 layers, so the pipeline's layers 9, 18, 27 exist)
    reading the stand-in Qwen tokenizer (byte-level, Qwen3's chat template)."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from bench.estimate import stand_in_qwen_tokenizer

    torch.manual_seed(0)
    tok = stand_in_qwen_tokenizer(512)
    qwen = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=28, num_attention_heads=2,
                                        num_key_value_heads=1, head_dim=8, max_position_embeddings=1024, tie_word_embeddings=True))
    vae = AutoencoderKLFlux2(block_out_channels=(16, 32, 32), latent_channels=4, layers_per_block=1, norm_num_groups=8, sample_size=RESOLUTION,
                             down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
                                          num_attention_heads=2, joint_attention_dim=3 * 16, guidance_embeds=False, axes_dims_rope=(2, 2, 2, 2),
                                          timestep_guidance_channels=32, mlp_ratio=2.0)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=qwen, tokenizer=tok, transformer=transformer)
