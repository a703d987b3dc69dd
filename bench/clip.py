"""A CLIP feature extractor over open_clip: the micro CLIP by default, any local open_clip model too."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache

import torch
from PIL import Image


class CachedImageEncoder:
    """Unit-norm image features, each distinct image (by content hash) encoded once per encoder, so
    reference sets such as the instance images cost nothing after their first use. A subclass says how a
    batch of RGB images becomes features (`_encode`) and their size (`dim`): CLIP here, DINO in
    metrics.dino."""

    def __init__(self, name: str, batch: int) -> None:
        self.name, self.batch = name, batch
        self._cache: dict[str, torch.Tensor] = {}  # image content hash -> unit feature

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def _encode(self, images: list[Image.Image]) -> torch.Tensor:
        """Features [N, dim] of RGB images, not yet normalised."""
        raise NotImplementedError

    def clear(self) -> None:
        """Forget cached features. A feature depends (in the last float bits) on the batch it was encoded
        in, so scoring that must not depend on what this process scored before starts here."""
        self._cache.clear()

    @staticmethod
    def content_hash(image: Image.Image) -> str:
        rgb = image.convert("RGB")
        return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()

    @torch.no_grad()
    def images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Unit features of `images`, in their order."""
        keys = [self.content_hash(im) for im in images]
        todo = [(k, im) for k, im in dict(zip(keys, images)).items() if k not in self._cache]
        for i in range(0, len(todo), self.batch):
            chunk = todo[i : i + self.batch]
            feats = torch.nn.functional.normalize(self._encode([im.convert("RGB") for _, im in chunk]).float(), dim=-1)
            self._cache.update({k: f for (k, _), f in zip(chunk, feats)})
        if not keys:
            return torch.empty(0, self.dim)
        return torch.stack([self._cache[k] for k in keys])


class ClipEncoder(CachedImageEncoder):
    """Unit-norm image and text embeddings from one open_clip model."""

    def __init__(self, model, preprocess, tokenizer, name: str, batch: int = 128) -> None:
        super().__init__(name, batch)
        self.model, self.preprocess, self.tokenizer = model.eval(), preprocess, tokenizer

    @property
    def dim(self) -> int:
        return int(self.model.visual.output_dim)

    def _encode(self, images: list[Image.Image]) -> torch.Tensor:
        return self.model.encode_image(torch.stack([self.preprocess(im) for im in images]))

    @torch.no_grad()
    def texts(self, texts: Sequence[str]) -> torch.Tensor:
        feats = [self.model.encode_text(self.tokenizer(list(texts[i : i + self.batch]))).float() for i in range(0, len(texts), self.batch)]
        return torch.nn.functional.normalize(torch.cat(feats), dim=-1)

    def classify(self, images: Sequence[Image.Image], labels: Sequence[str], template: str = "{}") -> list[str]:
        """Zero-shot: the label whose prompt is most similar to each image."""
        sims = self.images(images) @ self.texts([template.format(label) for label in labels]).T
        return [labels[i] for i in sims.argmax(dim=1).tolist()]


@lru_cache(maxsize=4)
def load_encoder(spec: str = "micro") -> ClipEncoder:
    """'micro' (the embedded micro CLIP) or an open_clip spec such as 'local-dir:/path/to/clip'."""
    import open_clip

    from bench import zoo

    if spec == "micro":
        model, preprocess, tokenizer = zoo.micro_clip()
        return ClipEncoder(model, preprocess, tokenizer, "microclip")
    model, _, preprocess = open_clip.create_model_and_transforms(spec)
    return ClipEncoder(model, preprocess, open_clip.get_tokenizer(spec), spec.rsplit("/", 1)[-1])
