"""Pretrain the embedded micro models on the micro world: `python -m bench.build.pretrain`.

Stages, each written atomically and skipped when its output exists (so an interrupted run resumes):
tokenizer -> micro CLIP -> VAE -> latent cache -> UNet phase 1 -> phase 2. The result
is a diffusers Stable Diffusion folder (bench/zoo/micro_sd) and an open_clip `local-dir:` folder
(bench/zoo/micro_clip). To retrain one model, delete its folder under bench/zoo and rerun; the work
folder keeps the VAE, the latents and phase 1, so only what is missing is recomputed.

Design choices, and why:
- 16x16x4 latents (VAE x4 on 64 px): an x8 VAE of this size learned shapes and colours far too
  slowly on 2 cores; the UNet attends to the text at 8x8 and 4x4, as SD does at its lower resolutions.
- v-prediction with a zero-terminal-SNR schedule and trailing timesteps (the SD 2.1 recipe plus
  Lin et al. 2023): colour and background are the image mean, which a non-zero terminal SNR leaks
  during training and withholds at sampling, exactly the attributes the world asks the model to bind.
- The text encoder is micro CLIP's text tower, converted to a transformers `CLIPTextModel` and frozen
  (`--text-encoder clip`), as SD 1.x conditions on OpenAI CLIP's text tower and SD 2.x on OpenCLIP's: a
  token's embedding then means what contrastive training made it mean, the rare tokens stay untrained,
  and a method that trains an embedding (Textual Inversion) works in the space SD's users work in.
  `--text-encoder joint` trains a text encoder from scratch with the UNet (the earlier builds).
- Min-SNR loss weighting, EMA weights, 10 % empty captions for classifier-free guidance.
- Two SD phases (5000 steps from scratch, then 7000 from phase 1's EMA weights at a lower rate): shapes
  were still blobby after phase 1 alone (micro-CLIP shape score 0.62); the second phase's snapshots
  rose to 0.70 after 1000 steps and 0.83 after 2000 (96 images each), and the finished phase 2
  scores 0.88 (192 images; results/benchmarks/base_quality.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from bench import world
from bench.images import to_unit
from bench.io import atomic_dir

log = logging.getLogger(__name__)

ZOO = Path(__file__).resolve().parent / "zoo"
TEXT_MAX_LENGTH = 32
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


# ----------------------------------------------------------------------------------------- tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte maps to a printable character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def build_tokenizer(words: list[str], max_length: int = TEXT_MAX_LENGTH):
    """A CLIP BPE tokenizer whose vocabulary is the byte alphabet plus each world word as one token.

    Unknown words still tokenize (into characters), as in real CLIP. BOS and EOS take the two highest
    ids, so open_clip's argmax pooling finds the end of text, like the real 49 408-token vocabulary.
    """
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    vocab_tokens = alphabet + [c + "</w>" for c in alphabet]
    merges: list[str] = []

    def make(extra_merges: list[str]) -> CLIPTokenizer:
        tokens = vocab_tokens + [a + b for a, b in (m.split(" ") for m in extra_merges)]
        vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
        vocab[BOS] = len(vocab)
        vocab[EOS] = len(vocab)
        return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in extra_merges], model_max_length=max_length)

    # Grow merges like BPE training does, until every word is a single token: a new merge has the
    # lowest priority, so it only fires where no earlier merge applies, and every word converges.
    for _ in range(64):
        tok = make(merges)
        new = []
        for word in words:
            pieces = tok.tokenize(word)
            if len(pieces) > 1:
                new.append(f"{pieces[0]} {pieces[1]}")
        if not new:
            return tok
        merges.extend(m for m in dict.fromkeys(new) if m not in merges)
    raise RuntimeError("tokenizer merges did not converge")


# ---------------------------------------------------------------------------------------- data


def world_tensors(n: int, seed: int, resolution: int) -> tuple[torch.Tensor, list[str], list[tuple]]:
    """Images as uint8 [n, 3, H, W], the captions used, and the (shape, colour, background, colour2) labels."""
    images = np.empty((n, resolution, resolution, 3), np.uint8)
    texts, labels = [], []
    for i in tqdm(range(n), desc="render world", leave=False):
        s = world.sample(i, seed, resolution)
        images[i] = np.asarray(s.image)
        texts.append(s.text)
        labels.append(s.label)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), texts, labels


def cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


# ---------------------------------------------------------------------------------------- micro CLIP


def micro_clip_config(vocab_size: int) -> dict:
    return {
        "model_cfg": {
            "embed_dim": 128,
            # A small ModifiedResNet (open_clip's RN50 tower at width 16, one block per stage): its
            # convolutions learn shape from few steps, where a ViT of this size reached 0.48 zero-shot
            # shape accuracy after 300 steps against the ResNet's 0.92 and 1.00 by 500 (measured here).
            "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16},
            "text_cfg": {
                "context_length": TEXT_MAX_LENGTH,
                "vocab_size": vocab_size,
                "width": 128,
                "heads": 4,
                "layers": 3,
                "hf_tokenizer_name": "local-dir",
                "pool_type": "argmax",
            },
        },
        "preprocess_cfg": {"size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic"},
    }


def clip_caption_variants(label: tuple) -> list[str]:
    """Every way a world image may be described: full, partial and single-attribute captions.

    Micro CLIP sees all of them, so it can score the short prompts (e.g. 'a star', 'a red shape') that
    zero-shot classification and personalization prompts use, not just full captions."""
    return world.caption_variants(*label)


def train_micro_clip(out: Path, tokenizer, images: torch.Tensor, labels: list[tuple], steps: int, batch: int, seed: int) -> None:
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    config = micro_clip_config(len(tokenizer))
    model = open_clip.CLIP(**config["model_cfg"])
    variants = [clip_caption_variants(label) for label in labels]
    n_variants = len(variants[0])
    flat = [t for vs in variants for t in vs]
    ids = tokenizer(flat, padding="max_length", max_length=TEXT_MAX_LENGTH, truncation=True, return_tensors="pt").input_ids.view(len(labels), n_variants, -1)
    # Same caption = positive pair: the world repeats captions, and plain CLIP targets would push
    # identical captions apart as false negatives.
    index = {t: i for i, t in enumerate(dict.fromkeys(flat))}
    caption_ids = torch.tensor([index[t] for t in flat]).view(len(labels), n_variants)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    bar = tqdm(range(steps), desc="micro CLIP")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = 1e-3 * cosine_lr(step, steps, 100)
        idx = torch.randint(0, len(labels), (batch,), generator=gen)
        which = torch.randint(0, n_variants, (batch,), generator=gen)
        x = to_unit(images[idx])
        # Light augmentation: a random flip keeps shapes recognisable under any orientation.
        if torch.rand((), generator=gen) < 0.5:
            x = x.flip(-1)
        img_f, txt_f, scale = model(x, ids[idx, which])
        logits = scale * img_f @ txt_f.T
        # A caption is a positive for every image it truly describes (partial captions match many).
        cap = caption_ids[idx, which]
        same = (caption_ids[idx][:, :, None] == cap[None, None, :]).any(1).float()
        # `same` is not symmetric (a partial caption matches many images), so each direction gets its
        # own normalised targets.
        to_text = same / same.sum(1, keepdim=True)
        to_image = same.T / same.T.sum(1, keepdim=True)
        loss = 0.5 * (torch.sum(-to_text * F.log_softmax(logits, 1), 1).mean() + torch.sum(-to_image * F.log_softmax(logits.T, 1), 1).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    with atomic_dir(out) as tmp:
        tokenizer.save_pretrained(tmp)
        (tmp / "open_clip_config.json").write_text(json.dumps(config, indent=2))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "open_clip_model.safetensors"))


# ---------------------------------------------------------------------------------------- VAE


def make_vae():
    from diffusers import AutoencoderKL

    # x4 (16x16x4 latents): an x8 VAE of this size learned shapes and colours far too slowly on 2 cores.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def train_vae(out: Path, images: torch.Tensor, steps: int, batch: int, seed: int) -> None:
    torch.manual_seed(seed)
    vae = make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc="VAE")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = 2e-3 * cosine_lr(step, steps, 100)
        x = to_unit(images[torch.randint(0, len(images), (batch,), generator=gen)])
        # Random 32 px crops: the VAE is convolutional, and a crop costs a quarter of a full image.
        i, j = torch.randint(0, x.shape[-1] - 31, (2,), generator=gen).tolist()
        x = x[..., i : i + 32, j : j + 32]
        posterior = vae.encode(x).latent_dist
        # The posterior mean is decoded (and cached later): a deterministic bottleneck trains much
        # faster here than sampling; L1 keeps edges crisp; the tiny KL keeps the latent bounded.
        recon = vae.decode(posterior.mean).sample
        loss = F.l1_loss(recon, x) + 0.5 * F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        lat = torch.cat([vae.encode(to_unit(images[i : i + 256])).latent_dist.mean for i in range(0, 2048, 256)])
    vae.register_to_config(scaling_factor=float(1.0 / lat.std()))
    with atomic_dir(out) as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    vae.eval()
    chunks = []
    for i in tqdm(range(0, len(images), batch), desc="encode latents", leave=False):
        chunks.append(vae.encode(to_unit(images[i : i + batch])).latent_dist.mean * vae.config.scaling_factor)
    return torch.cat(chunks)


# ---------------------------------------------------------------------------------------- SD


def make_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        # Cross-attention at 8x8 and 4x4 (and the 4x4 mid block), as SD attends at its lower resolutions;
        # attention at 16x16 as well cost ~60 % more per training step on 2 cores.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        cross_attention_dim=128,
        attention_head_dim=4,
        norm_num_groups=16,
    )


def make_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=TEXT_MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def clip_text_encoder(clip_dir: Path):
    """Micro CLIP's text tower (open_clip) as a transformers `CLIPTextModel` with the same weights: per
    token, its last hidden state is open_clip's `ln_final` output, which SD's UNet attends to. Frozen."""
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    text_cfg = json.loads((clip_dir / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    width, layers = int(text_cfg["width"]), int(text_cfg["layers"])
    model = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=int(text_cfg["vocab_size"]),
            hidden_size=width,
            intermediate_size=4 * width,  # open_clip's mlp_ratio 4
            num_hidden_layers=layers,
            num_attention_heads=int(text_cfg["heads"]),
            max_position_embeddings=int(text_cfg["context_length"]),
            hidden_act="gelu",  # open_clip's nn.GELU (not quick_gelu)
            layer_norm_eps=1e-5,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    clip = load_file(str(clip_dir / "open_clip_model.safetensors"))
    state = {
        "embeddings.token_embedding.weight": clip["token_embedding.weight"],
        "embeddings.position_embedding.weight": clip["positional_embedding"],
        "final_layer_norm.weight": clip["ln_final.weight"],
        "final_layer_norm.bias": clip["ln_final.bias"],
    }
    for i in range(layers):
        src, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = clip[f"{src}attn.in_proj_{kind}"].chunk(3)
            state |= {f"{dst}self_attn.q_proj.{kind}": q, f"{dst}self_attn.k_proj.{kind}": k, f"{dst}self_attn.v_proj.{kind}": v,
                      f"{dst}self_attn.out_proj.{kind}": clip[f"{src}attn.out_proj.{kind}"],
                      f"{dst}layer_norm1.{kind}": clip[f"{src}ln_1.{kind}"], f"{dst}layer_norm2.{kind}": clip[f"{src}ln_2.{kind}"],
                      f"{dst}mlp.fc1.{kind}": clip[f"{src}mlp.c_fc.{kind}"], f"{dst}mlp.fc2.{kind}": clip[f"{src}mlp.c_proj.{kind}"]}
    missing, unexpected = model.load_state_dict({k: v.contiguous() for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"micro CLIP -> CLIPTextModel: missing {missing}, unexpected {unexpected}")
    return model.requires_grad_(False).eval()


def make_schedulers():
    from diffusers import DDIMScheduler, DDPMScheduler

    common = dict(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        clip_sample=False,
        steps_offset=1,
    )
    return DDPMScheduler(**common), DDIMScheduler(**common, set_alpha_to_one=False)


def train_sd(
    out: Path,
    vae_dir: Path,
    tokenizer,
    latents: torch.Tensor,
    texts: list[str],
    steps: int,
    batch: int,
    seed: int,
    lr: float,
    init: Path | None = None,
    snapshot_every: int = 0,
    snapshot_dir: Path | None = None,
    clip_dir: Path | None = None,
) -> None:
    """Train the UNet on cached latents and write a diffusers pipeline folder to `out`.

    `clip_dir`: condition on micro CLIP's frozen text tower (`clip_text_encoder`); None trains a text
    encoder from scratch jointly with the UNet.
    `init`: a pipeline folder to start from instead of fresh weights (the refine phase).
    `snapshot_every`: also write the EMA pipeline to `<snapshot_dir>/step<k>` every k steps, to watch
    quality while a long run goes on (`benchmarks/base_quality.py --model DIR` scores a snapshot).
    """
    from safetensors.torch import load_file

    torch.manual_seed(seed)
    unet = make_unet()
    text_encoder = clip_text_encoder(clip_dir) if clip_dir is not None else make_text_encoder(tokenizer)
    if init is not None:
        # Fresh modules plus the saved weights (strict), so phase 2 has exactly phase 1's architecture.
        unet.load_state_dict(load_file(init / "unet" / "diffusion_pytorch_model.safetensors"))
        if clip_dir is None:
            text_encoder.load_state_dict(load_file(init / "text_encoder" / "model.safetensors"))
    train_sched, infer_sched = make_schedulers()
    ids = tokenizer(texts, padding="max_length", max_length=TEXT_MAX_LENGTH, truncation=True, return_tensors="pt").input_ids
    empty_ids = tokenizer([""], padding="max_length", max_length=TEXT_MAX_LENGTH, return_tensors="pt").input_ids
    trained = [unet] if clip_dir is not None else [unet, text_encoder]
    params = [p for m in trained for p in m.parameters()]
    frozen_states = None
    if clip_dir is not None:
        # A frozen encoder gives every caption the same states at every step: encode each once.
        with torch.no_grad():
            frozen_states = torch.cat([text_encoder(ids[i : i + 1024])[0] for i in range(0, len(ids), 1024)])
            empty_state = text_encoder(empty_ids)[0]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    alphas = train_sched.alphas_cumprod
    snr = alphas / (1 - alphas).clamp(min=1e-8)
    # Min-SNR-5 weighting for v-prediction: min(snr, 5) / (snr + 1).
    weight_t = torch.minimum(snr, torch.tensor(5.0)) / (snr + 1)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc="UNet" if clip_dir is not None else "text encoder + UNet")
    t0 = time.time()
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr * cosine_lr(step, steps, 200)
        idx = torch.randint(0, len(texts), (batch,), generator=gen)
        x0 = latents[idx]
        tok = ids[idx]
        drop = torch.rand(batch, generator=gen) < 0.1
        if frozen_states is not None:
            states = torch.where(drop[:, None, None], empty_state, frozen_states[idx])
        else:
            states = text_encoder(torch.where(drop[:, None], empty_ids, tok))[0]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        xt = train_sched.add_noise(x0, noise, t)
        target = train_sched.get_velocity(x0, noise, t)
        pred = unet(xt, t, encoder_hidden_states=states).sample
        loss = (weight_t[t] * F.mse_loss(pred, target, reduction="none").mean((1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        if step % 25 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", s_per_step=f"{(time.time() - t0) / (step + 1):.3f}")
        if snapshot_dir is not None and snapshot_every and (step + 1) % snapshot_every == 0 and step + 1 < steps:
            _save_sd(snapshot_dir / f"step{step + 1}", vae_dir, tokenizer, unet, text_encoder, infer_sched, params, ema, len(trained) == 2)
    _save_sd(out, vae_dir, tokenizer, unet, text_encoder, infer_sched, params, ema, len(trained) == 2)


def _save_sd(out: Path, vae_dir: Path, tokenizer, unet, text_encoder, scheduler, params: list, ema: list, text_trained: bool) -> None:
    """Write the EMA weights as a diffusers pipeline folder, leaving the training weights untouched."""
    import copy

    from diffusers import AutoencoderKL, StableDiffusionPipeline

    unet, text_encoder = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    # deepcopy keeps parameter order, so the copies' parameters line up with `ema` (built from `params`).
    copies = list(unet.parameters()) + (list(text_encoder.parameters()) if text_trained else [])
    assert len(copies) == len(params) == len(ema)
    with torch.no_grad():
        for p, e in zip(copies, ema):
            p.copy_(e)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(vae_dir),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)


# ---------------------------------------------------------------------------------------- main


def _latents(work: Path, images: torch.Tensor, args: argparse.Namespace) -> tuple[torch.Tensor, Path]:
    """The cached, scaled VAE latents of the world images (training the VAE first if needed)."""
    from diffusers import AutoencoderKL

    vae_dir = work / "vae"
    if not vae_dir.exists() and args.vae is not None:
        shutil.copytree(args.vae, vae_dir)
    if not vae_dir.exists():
        generic = np.stack([np.asarray(world.generic_sample(i, args.seed, 64)) for i in range(args.n_images // 2)])
        vae_images = torch.cat([images, torch.from_numpy(generic).permute(0, 3, 1, 2)])
        train_vae(vae_dir, vae_images, args.vae_steps, 32, args.seed)
    latents_file = work / "latents.pt"
    if not latents_file.exists():
        latents = encode_latents(AutoencoderKL.from_pretrained(vae_dir), images)
        torch.save(latents, str(latents_file) + ".tmp")
        Path(str(latents_file) + ".tmp").replace(latents_file)
    return torch.load(latents_file, weights_only=True), vae_dir


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ZOO, help="folder that receives micro_sd/ and micro_clip/")
    p.add_argument("--work", type=Path, default=Path("results/pretrain_work"), help="intermediate stages")
    p.add_argument("--n-images", type=int, default=24000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip-steps", type=int, default=2500)
    p.add_argument("--vae-steps", type=int, default=2500)
    p.add_argument("--sd-steps", type=int, default=5000)
    p.add_argument("--sd-batch", type=int, default=32)
    p.add_argument("--sd-lr", type=float, default=5e-4)
    p.add_argument("--refine-steps", type=int, default=7000, help="second SD phase, from the first phase's weights")
    p.add_argument("--refine-lr", type=float, default=3e-4)
    p.add_argument("--snapshot-every", type=int, default=1000, help="write EMA snapshots of the refine phase to --work")
    p.add_argument("--text-encoder", choices=("clip", "joint"), default="clip",
                   help="clip: micro CLIP's text tower, frozen (as SD); joint: a text encoder trained with the UNet")
    p.add_argument("--vae", type=Path, default=None,
                   help="a diffusers AutoencoderKL folder to use instead of training one (copied into --work)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    from bench.build import start

    start(args)

    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(world.vocabulary())
    log.info("tokenizer: %d tokens", len(tokenizer))
    images, texts, labels = world_tensors(args.n_images, args.seed, 64)

    clip_dir = args.out / "micro_clip"
    if not clip_dir.exists():
        train_micro_clip(clip_dir, tokenizer, images, labels, args.clip_steps, 128, args.seed)
    sd_dir = args.out / "micro_sd"
    if not sd_dir.exists():
        # The VAE and the latent cache are only inputs of the SD stage: a run that retrains only the
        # micro CLIP never builds them.
        latents, vae_dir = _latents(work, images, args)
        # Two phases, each with its own warm-up and cosine decay: phase 1 from scratch, phase 2 from
        # phase 1's EMA weights at a lower peak rate. Phase 1's folder is kept, so a longer or
        # different phase 2 can be tried without repeating phase 1.
        base_dir = work / "sd_phase1"
        frozen_clip = clip_dir if args.text_encoder == "clip" else None
        if not base_dir.exists():
            train_sd(base_dir, vae_dir, tokenizer, latents, texts, args.sd_steps, args.sd_batch, args.seed, args.sd_lr, clip_dir=frozen_clip)
        if args.refine_steps:
            train_sd(
                sd_dir, vae_dir, tokenizer, latents, texts, args.refine_steps, args.sd_batch, args.seed + 1, args.refine_lr,
                init=base_dir, snapshot_every=args.snapshot_every, snapshot_dir=work / "sd_phase2_snapshots", clip_dir=frozen_clip,
            )
        else:
            shutil.copytree(base_dir, sd_dir)
    log.info("micro models in %s", args.out)


if __name__ == "__main__":
    main()
