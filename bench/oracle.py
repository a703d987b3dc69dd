"""A concept-presence oracle for the micro world: a judge that knows every held-out concept.

The micro world renders each held-out concept itself, so unlike benchmarks on real photos this one can
check what its metrics claim against ground truth. The oracle is a small CNN with two heads, trained only
on renders (never on the generator's output, and the generator never sees it):

- shape: the world's shapes and "none" (blank or uniform images);
- fill: "solid", the world's "striped" and every held-out style fill (a texture, or any colour of a
  palette style).

An object concept (`sks_crescent`: a crescent in a colour the world never names) is present when the
shape head says its shape and the shape's pixels are nearer its colour than any named colour
(`world.has_object_colour`); a style concept (`zwx_checker`) when the fill head says its fill. Renders pass through the micro VAE and are blurred
and noised in training, so the judge reads decoded images the way it reads crisp ones.

    python -m bench.oracle            # train into bench/zoo/oracle/ (a few minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from bench import world, zoo
from bench.io import atomic_dir
from bench.pretrain import to_unit

log = logging.getLogger(__name__)

ORACLE_DIR = zoo.ORACLE_DIR
WEIGHTS_FILE = "oracle.safetensors"
CONFIG_FILE = "oracle.json"
NONE = "none"
SOLID = "solid"
STRIPED = "striped"
SHAPE_CLASSES = (*dict.fromkeys((*world.SHAPES, *(shape for shape, _ in world.OBJECT_SHAPES.values()))), NONE)
FILL_CLASSES = (SOLID, STRIPED, *world.STYLE_FILLS)
PALETTE_MARGIN = 40.0  # RGB distance from a palette colour inside which a random solid fill is redrawn


class OracleNet(nn.Module):
    """Five conv stages (64 -> 2 px), global pooling, one linear head per question. Small on purpose:
    it trains in minutes on 2 CPU cores and judges a sweep in well under a second."""

    def __init__(self, n_shapes: int, n_fills: int, width: int = 16) -> None:
        super().__init__()
        self.width = width
        chans = [3, width, 2 * width, 4 * width, 8 * width, 8 * width]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans, chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.shape_head = nn.Linear(chans[-1], n_shapes)
        self.fill_head = nn.Linear(chans[-1], n_fills)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x).mean(dim=(2, 3))
        return self.shape_head(h), self.fill_head(h)


def concept_target(name: str) -> tuple[str, str]:
    """('shape', class) for an object concept, ('fill', class) for a style concept of the world."""
    if name not in world.CONCEPTS:
        raise KeyError(f"the oracle judges world concepts only; {name!r} is not one ({', '.join(world.CONCEPTS)})")
    concept = world.CONCEPTS[name]
    key = name.split("_", 1)[1]
    if concept.kind == "object":
        return "shape", world.OBJECT_SHAPES[key][0]
    return "fill", key


# ------------------------------------------------------------------------------------------ data


def _random_rgb(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randrange(256) for _ in range(3))  # type: ignore[return-value]


def _solid_rgb(rng: random.Random) -> tuple[int, int, int]:
    """A random solid fill that no palette style could have painted: the palettes' colours are their
    concepts, so a 'solid' example near one would teach the judge that the concept is no concept."""
    while True:
        rgb = _random_rgb(rng)
        if all(np.linalg.norm(np.subtract(rgb, c)) >= PALETTE_MARGIN for colours in world.PALETTES.values() for c in colours):
            return rgb


def render_example(rng: random.Random, resolution: int = 64) -> tuple[Image.Image, str, str]:
    """One labelled render: any shape with any fill on any background, or a blank."""
    background = world.BACKGROUNDS[rng.choice(list(world.BACKGROUNDS))] if rng.random() < 0.7 else _random_rgb(rng)
    if rng.random() < 0.06:
        # Degenerate images are a class of their own: a generator collapsing to a flat image has drawn nothing.
        image = Image.new("RGB", (resolution, resolution), background)
        return image, NONE, SOLID
    shape = rng.choice(SHAPE_CLASSES[:-1])
    r = rng.random()
    if r < 0.15:
        fill_name = STRIPED
        a, b = rng.sample(list(world.COLOURS.values()), 2)
        fill = world.striped_fill(resolution * world.SUPERSAMPLE, a, b)
    elif r < 0.55:
        fill_name = SOLID
        palette = [*world.COLOURS.values(), *(c for _, c in world.OBJECT_SHAPES.values())]
        fill: tuple | Image.Image = rng.choice(palette) if rng.random() < 0.6 else _solid_rgb(rng)
        if sum(abs(a - b) for a, b in zip(fill, background)) < 90:  # a shape the colour of its background is not drawn
            fill = tuple(255 - c for c in background)
    else:
        fill_name = rng.choice(FILL_CLASSES[2:])
        fill = world.STYLE_FILLS[fill_name](resolution * world.SUPERSAMPLE, rng)
    return world.render(shape, fill, background, world.Layout.sample(rng), resolution), shape, fill_name


def render_set(n: int, seed: int, resolution: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 images [n, 3, H, W] with shape and fill class indices."""
    images = np.empty((n, resolution, resolution, 3), np.uint8)
    shapes, fills = np.empty(n, np.int64), np.empty(n, np.int64)
    for i in tqdm(range(n), desc="render oracle set", leave=False):
        image, shape, fill = render_example(random.Random(f"oracle:{seed}:{i}"), resolution)
        images[i] = np.asarray(image)
        shapes[i], fills[i] = SHAPE_CLASSES.index(shape), FILL_CLASSES.index(fill)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(shapes), torch.from_numpy(fills)


@torch.no_grad()
def vae_round_trip(images_u8: torch.Tensor, batch: int = 256, progress: bool = True) -> torch.Tensor:
    """Images as the micro SD decoder would give them back: what generated images look like, minus the UNet."""
    from diffusers import AutoencoderKL

    from bench import zoo

    vae = AutoencoderKL.from_pretrained(zoo.micro_sd_dir() / "vae").eval()
    out = []
    for i in tqdm(range(0, len(images_u8), batch), desc="VAE round trip", leave=False, disable=not progress):
        x = to_unit(images_u8[i : i + batch])
        y = vae.decode(vae.encode(x).latent_dist.mean).sample
        out.append(((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
    return torch.cat(out)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Float [-1, 1] batch -> the same images flipped, rotated by quarter turns, blurred and noised at random."""
    n = len(x)
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    x = torch.rot90(x, int(torch.randint(0, 4, (1,), generator=gen)), dims=(-2, -1))
    sigma = torch.rand(n, generator=gen) * 1.2
    kernel_x = torch.arange(-2, 3, dtype=torch.float32)
    k = torch.exp(-kernel_x[None] ** 2 / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    k = k / k.sum(1, keepdim=True)  # per-image separable Gaussian; sigma near 0 is the identity
    c = x.shape[1]
    x = x.reshape(1, n * c, *x.shape[-2:])
    kk = k.repeat_interleave(c, 0)
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), kk[:, None, None, :], groups=n * c)
    x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), kk[:, None, :, None], groups=n * c)
    x = x.reshape(n, c, *x.shape[-2:])
    x = x + torch.randn(x.shape, generator=gen) * (torch.rand(n, 1, 1, 1, generator=gen) * 0.06)
    return x.clamp(-1, 1)


# ------------------------------------------------------------------------------------------ train / load


def train(out: Path = ORACLE_DIR, n_images: int = 24000, steps: int = 3000, batch: int = 64, seed: int = 0, lr: float = 3e-3) -> dict:
    torch.manual_seed(seed)
    images, shapes, fills = render_set(n_images, seed)
    # Half the set as the decoder returns it; augmentation varies both halves further.
    half = n_images // 2
    images = torch.cat([images[:half], vae_round_trip(images[half:])])
    net = OracleNet(len(SHAPE_CLASSES), len(FILL_CLASSES))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc="oracle")
    net.train()
    for step in bar:
        idx = torch.randint(0, n_images, (batch,), generator=gen)
        x = augment(to_unit(images[idx]), gen)
        shape_logits, fill_logits = net(x)
        # A blank image has no fill to name: its fill loss is left out.
        has_fill = shapes[idx] != SHAPE_CLASSES.index(NONE)
        loss = F.cross_entropy(shape_logits, shapes[idx]) + F.cross_entropy(fill_logits[has_fill], fills[idx][has_fill])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    net.eval()
    config = {"shape_classes": list(SHAPE_CLASSES), "fill_classes": list(FILL_CLASSES), "width": net.width, "resolution": images.shape[-1],
              "trained": {"n_images": n_images, "steps": steps, "batch": batch, "seed": seed, "lr": lr}}
    from safetensors.torch import save_file

    with atomic_dir(out) as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return config


class Oracle:
    """The trained judge: per image, the shape and fill it sees, and whether a world concept is present."""

    def __init__(self, folder: Path = ORACLE_DIR) -> None:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{folder / WEIGHTS_FILE} is missing; train the oracle with `python -m bench.oracle`")
        self.config = json.loads((folder / CONFIG_FILE).read_text())
        self.shape_classes, self.fill_classes = self.config["shape_classes"], self.config["fill_classes"]
        self.net = OracleNet(len(self.shape_classes), len(self.fill_classes), self.config["width"])
        self.net.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        self.net.eval()
        self.resolution = int(self.config["resolution"])

    @torch.no_grad()
    def classify(self, images: list[Image.Image], batch: int = 256) -> list[tuple[str, str]]:
        """(shape, fill) per image."""
        out: list[tuple[str, str]] = []
        for i in range(0, len(images), batch):
            arr = np.stack([np.asarray(im.convert("RGB").resize((self.resolution, self.resolution), Image.BICUBIC)) for im in images[i : i + batch]])
            x = to_unit(torch.from_numpy(arr).permute(0, 3, 1, 2))
            shape_logits, fill_logits = self.net(x)
            out += [(self.shape_classes[s], self.fill_classes[f]) for s, f in zip(shape_logits.argmax(1).tolist(), fill_logits.argmax(1).tolist())]
        return out

    def present(self, images: list[Image.Image], concept: str) -> list[bool]:
        """Whether each image shows the world concept `concept` (its shape in its colour for an object, its
        fill for a style)."""
        head, target = concept_target(concept)
        judged = self.classify(images)
        if head == "shape":
            return [shape == target and world.has_object_colour(image, concept) for (shape, _), image in zip(judged, images)]
        return [shape != NONE and fill == target for shape, fill in judged]


@lru_cache(maxsize=1)
def load_oracle() -> Oracle:
    return Oracle()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train the micro world's concept-presence oracle into bench/zoo/oracle/")
    p.add_argument("--out", type=Path, default=ORACLE_DIR)
    p.add_argument("--n-images", type=int, default=24000)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    config = train(args.out, args.n_images, args.steps, seed=args.seed)
    log.info("oracle written to %s: %s", args.out, config)


if __name__ == "__main__":
    main()
