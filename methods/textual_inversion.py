"""Textual Inversion: learn new token vectors only; the whole model stays frozen.

Weight `w` interpolates each vector from its initializer word (w=0) to the learned one (w=1). The vectors
at weight 0 are exactly the tokens of the initializer written `num_vectors` times: a word the tokenizer
splits into k pieces ('toy' -> 'to', 'y') gives k vectors per copy, so weight 0 reproduces the prompt
'a toy toy shape' bit for bit (an average of the pieces would be a vector no prompt can write). SDXL has
two text encoders: the placeholder gets its vectors in each (768 values per vector for CLIP ViT-L,
1,280 for OpenCLIP ViT-bigG), stored as `clip_l` and `clip_g` as AUTOMATIC1111 and diffusers read them.
SD 3.5 (CLIP-L, CLIP-G) and FLUX.1 (CLIP-L) get vectors in their CLIP encoders the same way; their T5
encoder has none and reads the placeholder as the initializer word (`read_placeholders_as`), so weight 0
is the base model's prompt in every encoder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.loaders import TextualInversionLoaderMixin

from bench.data import ConceptData
from methods.base import Artifact, Method
from methods.errors import MethodConfigError
from bench.family import clip_pairs, family, t5_tokenizer
from methods.conditioning import require_clip
from methods.files import load_tensors, save_a1111_pt, save_tensors, tensor_file_content

SAFETENSORS_FILE = "learned_embeds.safetensors"
A1111_FILE = "embedding_a1111.pt"


def tensor_keys(pipe) -> list[str]:
    """The file's tensor name for each CLIP encoder's vectors: `emb_params` for SD 1.x/2.x's one encoder
    (AUTOMATIC1111's name), `clip_l` and `clip_g` for SDXL's and SD 3.5's two, `clip_l` for FLUX.1's one (the
    name diffusers' FLUX pivotal-tuning files use)."""
    if family(pipe).name == "flux1":
        return ["clip_l"]
    return ["emb_params"] if len(clip_pairs(pipe)) == 1 else ["clip_l", "clip_g"]


class _Loader(TextualInversionLoaderMixin):
    """diffusers' embedding loader for pipelines without it (SD 3.5's): the same token and table handling."""

    components: dict = {}
    hf_device_map = None


def _loader(pipe):
    return pipe if isinstance(pipe, TextualInversionLoaderMixin) else _Loader()


def unload(pipe, tokens: list[str]) -> None:
    """diffusers' unload from every CLIP encoder, then each embedding table in storage of its own size: the
    unload keeps the remaining rows as a view of the larger table, which would leave the base model holding
    the removed rows' memory and every later run's memory reading a few KiB higher than the first one's."""
    for tok, encoder in clip_pairs(pipe):
        _loader(pipe).unload_textual_inversion(tokens, tokenizer=tok, text_encoder=encoder)
        table = encoder.get_input_embeddings().weight
        if table.untyped_storage().nbytes() != table.numel() * table.element_size():
            table.data = table.data.clone()
        # The load grew the config's vocab_size with the table; the unload shrinks the table only. A config
        # left larger than its table is saved as such by whatever saves this encoder next, and that folder
        # no longer loads (transformers refuses the mismatched embedding).
        encoder.config.vocab_size = table.shape[0]


def load_vectors(pipe, vectors: list[torch.Tensor], token: str) -> None:
    """The placeholder `token` with `vectors[k]` in CLIP encoder k."""
    for (tok, encoder), v in zip(clip_pairs(pipe), vectors, strict=True):
        _loader(pipe).load_textual_inversion(v, token=token, tokenizer=tok, text_encoder=encoder)


def read_placeholders_as(tokenizer, words: dict[str, str]) -> None:
    """From now on `tokenizer` reads each placeholder word as `words[word]` ('' drops it): on SD 3.5 and
    FLUX.1, T5 reads the prompt too and has no vector for the placeholder, so it reads the initializer
    word, as at weight 0 every encoder does. The instance's class is swapped for a subclass whose
    `__call__` rewrites the text first (Python looks `__call__` up on the class, and every caller, the
    pipeline's prompt encoding and training's alike, calls the tokenizer); `read_placeholders_plainly`
    swaps it back."""
    base = getattr(type(tokenizer), "_placeholder_base", type(tokenizer))

    def rewrite(text: str) -> str:
        return " ".join(w2 for w in text.split() if (w2 := words.get(w, w)))

    def call(self, text=None, *args, **kwargs):
        if isinstance(text, str):
            text = rewrite(text)
        elif isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
            text = [rewrite(t) for t in text]
        return base.__call__(self, text, *args, **kwargs)

    tokenizer.__class__ = type(base.__name__, (base,), {"__call__": call, "_placeholder_base": base})


def read_placeholders_plainly(tokenizer) -> None:
    base = getattr(type(tokenizer), "_placeholder_base", None)
    if base is not None:
        tokenizer.__class__ = base


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
        self._expand = False  # write multi-vector placeholders out in prompts (pipelines that do not: SD 3.5)

    @staticmethod
    def placeholder(data: ConceptData) -> str:
        return f"<{data.token}>"

    def prompt(self, text: str, data: ConceptData) -> str:
        """'a sks crescent' -> 'a <sks> crescent' (the pipeline expands a multi-vector token itself; for one
        that does not, SD 3.5's, it is written out: 'a <sks> <sks>_1 crescent')."""
        return replace_word(text, data.token, self._written(self.placeholder(data)))

    def _written(self, placeholder: str) -> str:
        return " ".join(self._tokens(placeholder, self._count)) if self._expand else placeholder

    def _use(self, pipe, placeholders: list[str], initializer: str) -> None:
        """What the pipeline reads while the vectors are loaded: multi-vector placeholders written out where
        it does not expand them, and T5 (SD 3.5, FLUX.1) reading the initializer in their place."""
        from diffusers.loaders import TextualInversionLoaderMixin

        self._expand = not isinstance(pipe, TextualInversionLoaderMixin)
        t5 = t5_tokenizer(pipe)
        if t5 is not None:
            words = " ".join([initializer] * self.num_vectors)
            read_placeholders_as(t5, {t: (words if i == 0 else "") for p in placeholders for i, t in enumerate(self._tokens(p, self._count))})

    def _unuse(self, pipe) -> None:
        t5 = t5_tokenizer(pipe)
        if t5 is not None:
            read_placeholders_plainly(t5)

    def base_prompt(self, text: str, data: ConceptData) -> str:
        """At weight 0 the vectors are the initializer's tokens, `num_vectors` copies: 'a sks crescent' -> 'a purple crescent'."""
        init = " ".join([self.initializer or data.initializer] * self.num_vectors)
        return replace_word(text, data.token, init)

    def init_vectors(self, pipe, word: str) -> list[torch.Tensor]:
        """Per text encoder, the input embeddings of the initializer's tokens, `num_vectors` copies in a row:
        what the prompt with the word written `num_vectors` times feeds the encoder."""
        out, counts = [], set()
        for tok, encoder in clip_pairs(pipe):
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
        require_clip(pipe, "method: textual_inversion")
        self._placeholder = self.placeholder(data)
        init = self.init_vectors(pipe, self.initializer or data.initializer)
        self._count = count = init[0].shape[0]
        load_vectors(pipe, [v.clone() for v in init], self._placeholder)
        self._use(pipe, [self._placeholder], self.initializer or data.initializer)
        self._keys = tensor_keys(pipe)
        self.vectors = []
        self._hooks = []
        for (tok, encoder), v in zip(clip_pairs(pipe), init):
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
        self._unuse(pipe)
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
        self._use(pipe, [self._placeholder], artifact.meta["initializer"])

    def apply_many(self, pipe, artifact: Artifact, weights: list[float]) -> None:
        """One placeholder per weight ('<sks>', '<sks>@1', ...), each holding its interpolated vectors."""
        init, learned = self.interpolation_ends(pipe, artifact)
        base = artifact.meta["placeholder"]
        self._many = {}
        for k, w in enumerate(dict.fromkeys(float(w) for w in weights)):
            token = base if k == 0 else f"{base[:-1]}@{k}>"
            load_vectors(pipe, self._lerp(init, learned, w), token)
            self._many[w] = token
        self._use(pipe, list(self._many.values()), artifact.meta["initializer"])

    def prompt_at(self, text: str, data: ConceptData, weight: float) -> str:
        return replace_word(text, data.token, self._written(self._many[float(weight)]))

    def remove(self, pipe) -> None:
        if self._many:
            unload(pipe, [t for token in self._many.values() for t in self._tokens(token, self._count)])
            self._many = {}
        elif self._placeholder is not None:
            unload(pipe, self._tokens(self._placeholder, self._count))
        self._unuse(pipe)

    def save(self, artifact: Artifact, out_dir: Path) -> Path:
        """A safetensors as AUTOMATIC1111 writes it (the reported file: `emb_params`, or SDXL's and SD 3.5's
        `clip_l` and `clip_g`, FLUX.1's `clip_l`) and, for one SD 1.x/2.x text encoder, an AUTOMATIC1111 `.pt`;
        diffusers' `load_textual_inversion` reads them (two tensors one encoder at a time)."""
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
