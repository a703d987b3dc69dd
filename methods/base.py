"""The Method interface: what a personalization method must and may implement.

Must: `prepare` (install trainable parts, return the parameters), `finish` (pack what was learned into an
Artifact and restore the base model), `apply`/`remove` (use the artifact at a strength; weight 0 is the
base model), `save`/`load`. May: `snapshot` (a checkpoint part-way through training), `prompt` and
`base_prompt` (Textual Inversion's placeholder), `extra_images` (prior preservation), `generate_inputs`
(class images), `apply_many`/`prompt_at`/`set_sample_weights` (several weights in one batch), `encode`
(a trained text side), `file_content`. `Method.train` is the one loop every method shares
(`methods.training` holds its step); only the method differs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from bench.data import ConceptData
from methods.conditioning import TrainingSet, encode_set, encode_text, text_condition, text_encoders
from methods.errors import MethodConfigError, TrainingDiverged, check_positive
from bench.family import denoiser, family
from methods.files import tensor_file_content
from methods.settings import TrainSettings
from methods.training import TrainStep, training_options


@dataclass
class Artifact:
    """What a method learned: tensors plus JSON-able facts needed to apply them."""

    method: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)



@dataclass
class TrainResult:
    artifact: Artifact
    losses: list[float]
    trainable_params: int
    steps: int



class Method(ABC):
    """One personalization method. `weight` means 'how much of the learned change is used':
    0 is the base model, 1 the trained result; negative and >1 are legal."""

    name: ClassVar[str]
    trains_text: ClassVar[bool] = False  # the text encoder's output changes during training
    weight_decay: ClassVar[float] = 1e-2
    # Several weights in one denoising batch (apply_many / prompt_at / set_sample_weights).
    batched_weights: ClassVar[bool] = False
    # One line for the report: what adapter weight w does in this method.
    weight_meaning: ClassVar[str] = ""
    # The hyper-parameters that set how many parameters it trains, first the one to lower (a refusal names it).
    size_keys: ClassVar[tuple[str, ...]] = ()
    # The AUTOMATIC1111 prompt tags whose strength scales this method's weight (<lora:NAME:W> ...), as the
    # web UI applies them: a tag of another kind leaves the method alone.
    a1111_tags: ClassVar[tuple[str, ...]] = ()
    display_order: ClassVar[int] = 99  # its place in tables and figures (methods.display_order)

    def __init__(self, lr: float) -> None:
        check_positive("method.lr", lr)
        self.lr = float(lr)

    @classmethod
    def weight_meaning_for(cls, mcfg: dict) -> str:
        """The report's line on what weight w does, for one configured method (`mcfg`: its config)."""
        return cls.weight_meaning

    # ---- what a method defines

    @abstractmethod
    def prepare(self, pipe, data: ConceptData) -> list[torch.nn.Parameter]:
        """Install trainable parts into `pipe` and return the parameters to optimise."""

    @abstractmethod
    def finish(self, pipe, data: ConceptData) -> Artifact:
        """Pack what was learned into an Artifact and return `pipe` to the base model."""

    def snapshot(self, pipe, data: ConceptData) -> Artifact:
        """What training has learned so far, packed as `finish` packs it, with training left untouched
        (a checkpoint part-way through the budget: `train.checkpoints`)."""
        raise MethodConfigError(f"train.checkpoints: method {self.name} cannot save an artifact part-way through training; set train.checkpoints=[]")

    @abstractmethod
    def apply(self, pipe, artifact: Artifact, weight: float) -> None:
        """Use the learned change at strength `weight` (0 reproduces the base model)."""

    @abstractmethod
    def remove(self, pipe) -> None:
        """Undo `apply`: afterwards `pipe` is the base model again."""

    @abstractmethod
    def save(self, artifact: Artifact, out_dir: Path) -> Path:
        """Write the artifact; returns the main file, whose size is reported."""

    @abstractmethod
    def load(self, path: Path) -> Artifact:
        """Read an artifact written by `save`."""

    def file_content(self, artifact: Artifact, pipe=None) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
        """The tensors and metadata of the file `save` reports, exactly as it writes them: `mode=estimate`
        sizes the file from these without writing it. `pipe`: the model the artifact belongs to."""
        return tensor_file_content(self.name, artifact.tensors, artifact.meta)

    def prompt(self, text: str, data: ConceptData) -> str:
        """The prompt as this method's artifact expects it (Textual Inversion swaps in its placeholder)."""
        return text

    def apply_many(self, pipe, artifact: Artifact, weights: list[float]) -> None:
        """Make every weight in `weights` available at once (methods with `batched_weights`)."""
        raise NotImplementedError(f"{self.name} cannot put several weights in one batch")

    def prompt_at(self, text: str, data: ConceptData, weight: float) -> str:
        """The prompt for one sample at `weight` while `apply_many` is in force."""
        return self.prompt(text, data)

    def set_sample_weights(self, pipe, weights: list[float]) -> None:
        """The weight of each sample of the next batch while `apply_many` is in force."""

    def base_prompt(self, text: str, data: ConceptData) -> str:
        """The base-model prompt whose image weight 0 must reproduce exactly."""
        return text

    def extra_images(self, pipe, data: ConceptData, settings: TrainSettings) -> tuple[TrainingSet, float] | None:
        """An optional second image set and its loss weight (DreamBooth's prior preservation)."""
        return None

    def generate_inputs(self, pipe, data: ConceptData, settings: TrainSettings) -> list[Path]:
        """Make and cache whatever the base model must generate before training (DreamBooth's class
        images), so that this work is timed apart from training and shared by every training seed;
        returns the files or folders made (their checksums are kept with the stage)."""
        return []

    # ---- the shared loop

    def train(self, pipe, data: ConceptData, settings: TrainSettings, loop=None) -> TrainResult:
        """Train on `data` under `settings`; leaves `pipe` as the base model. `loop`: replaces the optimizer
        loop (`mode=estimate` runs two `TrainStep`s on fake tensors through this same method)."""
        for module in (denoiser(pipe), pipe.vae, *text_encoders(pipe)):
            module.requires_grad_(False)
        prior = self.extra_images(pipe, data, settings)  # generated by the base model, before any change
        # Adapters draw their initial weights (LoRA's A matrices, hypernetwork MLPs) from torch's global
        # generator: seed it, or two runs with the same train.seed start from different adapters.
        torch.manual_seed(settings.seed)
        params = self.prepare(pipe, data)
        try:  # from here on the pipe holds the method's changes: never leave them behind on a failure
            for p in params:
                # Master weights in fp32 whatever the model's dtype: half-precision updates lose small steps
                # (lr x update below the weight's resolution); autocast gives the forward its low precision.
                if p.dtype in (torch.float16, torch.bfloat16):
                    p.data = p.data.float()
            instance = encode_set(pipe, data.images, [self.prompt(c, data) for c in data.captions])
            if not self.trains_text:
                for s in [instance] + ([prior[0]] if prior else []):
                    if family(pipe).name == "unet":
                        s.hidden_states, s.pooled = encode_text(pipe, s.input_ids)
                    else:
                        # The DiTs' text encoders (T5-XXL, Qwen3-4B) read 256-512 tokens: each distinct caption is
                        # encoded once and given to its images. (The UNet families encode every image's caption,
                        # as the committed results were made; the values are the same up to batch-size rounding.)
                        hidden, pooled = encode_text(pipe, s.distinct_ids)
                        s.hidden_states, s.pooled = hidden[s.row_of], (pooled[s.row_of] if pooled is not None else None)
            n_params = sum(p.numel() for p in params)
            with training_options(pipe, self, settings):
                losses = (loop or self._loop)(pipe, params, instance, prior, settings)
        except BaseException:
            self.finish(pipe, data)  # a worker trains its next run on the same pipe
            raise
        return TrainResult(self.finish(pipe, data), losses, n_params, settings.steps)

    def _loop(self, pipe, params, instance: TrainingSet, prior, settings: TrainSettings) -> list[float]:
        step_fn = TrainStep(self, pipe, params, instance, prior, settings)
        losses = []
        bar = tqdm(range(settings.steps), desc=f"train {self.name}", disable=not settings.progress, leave=False)
        denoiser(pipe).train()
        try:
            for step in bar:
                total = step_fn.loss()
                if not torch.isfinite(total):
                    raise TrainingDiverged(f"method {self.name}: loss became {total.item()} at step {step}; lower method.{self.name}.lr (now {self.lr})")
                step_fn.update(total)
                losses.append(total.item())
                if settings.on_step is not None:
                    settings.on_step(step)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
        finally:
            denoiser(pipe).eval()
        return losses

    def encode(self, pipe, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text hidden states (and SDXL's pooled embedding) with gradients, for methods whose text side trains."""
        return text_condition(pipe, input_ids)
