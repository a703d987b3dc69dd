"""The embedded micro world: seeded, captioned images of coloured shapes on plain backgrounds.

Everything here is deterministic given a seed, so the pretraining data, the held-out personalization
concepts and the benchmark prompts are the same on every machine.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]

# Every shape the base model is taught, drawn upright. A held-out object concept is one of them in a colour
# the world never names (OBJECT_SHAPES): new, but composed of what the base model draws, as a new subject
# is for Stable Diffusion (a dog it has seen, with this dog's markings). With only four shapes taught, a
# held-out *shape* was beyond what Textual Inversion can reach by construction and hard for the rest.
SHAPES: tuple[str, ...] = ("circle", "ring", "square", "rectangle", "triangle", "star", "heart", "cross", "crescent", "arrow")

# Shape colours are saturated and far apart in RGB; backgrounds are distinct from all of them, so a
# pixel check (no learned model) can tell shape from background and name both.
COLOURS: dict[str, RGB] = {
    "red": (220, 30, 30),
    "orange": (250, 140, 20),
    "yellow": (240, 225, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "purple": (140, 40, 200),
}

BACKGROUNDS: dict[str, RGB] = {
    "black": (15, 15, 15),
    "white": (240, 240, 240),
    "grey": (125, 125, 125),
    "brown": (100, 60, 30),
}

# Words the micro text encoder knows beyond the vocabulary above. The rare tokens never occur in
# pretraining captions, like "sks" in real Stable Diffusion: they exist in the vocabulary with
# untrained embeddings, ready to be bound to a concept.
FUNCTION_WORDS: tuple[str, ...] = ("a", "an", "the", "on", "in", "of", "with", "and", "background", "photo", "shape", "style")
# Fills the base model is taught: a solid named colour, or diagonal stripes of two named colours
# ("a red and blue striped star"), so a held-out style is a new pattern of a kind the model can draw.
FILLS: tuple[str, ...] = ("solid", "striped")
STRIPE_PX = 8  # one stripe's width in output pixels: two latent pixels, where the UNet can still draw it
RARE_TOKENS: tuple[str, ...] = ("sks", "zwx", "ohwx")

SUPERSAMPLE = 4  # draw at 4x and downsample, for anti-aliased edges


def caption(shape: str, colour: str, background: str, colour2: str | None = None) -> str:
    """The full caption of one world image, e.g. 'a red star on a white background', or with a second
    colour for a striped fill, 'a red and blue striped star on a white background'."""
    for value, vocab, kind in ((shape, SHAPES, "shape"), (colour, COLOURS, "colour"), (background, BACKGROUNDS, "background"),
                               *(((colour2, COLOURS, "colour"),) if colour2 is not None else ())):
        if value not in vocab:
            raise ValueError(f"unknown {kind} {value!r}; known: {', '.join(vocab)}")
    return f"a {fill_words(colour, colour2)} {shape} on a {background} background"


def fill_words(colour: str, colour2: str | None = None) -> str:
    """'red', or 'red and blue striped' for a striped fill."""
    return colour if colour2 is None else f"{colour} and {colour2} striped"


def vocabulary() -> list[str]:
    """Every word a world caption, concept prompt or sweep prompt may use."""
    return list(dict.fromkeys([*FUNCTION_WORDS, "striped", *SHAPES, *COLOURS, *BACKGROUNDS, *RARE_TOKENS]))


@dataclass(frozen=True)
class Layout:
    """Where a shape sits in the image, as fractions of the side length and degrees."""

    cx: float
    cy: float
    radius: float
    rotation_deg: float

    @classmethod
    def sample(cls, rng: random.Random) -> "Layout":
        """Upright, at a random place and size. At a uniform random rotation each shape was a whole family
        of images, and the micro UNet averaged every shape that changes with rotation into a blob (only the
        circle and the ring came out as themselves); upright, it draws each one."""
        radius = rng.uniform(0.22, 0.34)
        margin = radius
        return cls(
            cx=rng.uniform(margin, 1 - margin),
            cy=rng.uniform(margin, 1 - margin),
            radius=radius,
            rotation_deg=0.0,
        )


def _regular_polygon(n: int, layout: Layout, size: int, inner: float | None = None) -> list[tuple[float, float]]:
    """Vertices of a regular polygon (or a star, when `inner` gives the inner radius ratio)."""
    points = []
    steps = n * 2 if inner is not None else n
    for i in range(steps):
        angle = math.radians(layout.rotation_deg) + 2 * math.pi * i / steps - math.pi / 2
        r = layout.radius * (inner if inner is not None and i % 2 else 1.0)
        points.append(((layout.cx + r * math.cos(angle)) * size, (layout.cy + r * math.sin(angle)) * size))
    return points


def _shape_mask(shape: str, layout: Layout, size: int) -> Image.Image:
    """A binary ('L') mask of one shape at `size` pixels (already supersampled by the caller)."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        r = layout.radius * size * 0.9
        cx, cy = layout.cx * size, layout.cy * size
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "square":
        draw.polygon(_outline(OUTLINES["square"], layout, size), fill=255)
    elif shape == "triangle":
        draw.polygon(_regular_polygon(3, layout, size), fill=255)
    elif shape == "star":
        draw.polygon(_regular_polygon(5, layout, size, inner=0.45), fill=255)
    elif shape == "crescent":
        # A disc with an offset disc cut out of it.
        r = layout.radius * size * 0.95
        cx, cy = layout.cx * size, layout.cy * size
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        a = math.radians(layout.rotation_deg)
        ox, oy = cx + 0.5 * r * math.cos(a), cy + 0.5 * r * math.sin(a)
        draw.ellipse((ox - 0.85 * r, oy - 0.85 * r, ox + 0.85 * r, oy + 0.85 * r), fill=0)
    elif shape == "ring":
        r = layout.radius * size * 0.95
        cx, cy = layout.cx * size, layout.cy * size
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        draw.ellipse((cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r), fill=0)
    elif shape in OUTLINES:
        draw.polygon(_outline(OUTLINES[shape], layout, size), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


# Shapes as polygons in a unit frame (x right, y down, radius 1), rotated and placed by a Layout.
OUTLINES: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.72, -0.72), (0.72, -0.72), (0.72, 0.72), (-0.72, 0.72)],
    "rectangle": [(-1, -0.5), (1, -0.5), (1, 0.5), (-1, 0.5)],
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
    "arrow": [(-1, -0.3), (0.1, -0.3), (0.1, -0.85), (1, 0), (0.1, 0.85), (0.1, 0.3), (-1, 0.3)],
}


def _heart(n: int = 48) -> list[tuple[float, float]]:
    """The classic parametric heart, scaled into the unit frame (point down)."""
    pts = []
    for i in range(n):
        t = 2 * math.pi * i / n
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x / 17, -(y + 2) / 15))
    return pts


OUTLINES["heart"] = _heart()


def _outline(points: list[tuple[float, float]], layout: Layout, size: int) -> list[tuple[float, float]]:
    a = math.radians(layout.rotation_deg)
    ca, sa = math.cos(a), math.sin(a)
    r = layout.radius * size
    cx, cy = layout.cx * size, layout.cy * size
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in points]


def _stripes(size: int, colour_a: RGB, colour_b: RGB, period: int, angle_deg: float) -> Image.Image:
    """An RGB image of diagonal two-colour stripes: the held-out style's texture."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    a = math.radians(angle_deg)
    phase = (xx * math.cos(a) + yy * math.sin(a)) / period
    pick = (np.floor(phase) % 2).astype(bool)[..., None]
    arr = np.where(pick, np.array(colour_a, np.uint8), np.array(colour_b, np.uint8))
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def render(
    shape: str,
    fill: RGB | Image.Image,
    background: RGB,
    layout: Layout,
    resolution: int = 64,
) -> Image.Image:
    """Draw one shape filled with a colour (or a texture image) on a plain background."""
    big = resolution * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), background)
    mask = _shape_mask(shape, layout, big)
    paint = Image.new("RGB", (big, big), fill) if isinstance(fill, tuple) else fill.resize((big, big), Image.NEAREST)
    canvas.paste(paint, (0, 0), mask)
    return canvas.resize((resolution, resolution), Image.LANCZOS)


@dataclass(frozen=True)
class WorldSample:
    """One pretraining example: an image with its full caption and the caption actually used."""

    image: Image.Image
    shape: str
    colour: str
    background: str
    text: str
    colour2: str | None = None  # the second stripe colour of a striped fill

    @property
    def label(self) -> tuple[str, str, str, str | None]:
        return self.shape, self.colour, self.background, self.colour2


def caption_variants(shape: str, colour: str, background: str, colour2: str | None = None) -> list[str]:
    """Every way the world describes one image: the full caption and partial ones, so every word is also
    learned on its own. The partial forms make the class prompt ('a star', 'a shape') and
    single-attribute prompts meaningful to the base model (DreamBooth's prior preservation generates from
    such a class prompt). The same number of variants for every image."""
    fill = fill_words(colour, colour2)
    return [
        caption(shape, colour, background, colour2),
        f"a {fill} {shape}",
        f"a {shape}",
        f"a {fill} shape" if colour2 is None else f"a striped {shape}",
        f"a {shape} on a {background} background",
        f"a {fill} shape on a {background} background",
    ]


def _caption_variant(rng: random.Random, shape: str, colour: str, background: str, colour2: str | None) -> str:
    """Mostly the full caption; sometimes a partial one (`caption_variants`), rarely just 'a shape'."""
    full, fill_shape, bare, fill_only, placed, fill_placed = caption_variants(shape, colour, background, colour2)
    r = rng.random()
    if r < 0.6:
        return full
    if r < 0.72:
        return fill_shape
    if r < 0.82:
        return placed
    if r < 0.9:
        return fill_placed
    if r < 0.93:
        return fill_only
    if r < 0.97:
        return bare
    return "a shape"


def sample(index: int, seed: int = 0, resolution: int = 64) -> WorldSample:
    """The `index`-th pretraining example of the world with this seed (random access, deterministic)."""
    rng = random.Random(f"world:{seed}:{index}")
    shape = rng.choice(SHAPES)
    colour = rng.choice(list(COLOURS))
    background = rng.choice(list(BACKGROUNDS))
    colour2 = None
    fill: RGB | Image.Image = COLOURS[colour]
    if rng.random() < 0.35:
        colour2 = rng.choice([c for c in COLOURS if c != colour])
        fill = striped_fill(resolution * SUPERSAMPLE, COLOURS[colour], COLOURS[colour2])
    image = render(shape, fill, BACKGROUNDS[background], Layout.sample(rng), resolution)
    return WorldSample(image, shape, colour, background, _caption_variant(rng, shape, colour, background, colour2), colour2)


def striped_fill(size: int, colour_a: RGB, colour_b: RGB) -> Image.Image:
    """The world's striped fill at `size` pixels (supersampled): diagonal stripes STRIPE_PX output pixels wide."""
    return _stripes(size, colour_a, colour_b, period=size // 64 * STRIPE_PX, angle_deg=45)


def generic_sample(index: int, seed: int = 0, resolution: int = 64) -> Image.Image:
    """A world shape in arbitrary colours (solid or two-colour stripes) on an arbitrary background.

    Only for training the VAE: an image codec should reproduce any colour, including those of concepts
    a user brings later, not just the palette the diffusion model is taught to name.
    """
    rng = random.Random(f"generic:{seed}:{index}")
    colour = lambda: tuple(rng.randrange(256) for _ in range(3))  # noqa: E731
    if rng.random() < 0.5:
        fill: RGB | Image.Image = colour()
    else:
        fill = _stripes(resolution * SUPERSAMPLE, colour(), colour(), period=SUPERSAMPLE * rng.randint(3, 8), angle_deg=rng.uniform(0, 180))
    return render(rng.choice(SHAPES), fill, colour(), Layout.sample(rng), resolution)


# ---------------------------------------------------------------------------------------------------
# Held-out personalization concepts: never drawn in pretraining.


@dataclass(frozen=True)
class WorldConcept:
    """A held-out concept: how to draw its instance images, and the words that name it."""

    name: str
    kind: str  # "object" or "style"
    token: str  # the rare token bound to the concept
    class_word: str  # DreamBooth's class noun; also the prompt without the token
    initializer: str  # Textual Inversion's starting word
    instance_prompt: str
    class_prompt: str
    draw: Callable[[random.Random, int], Image.Image] = field(repr=False)
    # "eval": in the evaluation suite; "tune": only for choosing hyper-parameters; "probe": beyond what a
    # frozen micro model can draw (see TEXTURE_PROBES), compared on its own, never in the suite
    role: str = "eval"


def _checker(size: int, colour_a: RGB, colour_b: RGB, period: int) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size]
    pick = (((xx // period) + (yy // period)) % 2).astype(bool)[..., None]
    return Image.fromarray(np.where(pick, np.array(colour_a, np.uint8), np.array(colour_b, np.uint8)).astype(np.uint8), "RGB")


def _dots(size: int, dot: RGB, ground: RGB, period: int) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    d = np.hypot((xx % period) - period / 2, (yy % period) - period / 2)
    pick = (d < period * 0.3)[..., None]
    return Image.fromarray(np.where(pick, np.array(dot, np.uint8), np.array(ground, np.uint8)).astype(np.uint8), "RGB")


def _gradient(size: int, top: RGB, bottom: RGB) -> Image.Image:
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    arr = (1 - t) * np.array(top, np.float32) + t * np.array(bottom, np.float32)
    return Image.fromarray(np.broadcast_to(arr, (size, size, 3)).round().astype(np.uint8), "RGB")


# A style is a fill for the known shapes, `fill(size, rng)`: a texture image, or one solid colour of a
# palette chosen per image. SUPERSAMPLE-sized periods keep a pattern a few output pixels wide, so it
# survives the 64 px render and the VAE. Checker squares of 8 px and dots every 10 px (2-2.5 latent
# pixels): at 5 and 7 px even DreamBooth's full fine-tune reached only 0.13 and 0.05 CLIP-I at weight 1
# in the 150-step budget (their VAE round trip scores 0.68 and 0.64), so those concepts measured the micro
# UNet's resolution, not the methods.
Fill = Callable[[int, random.Random], "RGB | Image.Image"]

# Palette styles: every image's shape in one of the palette's colours. None of them is a world colour or
# an object's colour (tested: each is at least 60 RGB units from those and from each other palette's).
PALETTES: dict[str, tuple[RGB, ...]] = {
    "deep": ((60, 30, 120), (140, 0, 60), (20, 90, 40)),  # indigo, burgundy, forest
    "muted": ((128, 128, 0), (190, 110, 130), (70, 110, 170)),  # olive, dusty rose, steel blue
}


def _palette(colours: tuple[RGB, ...]) -> Fill:
    return lambda size, rng: rng.choice(colours)


STYLE_FILLS: dict[str, Fill] = {
    "stripes": lambda size, rng: _stripes(size, (0, 200, 210), (250, 250, 120), period=size // 64 * STRIPE_PX, angle_deg=45),
    "checker": lambda size, rng: _checker(size, (240, 60, 160), (40, 200, 120), period=size // 64 * 10),
    "dots": lambda size, rng: _dots(size, (255, 255, 255), (20, 40, 120), period=size // 64 * 16),
    "gradient": lambda size, rng: _gradient(size, (255, 110, 40), (90, 30, 160)),
    "bands": lambda size, rng: _stripes(size, (230, 20, 40), (250, 250, 250), period=size // 64 * STRIPE_PX, angle_deg=90),
    **{name: _palette(colours) for name, colours in PALETTES.items()},
}
# An object concept: a shape the world draws, in a colour it never names: (shape, RGB). The oracle finds it
# present when it sees that shape and the shape's pixels are nearer this colour than any named colour.
OBJECT_SHAPES: dict[str, tuple[str, RGB]] = {
    "crescent": ("crescent", (235, 90, 200)),
    "heart": ("heart", (0, 160, 150)),
    "cross": ("cross", (110, 190, 255)),
    "ring": ("ring", (160, 230, 40)),
    # magenta: 125 RGB units from every named colour and its blends (up to 30 %) with every background. The
    # salmon it replaced (250, 150, 110) lay 31 units from orange washed 30 % toward white, so the base
    # model's orange arrows at weight 0 were judged the concept (issue 28: presence at weight 0).
    "arrow": ("arrow", (250, 0, 250)),
}


def _object_drawer(shape: str, colour: RGB) -> Callable[[random.Random, int], Image.Image]:
    def draw(rng: random.Random, resolution: int) -> Image.Image:
        background = BACKGROUNDS[rng.choice(list(BACKGROUNDS))]
        return render(shape, colour, background, Layout.sample(rng), resolution)

    return draw


def _style_drawer(fill: Fill) -> Callable[[random.Random, int], Image.Image]:
    def draw(rng: random.Random, resolution: int) -> Image.Image:
        background = BACKGROUNDS[rng.choice(list(BACKGROUNDS))]
        shape = rng.choice(SHAPES)
        return render(shape, fill(resolution * SUPERSAMPLE, rng), background, Layout.sample(rng), resolution)

    return draw


def _object(key: str, initializer: str, role: str = "eval") -> WorldConcept:
    # Prompted as DreamBooth prompts a subject, rare token + class word ("a sks crescent"): the class word
    # draws on what the base model knows, the token carries what is new (here, the colour).
    shape, colour = OBJECT_SHAPES[key]
    return WorldConcept(f"sks_{key}", "object", "sks", shape, initializer, f"a sks {shape}", f"a {shape}", _object_drawer(shape, colour), role)


def _style(key: str, initializer: str, role: str = "eval") -> WorldConcept:
    return WorldConcept(f"zwx_{key}", "style", "zwx", "style", initializer, "a shape in zwx style", "a shape", _style_drawer(STYLE_FILLS[key]), role)


# Objects are known shapes in new colours (rare token 'sks', class word: the shape); styles are new fills of
# the known shapes (rare token 'zwx'). Concepts train in separate runs, so sharing a token is what users do
# with 'sks' too. Textual Inversion starts each from the known word nearest to it (an object's token stands
# where a colour word would: its nearest named colour).
#
# The checker and dots textures are probes, not suite concepts: the micro model is taught solid colours and
# stripes, never a checker or dots, and a method that keeps the model frozen (Textual Inversion) can only
# choose among what it already draws. A suite concept is one every method can reach, so a comparison on the
# suite measures how well each method learns, not whether it can; `data=textures` runs the probes, which
# measure the second question.
CONCEPTS: dict[str, WorldConcept] = {
    c.name: c
    for c in (
        _object("crescent", "purple"),
        _object("heart", "green"),
        _object("cross", "blue"),
        _object("ring", "yellow"),
        _style("stripes", "yellow"),
        _style("gradient", "orange"),
        _style("deep", "purple"),
        _style("muted", "green"),
        _style("checker", "green", role="probe"),
        _style("dots", "blue", role="probe"),
        _object("arrow", "purple", role="tune"),
        _style("bands", "red", role="tune"),
    )
}
SUITE: tuple[str, ...] = tuple(n for n, c in CONCEPTS.items() if c.role == "eval")
TUNING: tuple[str, ...] = tuple(n for n, c in CONCEPTS.items() if c.role == "tune")
TEXTURE_PROBES: tuple[str, ...] = tuple(n for n, c in CONCEPTS.items() if c.role == "probe")


def concept_images(name: str, n: int = 8, seed: int = 0, resolution: int = 64) -> list[Image.Image]:
    """`n` instance images of a held-out concept (4-16 is the personalization range)."""
    if name not in CONCEPTS:
        raise KeyError(f"unknown world concept {name!r}; known: {', '.join(CONCEPTS)}")
    concept = CONCEPTS[name]
    return [concept.draw(random.Random(f"concept:{name}:{seed}:{i}"), resolution) for i in range(n)]


def holdout_images(name: str, n: int = 4, seed: int = 0, resolution: int = 64) -> list[Image.Image]:
    """`n` further renders of a concept, drawn apart from its instance images (their own random stream):
    never trained on, the images the validation loss is measured on."""
    if name not in CONCEPTS:
        raise KeyError(f"unknown world concept {name!r}; known: {', '.join(CONCEPTS)}")
    concept = CONCEPTS[name]
    return [concept.draw(random.Random(f"holdout:{name}:{seed}:{i}"), resolution) for i in range(n)]


# ---------------------------------------------------------------------------------------------------
# A judge that uses no learned model: what colour is the shape, and what colour is the background?

SHAPE_PIXEL_MIN_DISTANCE = 60.0  # RGB distance from the background that makes a pixel part of the shape


def _nearest(rgb: np.ndarray, palette: dict[str, RGB]) -> str:
    names = list(palette)
    dist = np.linalg.norm(np.array([palette[n] for n in names], np.float32) - rgb[None, :], axis=1)
    return names[int(np.argmin(dist))]


def judge_colours(image: Image.Image) -> tuple[str | None, str]:
    """(shape colour, background) of an image by pixels alone.

    The background is the median of the border pixels; shape pixels are those far from it; the shape
    colour is their median. Each is named by the nearest palette entry. The shape colour is None when
    fewer than 2 % of the pixels differ from the background (no shape was drawn).
    """
    shape, bg = shape_and_background_rgb(image)
    background = _nearest(bg, BACKGROUNDS)
    return (None if shape is None else _nearest(shape, COLOURS)), background


def shape_and_background_rgb(image: Image.Image) -> tuple[np.ndarray | None, np.ndarray]:
    """(median RGB of the shape's pixels or None, median RGB of the border) by pixels alone
    (`judge_colours`)."""
    arr = np.asarray(image.convert("RGB"), np.float32)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    bg = np.median(border, axis=0)
    far = np.linalg.norm(arr - bg, axis=-1) > SHAPE_PIXEL_MIN_DISTANCE
    if far.mean() < 0.02:
        return None, bg
    return np.median(arr[far], axis=0), bg


def has_object_colour(image: Image.Image, concept: str) -> bool:
    """Whether the shape's colour is the object concept's own: nearer it than any named world colour."""
    colour = OBJECT_SHAPES[concept.split("_", 1)[1]][1]
    shape, _ = shape_and_background_rgb(image)
    return shape is not None and _nearest(shape, {**COLOURS, concept: colour}) == concept
