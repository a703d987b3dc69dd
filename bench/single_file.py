"""Write a diffusers Stable Diffusion pipeline as one original-layout (LDM) `.safetensors` checkpoint,
the single file AUTOMATIC1111, ComfyUI and diffusers' `from_single_file` load.

The key mapping is the inverse of the one diffusers applies when it reads such files, written for any
depth and layers-per-block of a UNet2DConditionModel / AutoencoderKL. Text encoders: SD 1.x stores its
CLIP ViT-L as a Hugging Face CLIP text model under `cond_stage_model.transformer.`; SD 2.x its OpenCLIP
ViT-H in open_clip's layout under `cond_stage_model.model.`; SDXL stores the ViT-L
model under `conditioner.embedders.0.transformer.` and its OpenCLIP ViT-bigG in open_clip's own layout
under `conditioner.embedders.1.model.` (fused q/k/v, `resblocks`, a transposed text projection), and its
UNet's added-condition MLP as `label_emb`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from bench.io import atomic_path

RESNET = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut")]
VAE_ATTENTION = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]


def unet_prefix_map(config: dict) -> list[tuple[str, str]]:
    """(LDM prefix, diffusers prefix) pairs for a UNet2DConditionModel config."""
    lpb = int(config["layers_per_block"])
    levels = len(config["block_out_channels"])
    down_attn = ["CrossAttn" in t for t in config["down_block_types"]]
    up_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    pairs = [("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."), ("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out.")]
    for i in range(levels):
        for j in range(lpb):
            n = i * (lpb + 1) + j + 1
            pairs.append((f"input_blocks.{n}.0.", f"down_blocks.{i}.resnets.{j}."))
            if down_attn[i]:
                pairs.append((f"input_blocks.{n}.1.", f"down_blocks.{i}.attentions.{j}."))
        if i < levels - 1:
            pairs.append((f"input_blocks.{(i + 1) * (lpb + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
        for j in range(lpb + 1):
            n = i * (lpb + 1) + j
            pairs.append((f"output_blocks.{n}.0.", f"up_blocks.{i}.resnets.{j}."))
            if up_attn[i]:
                pairs.append((f"output_blocks.{n}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < levels - 1:
            pairs.append((f"output_blocks.{i * (lpb + 1) + lpb}.{2 if up_attn[i] else 1}.conv.", f"up_blocks.{i}.upsamplers.0.conv."))
    pairs += [("middle_block.0.", "mid_block.resnets.0."), ("middle_block.1.", "mid_block.attentions.0."), ("middle_block.2.", "mid_block.resnets.1.")]
    # SDXL's added conditions (pooled text + size/crop numbers) go through a two-layer MLP.
    pairs += [("label_emb.0.0.", "add_embedding.linear_1."), ("label_emb.0.2.", "add_embedding.linear_2.")]
    return pairs


def vae_prefix_map(config: dict) -> list[tuple[str, str]]:
    """(LDM prefix, diffusers prefix) pairs for an AutoencoderKL config."""
    levels = len(config["block_out_channels"])
    lpb = int(config["layers_per_block"])
    pairs = []
    for i in range(levels):
        for j in range(lpb):
            pairs.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        if i < levels - 1:
            pairs.append((f"encoder.down.{i}.downsample.", f"encoder.down_blocks.{i}.downsamplers.0."))
        for j in range(lpb + 1):
            pairs.append((f"decoder.up.{levels - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}."))
        if i < levels - 1:
            pairs.append((f"decoder.up.{levels - 1 - i}.upsample.", f"decoder.up_blocks.{i}.upsamplers.0."))
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.mid.block_{k + 1}.", f"{part}.mid_block.resnets.{k}.") for k in range(2)]
        pairs += [(f"{part}.mid.attn_1.", f"{part}.mid_block.attentions.0."), (f"{part}.norm_out.", f"{part}.conv_norm_out.")]
    return pairs


def _longest_first(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    # The longest diffusers prefix must win, so 'down_blocks.1.resnets.0.' is not caught by a shorter one.
    return sorted(pairs, key=lambda p: -len(p[1]))


def _rename(key: str, pairs: list[tuple[str, str]]) -> str:
    """`key` with its diffusers prefix swapped for the LDM one; `pairs` ordered by `_longest_first`."""
    for ldm, hf in pairs:
        if key.startswith(hf):
            return ldm + key[len(hf) :]
    return key


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    pairs = _longest_first(unet_prefix_map(config))
    out = {}
    for key, value in state.items():
        new = _rename(key, pairs)
        if "resnets" in key:
            for ldm, hf in RESNET:
                new = new.replace(f".{hf}.", f".{ldm}.")
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    pairs = _longest_first(vae_prefix_map(config))
    out = {}
    for key, value in state.items():
        new = _rename(key, pairs).replace("conv_shortcut.", "nin_shortcut.")
        if "mid.attn_1." in new:
            for ldm, hf in VAE_ATTENTION:
                new = new.replace(f"attn_1.{hf}", f"attn_1.{ldm}")
            if value.dim() == 2:  # LDM's VAE attention uses 1x1 convolutions
                value = value[:, :, None, None]
        out["first_stage_model." + new] = value
    return out


OPEN_CLIP_LAYER = [("self_attn.out_proj.", "attn.out_proj."), ("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."), ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj.")]


def text_encoder_to_open_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model (with projection) in open_clip's layout, as SDXL's second encoder is
    stored: q/k/v fused into `in_proj`, layers as `transformer.resblocks`, the projection transposed."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        k = key.removeprefix("text_model.")
        if k == "embeddings.position_ids":
            continue
        if k == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif k == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif k.startswith("final_layer_norm."):
            out["ln_final." + k.removeprefix("final_layer_norm.")] = value
        elif k == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", k):
            qkv.setdefault((int(m[1]), m[3]), {})[m[2]] = value
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", k):
            rest = m[2]
            for hf, oc in OPEN_CLIP_LAYER:
                if rest.startswith(hf):
                    out[f"transformer.resblocks.{m[1]}.{oc}{rest.removeprefix(hf)}"] = value
                    break
            else:
                raise KeyError(f"text encoder weight {key!r} has no open_clip name")
        else:
            raise KeyError(f"text encoder weight {key!r} has no open_clip name")
    for (layer, kind), parts in qkv.items():
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def _hf_text_model(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Files hold transformers' CLIP text model with its `text_model.` level (newer transformers flatten it
    # away in memory); the projection of a CLIPTextModelWithProjection sits beside it.
    return {(k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k): v for k, v in state.items()}


def save_single_file(pipe_components: dict, path: Path, dtype: torch.dtype | None = None) -> Path:
    """`pipe_components`: {'unet': (state, config), 'vae': (state, config), 'text_encoder': (state, config)},
    and SDXL's 'text_encoder_2': (state, config)."""
    tensors = single_file_tensors(pipe_components, dtype)
    with atomic_path(Path(path)) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    return Path(path)


def single_file_tensors(pipe_components: dict, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The tensors of the original-layout checkpoint `save_single_file` writes."""
    unet_state, unet_config = pipe_components["unet"]
    vae_state, vae_config = pipe_components["vae"]
    tensors = {**unet_to_ldm(unet_state, unet_config), **vae_to_ldm(vae_state, vae_config)}
    text_state, text_config = pipe_components["text_encoder"]
    if "text_encoder_2" in pipe_components:  # SDXL
        tensors.update({"conditioner.embedders.0.transformer." + k: v for k, v in _hf_text_model(text_state).items()})
        tensors.update({"conditioner.embedders.1.model." + k: v for k, v in text_encoder_to_open_clip(pipe_components["text_encoder_2"][0]).items()})
    elif text_config.get("hidden_act") == "gelu":
        # SD 2.x: OpenCLIP ViT-H (plain GELU; OpenAI's CLIP uses quick_gelu), stored in open_clip's layout.
        # diffusers keeps the 23 layers SD 2.x reads (the penultimate of 24); the file holds those.
        tensors.update({"cond_stage_model.model." + k: v for k, v in text_encoder_to_open_clip(text_state).items()})
    else:
        tensors.update({"cond_stage_model.transformer." + k: v for k, v in _hf_text_model(text_state).items()})
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    return tensors
