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

    python -m bench.build.oracle      # train it into bench/zoo/oracle/ (a few minutes on 2 cores)
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from bench import world, zoo
from bench.images import to_unit

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


class Oracle:
    """The trained judge: per image, the shape and fill it sees, and whether a world concept is present."""

    def __init__(self, folder: Path = ORACLE_DIR) -> None:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{folder / WEIGHTS_FILE} is missing; train the oracle with `python -m bench.build.oracle`")
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


