"""Textual Inversion: learn new token vectors only; the whole model stays frozen.

Weight `w` interpolates each vector from its initializer word (w=0) to the learned one (w=1). The vectors
at weight 0 are exactly the tokens of the initializer written `num_vectors` times: a word the tokenizer
splits into k pieces ('toy' -> 'to', 'y') gives k vectors per copy, so weight 0 reproduces the prompt
'a toy toy shape' bit for bit (an average of the pieces would be a vector no prompt can write). SDXL has
two text encoders: the placeholder gets its vectors in each (768 values per vector for CLIP ViT-L,
1,280 for OpenCLIP ViT-bigG), stored as `clip_l` and `clip_g` as AUTOMATIC1111 and diffusers read them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.data import ConceptData
from methods.base import Artifact, Method
from methods.conditioning import text_encoders, tokenizers
from methods.errors import MethodConfigError
from methods.family import refuse_dit
from methods.files import load_tensors, save_a1111_pt, save_tensors, tensor_file_content

SAFETENSORS_FILE = "learned_embeds.safetensors"
A1111_FILE = "embedding_a1111.pt"


def tensor_keys(pipe) -> list[str]:
    """The file's tensor name for each text encoder's vectors: `emb_params` for one encoder (AUTOMATIC1111's
    SD 1.x/2.x name), `clip_l` and `clip_g` for SDXL's two."""
    return ["emb_params"] if len(text_encoders(pipe)) == 1 else ["clip_l", "clip_g"]


def unload(pipe, tokens: list[str]) -> None:
    """diffusers' unload from every text encoder, then each embedding table in storage of its own size: the
    unload keeps the remaining rows as a view of the larger table, which would leave the base model holding
    the removed rows' memory and every later run's memory reading a few KiB higher than the first one's."""
    for tok, encoder in zip(tokenizers(pipe), text_encoders(pipe)):
        pipe.unload_textual_inversion(tokens, tokenizer=tok, text_encoder=encoder)
        table = encoder.get_input_embeddings().weight
        if table.untyped_storage().nbytes() != table.numel() * table.element_size():
            table.data = table.data.clone()
        # The load grew the config's vocab_size with the table; the unload shrinks the table only. A config
        # left larger than its table is saved as such by whatever saves this encoder next, and that folder
        # no longer loads (transformers refuses the mismatched embedding).
        encoder.config.vocab_size = table.shape[0]


def load_vectors(pipe, vectors: list[torch.Tensor], token: str) -> None:
    """The placeholder `token` with `vectors[k]` in text encoder k."""
    for tok, encoder, v in zip(tokenizers(pipe), text_encoders(pipe), vectors, strict=True):
        pipe.load_textual_inversion(v, token=token, tokenizer=tok, text_encoder=encoder)


def replace_word(text: str, word: str, by: str) -> str:
    """`text` with every whole-word occurrence of `word` replaced (the concept token, never a substring)."""
    return " ".join(by if w == word else w for w in text.split())


class TextualInversion(Method):
    name = "textual_inversion"
    display_order = 1
    size_keys = ("num_vectors",)
    weight_meaning = ("each token vector moved from its initializer word's embedding (w = 0: the prompt reads e.g. 'a purple crescent', "
                      "so its weight-0 images are not the other methods' 'a sks crescent') to the learned vector (w = 1); the UNet is "
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
        self._hooks: list = []
        self._placeholder: str | None = None
        self._many: dict[float, str] = {}  # weight -> its placeholder, while apply_many is in force
        self._count = num_vectors  # vectors per placeholder: num_vectors x the initializer's token count

    @staticmethod
    def placeholder(data: ConceptData) -> str:
        return f"<{data.token}>"

    def prompt(self, text: str, data: ConceptData) -> str:
        """'a sks crescent' -> 'a <sks> crescent' (the pipeline expands a multi-vector token itself)."""
        return replace_word(text, data.token, self.placeholder(data))

    def base_prompt(self, text: str, data: ConceptData) -> str:
        """At weight 0 the vectors are the initializer's tokens, `num_vectors` copies: 'a sks crescent' -> 'a purple crescent'."""
        init = " ".join([self.initializer or data.initializer] * self.num_vectors)
        return replace_word(text, data.token, init)

    def init_vectors(self, pipe, word: str) -> list[torch.Tensor]:
        """Per text encoder, the input embeddings of the initializer's tokens, `num_vectors` copies in a row:
        what the prompt with the word written `num_vectors` times feeds the encoder."""
        out, counts = [], set()
        for tok, encoder in zip(tokenizers(pipe), text_encoders(pipe)):
            ids = tok(word, add_special_tokens=False).input_ids
            if not ids:
                raise MethodConfigError(f"method.initializer: {word!r} tokenizes to nothing")
            counts.add(len(ids))
            table = encoder.get_input_embeddings().weight
            out.append(table[torch.tensor(ids, device=table.device)].detach().float().repeat(self.num_vectors, 1).cpu())
        if len(counts) > 1:  # SDXL's two CLIP tokenizers share one vocabulary; another pair might not
            raise MethodConfigError(f"method.initializer: the text encoders' tokenizers split {word!r} into different numbers of tokens ({sorted(counts)}); choose a word both keep whole")
        return out

    @staticmethod
    def _tokens(placeholder: str, count: int) -> list[str]:
        return [placeholder] + [f"{placeholder}_{i}" for i in range(1, count)]

    def prepare(self, pipe, data: ConceptData) -> list[torch.nn.Parameter]:
        refuse_dit(pipe, self.name, "its T5 encoder reads the prompt too, and what T5 should read for a placeholder is not settled here yet")
        self._placeholder = self.placeholder(data)
        init = self.init_vectors(pipe, self.initializer or data.initializer)
        self._count = count = init[0].shape[0]
        load_vectors(pipe, [v.clone() for v in init], self._placeholder)
        self._keys = tensor_keys(pipe)
        self.vectors = []
        self._hooks = []
        for tok, encoder, v in zip(tokenizers(pipe), text_encoders(pipe), init):
            vectors = torch.nn.Parameter(v.clone().to(encoder.device))
            self.vectors.append(vectors)
            first = tok.convert_tokens_to_ids(self._placeholder)

            # Only the new vectors train: the embedding table's output is patched at their positions, so the
            # optimizer never touches (or keeps moments for) the rest of the table.
            def patch(module, inputs, output, first=first, vectors=vectors):
                ids = inputs[0]
                mask = (ids >= first) & (ids < first + count)
                picked = vectors[(ids - first).clamp(0, count - 1)].to(output.dtype)
                return torch.where(mask[..., None], picked, output)

            self._hooks.append(encoder.get_input_embeddings().register_forward_hook(patch))
        return list(self.vectors)

    def snapshot(self, pipe, data: ConceptData) -> Artifact:
        meta = {"placeholder": self._placeholder, "initializer": self.initializer or data.initializer, "num_vectors": self.num_vectors}
        return Artifact(self.name, {k: v.detach().float().cpu().clone() for k, v in zip(self._keys, self.vectors)}, meta)

    def finish(self, pipe, data: ConceptData) -> Artifact:
        artifact = self.snapshot(pipe, data)
        for hook in getattr(self, "_hooks", []):
            hook.remove()
        self._hooks = []
        if self._placeholder is not None:
            unload(pipe, self._tokens(self._placeholder, self._count))
        return artifact

    def interpolation_ends(self, pipe, artifact: Artifact) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(initializer vectors, learned vectors) per text encoder: weight 0 and weight 1 of this artifact."""
        keys = tensor_keys(pipe)
        if sorted(artifact.tensors) != sorted(keys):
            raise MethodConfigError(f"textual_inversion: the artifact holds {sorted(artifact.tensors)}, this model's text encoders need {keys}")
        learned = [artifact.tensors[k].float() for k in keys]
        init = self.init_vectors(pipe, artifact.meta["initializer"])
        if learned[0].shape[0] != init[0].shape[0]:
            raise MethodConfigError(f"method.num_vectors: the artifact has {learned[0].shape[0]} vectors; {self.num_vectors} copies of its "
                                    f"initializer {artifact.meta['initializer']!r} make {init[0].shape[0]}")
        self._count = init[0].shape[0]
        return init, learned

    @staticmethod
    def _lerp(init: list[torch.Tensor], learned: list[torch.Tensor], weight: float) -> list[torch.Tensor]:
        # lerp is exact at both ends: w=0 gives the initializer, w=1 the learned vectors bit for bit.
        return [torch.lerp(a, b, float(weight)) for a, b in zip(init, learned)]

    def apply(self, pipe, artifact: Artifact, weight: float) -> None:
        init, learned = self.interpolation_ends(pipe, artifact)
        load_vectors(pipe, self._lerp(init, learned, weight), artifact.meta["placeholder"])
        self._placeholder = artifact.meta["placeholder"]

    def apply_many(self, pipe, artifact: Artifact, weights: list[float]) -> None:
        """One placeholder per weight ('<sks>', '<sks>@1', ...), each holding its interpolated vectors."""
        init, learned = self.interpolation_ends(pipe, artifact)
        base = artifact.meta["placeholder"]
        self._many = {}
        for k, w in enumerate(dict.fromkeys(float(w) for w in weights)):
            token = base if k == 0 else f"{base[:-1]}@{k}>"
            load_vectors(pipe, self._lerp(init, learned, w), token)
            self._many[w] = token

    def prompt_at(self, text: str, data: ConceptData, weight: float) -> str:
        return replace_word(text, data.token, self._many[float(weight)])

    def remove(self, pipe) -> None:
        if self._many:
            unload(pipe, [t for token in self._many.values() for t in self._tokens(token, self._count)])
            self._many = {}
        elif self._placeholder is not None:
            unload(pipe, self._tokens(self._placeholder, self._count))

    def save(self, artifact: Artifact, out_dir: Path) -> Path:
        """A safetensors as AUTOMATIC1111 writes it (the reported file: `emb_params`, or SDXL's `clip_l` and
        `clip_g`) and, for one text encoder, an AUTOMATIC1111 `.pt`; diffusers' `load_textual_inversion` reads
        them (SDXL's two tensors one encoder at a time)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        main = save_tensors(out_dir / SAFETENSORS_FILE, self.name, *self._file_parts(artifact))
        if "emb_params" in artifact.tensors:  # AUTOMATIC1111 reads SDXL embeddings from safetensors only
            body = {"string_to_token": {"*": 265}, "string_to_param": {"*": artifact.tensors["emb_params"].contiguous().clone()}}
            save_a1111_pt(out_dir / A1111_FILE, body, artifact.meta["placeholder"], artifact.meta.get("steps", 0))
        return main

    def _file_parts(self, artifact: Artifact) -> tuple[dict, dict]:
        return dict(artifact.tensors), artifact.meta

    def file_content(self, artifact: Artifact, pipe=None):
        return tensor_file_content(self.name, *self._file_parts(artifact))

    def load(self, path: Path) -> Artifact:
        path = Path(path)
        file = path / SAFETENSORS_FILE if path.is_dir() else path
        tensors, meta = load_tensors(file)
        keys = [k for k in ("emb_params", "clip_l", "clip_g") if k in tensors]
        if not keys:
            raise MethodConfigError(f"{file}: no embedding tensor (emb_params, or SDXL's clip_l and clip_g) in it; holds {sorted(tensors)}")
        return Artifact(self.name, {k: tensors[k] for k in keys}, meta)
