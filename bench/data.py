"""Personalization data: a concept's instance images and the words that name it.

Two sources, one result: a held-out concept of the embedded micro world, or a user's folder of
images (optional `.txt` caption beside each image; kohya's `10_sks dog` folder naming understood).
"""

from __future__ import annotations

import hashlib
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bench import world

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
KINDS = ("object", "style")
KOHYA_FOLDER = re.compile(r"^(?P<repeats>\d+)_(?P<prompt>.+)$")
# Words that are never a concept's token: binding 'of' in 'a photo of dog' would retrain a word every
# prompt uses. A token is a rare word ('sks', 'ohwx') placed just before the class word.
NOT_A_TOKEN = frozenset("a an the of in on at by for to with and or my our your his her their this that photo picture image drawing painting portrait style art".split())
MIN_SIDE_PX = 8


class ConceptDataError(ValueError):
    """Concept data that cannot be used; the message names the file, folder or config key."""


@dataclass
class ConceptData:
    """What every method trains on: the same images, prompts and words for all of them."""

    name: str
    images: list[Image.Image]  # RGB, square, at the model's resolution
    captions: list[str]  # one per image: its .txt caption, or the instance prompt
    instance_prompt: str  # contains `token`, e.g. "a sks shape"
    class_prompt: str  # the same without the token, for prior preservation, e.g. "a shape"
    token: str  # the rare token bound to the concept
    class_word: str
    initializer: str  # Textual Inversion's starting word
    kind: str = "object"  # "object" or "style": the statistics report each kind apart as well as overall
    repeats: int = 1
    source: str = field(default="")
    # Held-out images of the concept, never trained on, with their captions: the validation loss's images
    # (fresh renders for a world concept; `data.holdout` images set aside from a user's folder).
    holdout: list[Image.Image] = field(default_factory=list)
    holdout_captions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.images:
            raise ConceptDataError(f"concept {self.name!r} has no images ({self.source})")
        if len(self.captions) != len(self.images):
            raise ConceptDataError(f"concept {self.name!r}: {len(self.captions)} captions for {len(self.images)} images")
        if self.token not in self.instance_prompt.split():
            raise ConceptDataError(
                f"concept {self.name!r}: instance prompt {self.instance_prompt!r} does not contain its token {self.token!r}"
            )
        if len(self.holdout_captions) != len(self.holdout):
            raise ConceptDataError(f"concept {self.name!r}: {len(self.holdout_captions)} captions for {len(self.holdout)} held-out images")
        if self.kind not in KINDS:
            raise ConceptDataError(f"data.kind: concept {self.name!r} has kind {self.kind!r}; use one of {', '.join(KINDS)}")

    @property
    def world_concept(self) -> str | None:
        """The micro world concept these images are renders of, or None (a user's folder)."""
        return self.name if self.source == f"micro world concept {self.name}" else None

    def fingerprint(self) -> str:
        """A hash of exactly what a method trains on (pixels, captions, words), so a training stage's key
        changes when the data does, whatever config or folder it came from."""
        h = hashlib.sha256()
        for part in (self.name, self.kind, self.instance_prompt, self.class_prompt, self.token, self.class_word, self.initializer, str(self.repeats), *self.captions):
            h.update(part.encode() + b"\0")
        for im in self.images:
            h.update(f"{im.size}{im.mode}".encode() + im.tobytes())
        return h.hexdigest()[:16]

    def holdout_fingerprint(self) -> str:
        """A hash of the held-out images and captions: what the validation loss reads besides the run."""
        h = hashlib.sha256()
        for caption, im in zip(self.holdout_captions, self.holdout):
            h.update(caption.encode() + b"\0" + f"{im.size}{im.mode}".encode() + im.tobytes())
        return h.hexdigest()[:16]


def to_8bit(image: Image.Image) -> Image.Image:
    """Integer and float single-channel modes as 8-bit 'L' with their range kept. Pillow's own convert
    clips instead of scaling: a 16-bit PNG (mode I;16 or I) would become a white square."""
    if image.mode.startswith("I;16") or image.mode == "I":
        arr = np.asarray(image, dtype=np.float64)
        # 16-bit data in 'I' (how Pillow opens many 16-bit greyscale PNGs) is scaled like I;16.
        scale = 257.0 if image.mode.startswith("I;16") or arr.max(initial=0) > 255 else 1.0
        return Image.fromarray(np.clip(np.round(arr / scale), 0, 255).astype(np.uint8), "L")
    if image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        arr = arr * 255.0 if np.nanmax(arr, initial=0) <= 1.0 else arr  # float images in [0, 1] or [0, 255]
        return Image.fromarray(np.clip(np.round(np.nan_to_num(arr)), 0, 255).astype(np.uint8), "L")
    return image


def to_model_image(image: Image.Image, resolution: int) -> Image.Image:
    """RGB, EXIF-rotated, 16-bit and float scaled to 8 bits, transparent parts on white, shorter side
    scaled to `resolution`, centre-cropped."""
    image = to_8bit(ImageOps.exif_transpose(image))
    if "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    image = image.convert("RGB")
    return ImageOps.fit(image, (resolution, resolution), Image.BICUBIC, centering=(0.5, 0.5))


def read_image(path: Path, resolution: int) -> Image.Image:
    """One image file, ready for the model; a clear error naming the file when it cannot be used."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its pixel limit and twice it; an image that large is refused either way.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                if min(im.size) < MIN_SIDE_PX:
                    raise ConceptDataError(f"{path}: image is {im.size[0]}x{im.size[1]} px, smaller than {MIN_SIDE_PX} px")
                return to_model_image(im, resolution)
    except ConceptDataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ConceptDataError(f"{path}: refused as a possible decompression bomb ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ConceptDataError(f"{path}: not a readable image ({e})") from e


def load_folder(
    folder: Path,
    resolution: int,
    instance_prompt: str | None = None,
    class_word: str | None = None,
    initializer: str | None = None,
    kind: str = "object",
    key: str = "data.path",
    holdout: int = 0,
) -> ConceptData:
    """A user's concept folder: images, `.txt` captions beside them, kohya `N_token class` naming. `key` is
    the config key that named the folder, for messages."""
    folder = Path(folder)
    if folder.is_file():
        raise ConceptDataError(f"{key}: {folder} is a file; a concept is a folder of images")
    if not folder.is_dir():
        raise ConceptDataError(f"{key}: concept folder {folder} does not exist")
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    except OSError as e:
        raise ConceptDataError(f"{key}: cannot read concept folder {folder} ({e.strerror or e})") from None
    if not files:
        raise ConceptDataError(f"{key}: concept folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    repeats = 1
    m = KOHYA_FOLDER.match(folder.name)
    if m:
        repeats = int(m["repeats"])
        if repeats == 0:
            raise ConceptDataError(f"{key}: {folder} has 0 repeats in its kohya name, and kohya skips such folders; rename it (e.g. '10_{m['prompt']}')")
        instance_prompt = instance_prompt or m["prompt"].strip()
    if not instance_prompt:
        raise ConceptDataError(
            f"data.instance_prompt: folder {folder} is not named like '10_sks dog'; set the instance prompt "
            "(e.g. data.instance_prompt='a sks dog')"
        )
    words = instance_prompt.split()
    named_by_folder = m is not None and instance_prompt == m["prompt"].strip()  # not set by data.instance_prompt
    token = words[0] if named_by_folder else _rare_token(words, folder)
    class_word = class_word or (words[-1] if len(words) > 1 else "")
    if not class_word or class_word == token:
        raise ConceptDataError(f"data.class_word: cannot tell the class word from {instance_prompt!r}; set it")
    if token.lower() in NOT_A_TOKEN:
        where = f"{key}: the folder name {folder.name!r}" if named_by_folder else "data.instance_prompt"
        raise ConceptDataError(f"{where}: {instance_prompt!r} would bind the concept to the common word {token!r}; put a rare token "
                               f"just before the class word (e.g. 'a photo of sks {class_word}')")
    if not 0 <= holdout < len(files):
        raise ConceptDataError(f"data.holdout: {holdout} held-out images of the {len(files)} in {folder} would leave "
                               f"{'none' if holdout >= len(files) else 'a negative number'} to train on; set aside fewer (0 turns the validation loss off)")
    images = [read_image(p, resolution) for p in files]
    captions = [read_caption(p.with_suffix(".txt")) or instance_prompt for p in files]
    # The last `holdout` images in name order are set aside, never trained on (the validation loss's images).
    cut = len(files) - holdout
    class_prompt = " ".join(w for w in words if w != token)
    log.info("concept %s: %d images from %s (repeats %d, %d held out)", folder.name, cut, folder, repeats, holdout)
    return ConceptData(
        name=re.sub(r"[^A-Za-z0-9_.-]+", "_", folder.name),
        images=images[:cut],
        captions=captions[:cut],
        holdout=images[cut:],
        holdout_captions=captions[cut:],
        instance_prompt=instance_prompt,
        class_prompt=class_prompt,
        token=token,
        class_word=class_word,
        initializer=initializer or class_word,
        kind=kind,
        repeats=repeats,
        source=str(folder),
    )


def read_caption(path: Path) -> str:
    """The caption beside an image ('' when there is none); UTF-8 only, refused by name otherwise."""
    if not path.is_file():
        return ""
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as e:
        raise ConceptDataError(f"{path}: caption is not UTF-8 text ({e.reason} at byte {e.start}); re-save it as UTF-8") from None


def _rare_token(words: list[str], folder: Path) -> str:
    """The token of a prompt like 'a photo of sks dog': the word just before the class word."""
    if len(words) < 2:
        raise ConceptDataError(f"data.instance_prompt: {' '.join(words)!r} needs a token and a class word (for {folder})")
    return words[-2]


WORLD_HOLDOUT = 4  # fresh renders of a world concept for the validation loss, unless data.holdout says otherwise


def load_world_concept(name: str, n_images: int, resolution: int, seed: int = 0, holdout: int = WORLD_HOLDOUT) -> ConceptData:
    """A held-out concept of the micro world, generated on the fly, with `holdout` fresh renders of it
    (other draws of the same concept, never trained on)."""
    if name not in world.CONCEPTS:
        raise ConceptDataError(f"data.concept: unknown world concept {name!r}; known: {', '.join(world.CONCEPTS)}")
    if not 1 <= n_images <= 64:
        raise ConceptDataError(f"data.n_images: {n_images} is outside 1..64")
    c = world.CONCEPTS[name]
    if not 0 <= holdout <= 64:
        raise ConceptDataError(f"data.holdout: {holdout} is outside 0..64")
    images = world.concept_images(name, n_images, seed, resolution)
    holdout_images = world.holdout_images(name, holdout, seed, resolution)
    return ConceptData(
        name=name,
        images=images,
        captions=[c.instance_prompt] * len(images),
        holdout=holdout_images,
        holdout_captions=[c.instance_prompt] * len(holdout_images),
        instance_prompt=c.instance_prompt,
        class_prompt=c.class_prompt,
        token=c.token,
        class_word=c.class_word,
        initializer=c.initializer,
        kind=c.kind,
        source=f"micro world concept {name}",
    )


def load_concepts(cfg, resolution: int) -> list[ConceptData]:
    """Every concept a `data` config selects: `data.concepts` (micro-world concept names or kohya-named
    folders) and `data.path` (one folder, with optional prompt overrides), in that order."""
    concepts = []
    holdout = cfg.get("holdout")  # None: fresh renders for world concepts, nothing set aside from a folder
    if holdout is not None and (isinstance(holdout, bool) or not isinstance(holdout, int) or holdout < 0):
        raise ConceptDataError(f"data.holdout: {holdout!r} is not a whole number >= 0")
    world_holdout = WORLD_HOLDOUT if holdout is None else int(holdout)
    folder_holdout = 0 if holdout is None else int(holdout)
    for i, entry in enumerate(cfg.get("concepts") or []):
        entry = str(entry)
        if entry in world.CONCEPTS:
            concepts.append(load_world_concept(entry, int(cfg.get("n_images", 8)), resolution, int(cfg.get("seed", 0)), world_holdout))
        elif "/" in entry or Path(entry).is_dir():
            concepts.append(load_folder(Path(entry), resolution, kind=str(cfg.get("kind") or "object"), key=f"data.concepts[{i}]", holdout=folder_holdout))
        else:
            raise ConceptDataError(f"data.concepts[{i}]: {entry!r} is neither a micro-world concept ({', '.join(world.CONCEPTS)}) nor a folder")
    if cfg.get("path"):
        concepts.append(load_folder(Path(cfg["path"]), resolution, cfg.get("instance_prompt"), cfg.get("class_word"), cfg.get("initializer"), str(cfg.get("kind") or "object"),
                                    holdout=folder_holdout))
    if not concepts:
        raise ConceptDataError("data.concepts: no concept selected; name micro-world concepts (e.g. data=suite) or set data.path to a folder")
    names = [c.name for c in concepts]
    if len(set(names)) != len(names):
        raise ConceptDataError(f"data.concepts: a concept is selected twice ({', '.join(names)})")
    return concepts
