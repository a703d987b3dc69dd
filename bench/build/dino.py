"""Build step: train micro DINO, the micro world's self-supervised image encoder, into bench/zoo/micro_dino/.

    python -m bench.build.dino        # about 10 minutes on 2 cores; the output is committed

The recipe is DINO's self-distillation (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision
Transformers"): a student ViT and a teacher that is its exponential moving average see different crops of
the same image; the student learns to give, for every crop, the teacher's softmax over K prototypes of a
global crop, the teacher's output centred (a running mean subtracted) and sharpened (a low temperature),
which together keep it from collapsing. No labels and no captions: the images are world renders of every
shape in arbitrary colours, solid or striped at any angle (`world.generic_sample`, what the VAE is trained
on), half of them through the micro VAE, as generated images come back. Multi-crop: two global crops
(scale 0.4-1, 64 px) and four local ones (scale 0.15-0.4, 32 px), flips, blur, and DINO's colour jitter and
greyscale. A first build without the colour augmentations (colour is what an object concept is here) learnt
colour and nothing else: its views agree by colour alone, and nearest-neighbour shape agreement stayed at
the untrained backbone's 0.17 (results/benchmarks/micro_dino.md has the build as shipped).

The backbone is a transformers `Dinov2Model` (the class of facebook/dinov2-*), saved with a
`BitImageProcessor` config beside it, so the micro encoder and a real DINOv2 folder load and score through
one code path (`metrics.dino`). Only the backbone is kept; the projection head is training scaffolding,
as in DINO.
"""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bench import world
from bench.build.oracle import vae_round_trip
from bench.images import to_unit
from bench.io import atomic_dir

log = logging.getLogger(__name__)

MICRO_DINO_DIR = Path(__file__).resolve().parents[1] / "zoo" / "micro_dino"
BACKBONE = dict(image_size=64, patch_size=8, hidden_size=96, num_hidden_layers=4, num_attention_heads=3, intermediate_size=384,
                layerscale_value=1.0, drop_path_rate=0.0)
PREPROCESSOR = dict(do_resize=True, size={"shortest_edge": 64}, resample=3, do_center_crop=True, crop_size={"height": 64, "width": 64},
                    do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_convert_rgb=True)


def render_set(n: int, seed: int) -> torch.Tensor:
    """uint8 [n, 3, 64, 64] unlabelled world renders."""
    return torch.stack([torch.from_numpy(np.array(world.generic_sample(i, seed), dtype=np.uint8)).permute(2, 0, 1) for i in range(n)])


class Head(torch.nn.Module):
    """DINO's projection head: a 3-layer MLP to a bottleneck, L2-normalised, then a weight-normalised
    linear layer onto the prototypes (its norm fixed at 1)."""

    def __init__(self, dim: int, prototypes: int = 1024, hidden: int = 512, bottleneck: int = 128) -> None:
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, bottleneck))
        self.last = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(bottleneck, prototypes, bias=False))
        self.last.parametrizations.weight.original0.data.fill_(1.0)
        self.last.parametrizations.weight.original0.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(F.normalize(self.mlp(x), dim=-1))


def crops(x: torch.Tensor, n: int, size: int, scale: tuple[float, float], gen: torch.Generator, **colour) -> list[torch.Tensor]:
    """`n` random resized crops (square, area share in `scale`) of every image in the float batch `x`,
    each flipped at random and blurred at random, resized to `size`."""
    b, _, h, w = x.shape
    out = []
    for _ in range(n):
        area = scale[0] + (scale[1] - scale[0]) * torch.rand(b, generator=gen)
        side = (area.sqrt() * h).clamp(8, h)
        cx = (side / 2 + torch.rand(b, generator=gen) * (w - side)) / w * 2 - 1
        cy = (side / 2 + torch.rand(b, generator=gen) * (h - side)) / h * 2 - 1
        s = side / w
        theta = torch.zeros(b, 2, 3)
        flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
        theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = s * flip, s, cx, cy
        grid = F.affine_grid(theta, (b, 3, size, size), align_corners=False)
        c = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        sigma = float(torch.rand(1, generator=gen)) * 1.0
        if sigma > 0.1:
            k = torch.exp(-torch.arange(-2, 3, dtype=torch.float32) ** 2 / (2 * sigma**2))
            k = (k / k.sum()).repeat(3, 1)
            c = F.conv2d(F.pad(c, (2, 2, 0, 0), mode="replicate"), k[:, None, None, :], groups=3)
            c = F.conv2d(F.pad(c, (0, 0, 2, 2), mode="replicate"), k[:, None, :, None], groups=3)
        out.append(colour_augment(c, gen, **colour))
    return out


def colour_augment(x: torch.Tensor, gen: torch.Generator, strength: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1), grey_p: float = 0.2) -> torch.Tensor:
    """DINO's colour augmentations on a float [-1, 1] batch: with probability 0.8 colour jitter (brightness
    0.4, contrast 0.4, saturation 0.2, hue 0.1, as torchvision's ColorJitter draws them), with probability
    0.2 greyscale. Without them the views of an image in this world agree by colour alone, and the
    features learnt nothing else (nearest-neighbour shape agreement 0.17, the untrained backbone's)."""
    b = len(x)
    u = (x + 1) / 2
    grey_w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    jitter = (torch.rand(b, generator=gen) < 0.8).view(b, 1, 1, 1)

    def factor(amount: float) -> torch.Tensor:
        return (1 + (torch.rand(b, generator=gen) * 2 - 1) * amount).view(b, 1, 1, 1)

    brightness, contrast, saturation, hue = strength
    j = (u * factor(brightness)).clamp(0, 1)
    mean = (j * grey_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    j = ((j - mean) * factor(contrast) + mean).clamp(0, 1)
    grey = (j * grey_w).sum(1, keepdim=True)
    j = ((j - grey) * factor(saturation) + grey).clamp(0, 1)
    # hue: a rotation about the grey axis (YIQ chroma plane) by up to `hue` of a turn
    angle = (torch.rand(b, generator=gen) * 2 - 1) * hue * 2 * math.pi
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    rgb = torch.linalg.inv(yiq)
    cos, sin = angle.cos(), angle.sin()
    rot = torch.zeros(b, 3, 3)
    rot[:, 0, 0], rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = 1, cos, -sin, sin, cos
    m = rgb @ rot @ yiq  # [b, 3, 3]
    j = torch.einsum("bij,bjhw->bihw", m, j).clamp(0, 1)
    u = torch.where(jitter, j, u)
    to_grey = (torch.rand(b, generator=gen) < grey_p).view(b, 1, 1, 1)
    u = torch.where(to_grey, (u * grey_w).sum(1, keepdim=True).expand_as(u), u)
    return u * 2 - 1


def training_renders(n_images: int, seed: int) -> torch.Tensor:
    """Both recipes' training set: unlabelled world renders, the second half through the micro VAE."""
    images = render_set(n_images, seed)
    half = n_images // 2
    return torch.cat([images[:half], vae_round_trip(images[half:])])


def warmup_cosine(step: int, steps: int, lr: float) -> float:
    """The rate at `step`: a linear warm-up over the first tenth, then cosine decay (both recipes)."""
    warmup = max(1, steps // 10)
    return lr * min(1.0, (step + 1) / warmup) * (0.5 * (1 + math.cos(math.pi * step / steps)) if step >= warmup else 1.0)


def training_batches(images: torch.Tensor, opt: torch.optim.Optimizer, steps: int, batch: int, lr: float, seed: int, desc: str):
    """Both recipes' loop: per step, set the rate (`warmup_cosine`) and draw a batch of renders as floats in
    [-1, 1]; yields (step, batch, the generator the augmentations draw from, the progress bar)."""
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc=desc)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = warmup_cosine(step, steps, lr)
        yield step, to_unit(images[torch.randint(0, len(images), (batch,), generator=gen)]), gen, bar


def save_backbone(out: Path, backbone, trained: dict) -> None:
    """The backbone as a `Dinov2Model` folder with its image processor and the build's settings."""
    from transformers import BitImageProcessor

    with atomic_dir(out) as tmp:
        backbone.save_pretrained(tmp, safe_serialization=True)
        BitImageProcessor(**PREPROCESSOR).save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(trained, indent=2) + "\n")


def cosine(step: int, total: int, start: float, end: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * step / total))


def train(out: Path = MICRO_DINO_DIR, n_images: int = 16000, steps: int = 2500, batch: int = 64, seed: int = 0, lr: float = 5e-4,
          prototypes: int = 1024, teacher_temp: tuple[float, float] = (0.04, 0.07)) -> dict:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    random.seed(seed)
    images = training_renders(n_images, seed)
    config = Dinov2Config(**BACKBONE)
    student, teacher = Dinov2Model(config), Dinov2Model(config)
    s_head, t_head = Head(config.hidden_size, prototypes), Head(config.hidden_size, prototypes)
    teacher.load_state_dict(student.state_dict())
    t_head.load_state_dict(s_head.state_dict())
    for p in [*teacher.parameters(), *t_head.parameters()]:
        p.requires_grad = False
    params = [p for p in [*student.parameters(), *s_head.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.04)
    center = torch.zeros(1, t_head.last.weight.shape[0])
    for step, x, gen, bar in training_batches(images, opt, steps, batch, lr, seed, "micro DINO"):
        globals_ = crops(x, 2, 64, (0.4, 1.0), gen)
        locals_ = crops(x, 4, 32, (0.15, 0.4), gen)
        t_temp = teacher_temp[0] + (teacher_temp[1] - teacher_temp[0]) * min(1.0, step / max(1, steps // 3))  # DINO's warm-up of the teacher temperature
        with torch.no_grad():
            t_out = [t_head(teacher(g).pooler_output) for g in globals_]
            t_prob = [F.softmax((t - center) / t_temp, dim=-1) for t in t_out]
        s_out = [s_head(student(c).pooler_output) for c in globals_ + locals_]
        loss, terms = 0.0, 0
        for i, tp in enumerate(t_prob):
            for j, so in enumerate(s_out):
                if j == i:  # a crop never teaches itself
                    continue
                loss = loss + torch.sum(-tp * F.log_softmax(so / 0.1, dim=-1), dim=-1).mean()
                terms += 1
        loss = loss / terms
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 3.0)
        opt.step()
        with torch.no_grad():
            m = cosine(step, steps, 0.996, 1.0)
            for pt, ps in zip([*teacher.parameters(), *t_head.parameters()], [*student.parameters(), *s_head.parameters()]):
                pt.mul_(m).add_(ps.detach(), alpha=1 - m)
            center.mul_(0.9).add_(torch.cat(t_out).mean(0, keepdim=True), alpha=0.1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    teacher.eval()
    trained = {"recipe": "DINO self-distillation (Caron et al. 2021)", "n_images": n_images, "steps": steps, "batch": batch, "seed": seed, "lr": lr,
               "prototypes": prototypes, "teacher_temp": list(teacher_temp)}
    save_backbone(out, teacher, trained)  # the teacher is DINO's output network
    return trained


# SimCLR's colour distortion at strength 1 (brightness, contrast, saturation 0.8, hue 0.2; greyscale p 0.2):
# Chen et al. found that crops of one image agree by their colour histogram unless colour is distorted hard.
SIMCLR_COLOUR = dict(strength=(0.8, 0.8, 0.8, 0.2), grey_p=0.2)


def train_simclr(out: Path = MICRO_DINO_DIR, n_images: int = 16000, steps: int = 2500, batch: int = 128, seed: int = 0, lr: float = 5e-4,
                 temperature: float = 0.2) -> dict:
    """SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations"):
    two crops of each image, each colour-distorted, are pulled together and pushed from the batch's other
    2(N-1) crops (InfoNCE on a projection head's L2-normalised output). The negatives keep it from the
    collapse DINO's centring and sharpening have to prevent, which under colour augmentations left DINO's
    teacher near uniform here. Same renders, backbone and files as DINO's build."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    random.seed(seed)
    images = training_renders(n_images, seed)
    config = Dinov2Config(**BACKBONE)
    backbone = Dinov2Model(config)
    head = torch.nn.Sequential(torch.nn.Linear(config.hidden_size, 512), torch.nn.GELU(), torch.nn.Linear(512, 128))
    params = [*backbone.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.1)
    positives = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)])  # crop i of view a pairs with crop i of view b
    for step, x, gen, bar in training_batches(images, opt, steps, batch, lr, seed, "micro DINO (SimCLR)"):
        a, b = crops(x, 2, 64, (0.3, 1.0), gen, **SIMCLR_COLOUR)
        z = F.normalize(head(backbone(torch.cat([a, b])).pooler_output), dim=-1)
        sims = z @ z.T / temperature
        sims.fill_diagonal_(float("-inf"))  # a crop is not its own positive
        loss = F.cross_entropy(sims, positives)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 3.0)
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    backbone.eval()
    trained = {"recipe": "SimCLR (Chen et al. 2020)", "n_images": n_images, "steps": steps, "batch": batch, "seed": seed, "lr": lr, "temperature": temperature}
    save_backbone(out, backbone, trained)
    return trained


def main(argv: list[str] | None = None) -> None:
    from bench.build import start, trainer_arguments

    p = trainer_arguments("Train micro DINO (self-supervised, on world renders) into bench/zoo/micro_dino/", MICRO_DINO_DIR, 16000, 2500)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--prototypes", type=int, default=1024, help="K, the projection head's output size")
    p.add_argument("--teacher-temp", type=float, nargs=2, default=(0.04, 0.07), metavar=("START", "END"), help="warmed up over the first third of the steps")
    p.add_argument("--recipe", choices=("dino", "simclr"), default="dino")
    p.add_argument("--batch", type=int, default=None, help="default: 64 (dino), 128 (simclr)")
    p.add_argument("--temperature", type=float, default=0.2, help="SimCLR's InfoNCE temperature")
    args = p.parse_args(argv)
    start(args)
    if args.recipe == "simclr":
        trained = train_simclr(args.out, args.n_images, args.steps, batch=args.batch or 128, seed=args.seed, lr=args.lr, temperature=args.temperature)
    else:
        trained = train(args.out, args.n_images, args.steps, batch=args.batch or 64, seed=args.seed, lr=args.lr, prototypes=args.prototypes, teacher_temp=tuple(args.teacher_temp))
    log.info("micro DINO written to %s: %s", args.out, trained)


if __name__ == "__main__":
    main()
