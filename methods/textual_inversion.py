"""Textual Inversion: learn new token vectors only; the whole model stays frozen.

Weight `w` interpolates each vector from its initializer word (w=0) to the learned one (w=1).
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.data import ConceptData
from methods.base import Artifact, Method, MethodConfigError, load_tensors, save_a1111_pt, save_tensors, tensor_file_content

SAFETENSORS_FILE = "learned_embeds.safetensors"
A1111_FILE = "embedding_a1111.pt"


def unload(pipe, tokens: list[str]) -> None:
    """diffusers' unload, then the embedding table in storage of its own size: the unload keeps the
    remaining rows as a view of the larger table, which would leave the base model holding the removed
    rows' memory and every later run's memory reading a few KiB higher than the first one's."""
    pipe.unload_textual_inversion(tokens)
    table = pipe.text_encoder.get_input_embeddings().weight
    if table.untyped_storage().nbytes() != table.numel() * table.element_size():
        table.data = table.data.clone()


def replace_word(text: str, word: str, by: str) -> str:
    """`text` with every whole-word occurrence of `word` replaced (the concept token, never a substring)."""
    return " ".join(by if w == word else w for w in text.split())


class TextualInversion(Method):
    name = "textual_inversion"
    weight_meaning = ("each token vector moved from its initializer word's embedding (w = 0: the prompt reads e.g. 'a circle shape', "
                      "so its weight-0 images are not the other methods' 'a sks shape') to the learned vector (w = 1); the UNet is "
                      "untouched, so drift on prompts without the token is 0 by construction")
    trains_text = True
    weight_decay = 0.0
    batched_weights = True

    def __init__(self, lr: float = 5e-3, num_vectors: int = 1, initializer: str | None = None) -> None:
        super().__init__(lr)
        if not isinstance(num_vectors, int) or not 1 <= num_vectors <= 75:
            raise MethodConfigError(f"method.num_vectors: must be an integer in 1..75, got {num_vectors!r}")
        self.num_vectors = num_vectors
        self.initializer = initializer  # None: the concept's own initializer word
        self._hook = None
        self._placeholder: str | None = None
        self._many: dict[float, str] = {}  # weight -> its placeholder, while apply_many is in force

    @staticmethod
    def placeholder(data: ConceptData) -> str:
        return f"<{data.token}>"

    def prompt(self, text: str, data: ConceptData) -> str:
        """'a sks shape' -> 'a <sks> shape' (the pipeline expands a multi-vector token itself)."""
        return replace_word(text, data.token, self.placeholder(data))

    def base_prompt(self, text: str, data: ConceptData) -> str:
        """At weight 0 every vector is the initializer word's embedding: 'a sks shape' -> 'a circle shape'."""
        init = " ".join([self.initializer or data.initializer] * self.num_vectors)
        return replace_word(text, data.token, init)

    def init_vectors(self, pipe, word: str) -> torch.Tensor:
        """The initializer word's input embedding, repeated for each vector (averaged over its sub-tokens)."""
        ids = pipe.tokenizer(word, add_special_tokens=False).input_ids
        if not ids:
            raise MethodConfigError(f"method.initializer: {word!r} tokenizes to nothing")
        table = pipe.text_encoder.get_input_embeddings().weight
        return table[torch.tensor(ids, device=table.device)].detach().float().mean(0, keepdim=True).repeat(self.num_vectors, 1).cpu()

    def _tokens(self, placeholder: str) -> list[str]:
        return [placeholder] + [f"{placeholder}_{i}" for i in range(1, self.num_vectors)]

    def prepare(self, pipe, data: ConceptData) -> list[torch.nn.Parameter]:
        self._placeholder = self.placeholder(data)
        init = self.init_vectors(pipe, self.initializer or data.initializer)
        pipe.load_textual_inversion(init.clone(), token=self._placeholder)
        first = pipe.tokenizer.convert_tokens_to_ids(self._tokens(self._placeholder)[0])
        self.vectors = torch.nn.Parameter(init.clone().to(pipe.text_encoder.device))

        # Only the new vectors train: the embedding table's output is patched at their positions, so the
        # optimizer never touches (or keeps moments for) the rest of the table.
        def patch(module, inputs, output):
            ids = inputs[0]
            mask = (ids >= first) & (ids < first + self.num_vectors)
            picked = self.vectors[(ids - first).clamp(0, self.num_vectors - 1)].to(output.dtype)
            return torch.where(mask[..., None], picked, output)

        self._hook = pipe.text_encoder.get_input_embeddings().register_forward_hook(patch)
        return [self.vectors]

    def finish(self, pipe, data: ConceptData) -> Artifact:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._placeholder is not None:
            unload(pipe, self._tokens(self._placeholder))
        meta = {"placeholder": self._placeholder, "initializer": self.initializer or data.initializer, "num_vectors": self.num_vectors}
        return Artifact(self.name, {"emb_params": self.vectors.detach().float().cpu().clone()}, meta)

    def interpolation_ends(self, pipe, artifact: Artifact) -> tuple[torch.Tensor, torch.Tensor]:
        """(initializer vectors, learned vectors): weight 0 and weight 1 of this artifact."""
        learned = artifact.tensors["emb_params"].float()
        if learned.shape[0] != self.num_vectors:
            raise MethodConfigError(f"method.num_vectors: artifact has {learned.shape[0]} vectors, config says {self.num_vectors}")
        return self.init_vectors(pipe, artifact.meta["initializer"]), learned

    def apply(self, pipe, artifact: Artifact, weight: float) -> None:
        init, learned = self.interpolation_ends(pipe, artifact)
        # lerp is exact at both ends: w=0 gives the initializer, w=1 the learned vectors bit for bit.
        pipe.load_textual_inversion(torch.lerp(init, learned, float(weight)), token=artifact.meta["placeholder"])
        self._placeholder = artifact.meta["placeholder"]

    def apply_many(self, pipe, artifact: Artifact, weights: list[float]) -> None:
        """One placeholder per weight ('<sks>', '<sks>@1', ...), each holding its interpolated vectors."""
        init, learned = self.interpolation_ends(pipe, artifact)
        base = artifact.meta["placeholder"]
        self._many = {}
        for k, w in enumerate(dict.fromkeys(float(w) for w in weights)):
            token = base if k == 0 else f"{base[:-1]}@{k}>"
            pipe.load_textual_inversion(torch.lerp(init, learned, w), token=token)
            self._many[w] = token

    def prompt_at(self, text: str, data: ConceptData, weight: float) -> str:
        return replace_word(text, data.token, self._many[float(weight)])

    def remove(self, pipe) -> None:
        if self._many:
            unload(pipe, [t for token in self._many.values() for t in self._tokens(token)])
            self._many = {}
        elif self._placeholder is not None:
            unload(pipe, self._tokens(self._placeholder))

    def save(self, artifact: Artifact, out_dir: Path) -> Path:
        """A one-tensor safetensors (`emb_params`, as AUTOMATIC1111 writes it; the reported file) and an
        AUTOMATIC1111 `.pt`; diffusers' `load_textual_inversion` reads both."""
        out_dir.mkdir(parents=True, exist_ok=True)
        emb = artifact.tensors["emb_params"].contiguous()
        main = save_tensors(out_dir / SAFETENSORS_FILE, self.name, *self._file_parts(artifact))
        body = {"string_to_token": {"*": 265}, "string_to_param": {"*": emb.clone()}}
        save_a1111_pt(out_dir / A1111_FILE, body, artifact.meta["placeholder"], artifact.meta.get("steps", 0))
        return main

    def _file_parts(self, artifact: Artifact) -> tuple[dict, dict]:
        return {"emb_params": artifact.tensors["emb_params"]}, artifact.meta

    def file_content(self, artifact: Artifact, pipe=None):
        return tensor_file_content(self.name, *self._file_parts(artifact))

    def load(self, path: Path) -> Artifact:
        path = Path(path)
        file = path / SAFETENSORS_FILE if path.is_dir() else path
        tensors, meta = load_tensors(file)
        return Artifact(self.name, {"emb_params": tensors["emb_params"]}, meta)
