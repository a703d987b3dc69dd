"""Structured configs: the schema every YAML under conf/ is checked against, so a misspelt key fails
when the config is composed, not half-way through a run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ModelConfig:
    name: str = MISSING
    embedded: bool = False  # the micro model shipped in bench/zoo
    path: Optional[str] = None  # a local diffusers folder or a single .safetensors/.ckpt file
    config_path: Optional[str] = None  # for a single file: a local diffusers folder with the configs
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    resolution: int = 64


@dataclass
class DataConfig:
    # Held-out micro-world concepts by name (bench.world.CONCEPTS) and/or kohya-named folders ('10_sks dog').
    concepts: list[str] = field(default_factory=list)
    path: Optional[str] = None  # one more folder of images (+ .txt captions), with the overrides below
    n_images: int = 8  # world concepts only
    seed: int = 0  # world concepts only: which instance images are drawn
    instance_prompt: Optional[str] = None
    class_word: Optional[str] = None
    initializer: Optional[str] = None
    kind: str = "object"  # folders: "object" or "style"
    # Held-out images for the validation loss, never trained on: null gives world concepts 4 fresh renders
    # and sets nothing aside from a folder; N renders N (world) or sets aside a folder's last N images.
    holdout: Optional[int] = None


@dataclass
class TrainConfig:
    steps: int = 150
    batch_size: int = 4
    # What a GPU needs at SD scale (methods/base.py TrainSettings): mixed precision (fp32 master weights),
    # activation recomputation, an 8-bit optimizer state, the attention kernel.
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast forward; fp16 with loss scaling)
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes, the `bnb` extra)
    attention: str = "sdpa"  # sdpa (torch picks a fused kernel) | eager (attention matrices kept) | xformers
    # Min-SNR-gamma loss weighting (Hang et al. 2023; diffusers' --snr_gamma, kohya's --min_snr_gamma):
    # null is the plain MSE on the model's target; 5 is the paper's value.
    snr_gamma: Optional[float] = None
    # Fractions of `steps` at which training also saves its artifact (the final one is always saved): the
    # learning curves, scored at weight 1 in stages of their own (bench/worker.py curve_stage).
    checkpoints: list[float] = field(default_factory=list)


@dataclass
class SweepConfig:
    weights: list[float] = field(default_factory=lambda: [-0.5, 0.0, 0.5, 1.0, 1.5])
    # Generation seeds. Even positions choose each method's best weight, odd positions report it.
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    steps: int = 10
    guidance: float = 5.0
    batch: int = 32
    batched: bool = True  # several weights per denoising batch where the method allows it
    instance: list[str] = field(default_factory=lambda: ["{instance}"])
    recontext: list[str] = field(default_factory=list)
    unrelated: list[str] = field(default_factory=list)


@dataclass
class MetricsConfig:
    clip: str = "micro"  # the CLIP feature space: 'micro' or an open_clip spec such as 'local-dir:/models/clip'
    inception: bool = False  # also classic Inception FID (needs torch-fidelity's weights available locally)
    oracle: bool = True  # judge concept presence with the micro world's oracle (world concepts only)
    # DINO features (DINO-I, DINO drift, FD in DINO space): 'local-dir:/models/dinov2-base' (a transformers
    # Dinov2Model folder), 'micro' (micro DINO, once `python -m bench.build.dino` has built it), or null (none).
    # Off by default: the micro world ships no DINO yet (docs/metrics.md says why).
    dino: Optional[str] = None
    # The validation loss's fixed timesteps (of the scheduler's training timesteps); [] turns it off.
    val_loss_timesteps: list[int] = field(default_factory=lambda: [100, 300, 500, 700, 900])


@dataclass
class StatsConfig:
    confidence: float = 0.95  # of every interval
    n_boot: int = 2000  # bootstrap resamples (hierarchical: concepts, then training seeds)
    # The headline fidelity metric (ranking, paired differences, best weight on held-out seeds). 'auto':
    # the oracle's presence rate where it judged the images, else the proxy that agreed best with it.
    fidelity: str = "auto"


@dataclass
class TuneConfig:
    concepts: list[str] = field(default_factory=lambda: ["sks_arrow", "zwx_bands"])
    seeds: list[int] = field(default_factory=lambda: [100, 101, 102])
    factors: list[float] = field(default_factory=lambda: [0.3, 1.0, 3.0])
    centers: dict[str, Any] = field(default_factory=dict)  # method -> the lr its grid is centred on (else its configured lr)
    objective: str = "presence"
    max_drift: float = 0.25
    weights: list[float] = field(default_factory=lambda: [0.0, 1.0])
    write: bool = True
    options: dict[str, Any] = field(default_factory=dict)  # method -> {hyper-parameter: [values]}, crossed with the lr grid
    max_extensions: int = 2  # how often a method's grid is extended past an edge its choice landed on


@dataclass
class EstimateConfig:
    gpu: str = "A100-40GB"  # bench.estimate.GPUS
    precision: str = "fp32"  # the GPU's math mode for fp32 training's time (fp32 or tf32); mixed precision uses its dtype's rate
    # Ways of training to estimate (bench/estimate.py Variant): <fp32|bf16|fp16>[+ckpt][+adamw8bit].
    variants: list[str] = field(default_factory=lambda: ["fp32", "fp16", "fp16+ckpt", "fp16+ckpt+adamw8bit"])
    efficiency: float = 0.35  # fraction of that peak rate a training step reaches
    device: str = "cuda"  # whose memory counts: cuda (the model's tensors) or cpu (every tensor, as a CPU run counts)
    gen_batch: int = 1  # images per denoising step (twice the samples with guidance)
    attention: str = "efficient"  # efficient: a fused kernel as on CUDA (no attention matrices kept); math: all kept


@dataclass
class CheckConfig:
    # metric -> {abs: ..., rel: ...}; the larger allowance wins. 'fd' covers every Fréchet distance,
    # 'default' any metric not named.
    tolerances: dict[str, Any] = field(default_factory=dict)
    alpha: float = 0.05  # family-wise false-alarm rate of one check (every method and metric: bench/regression.py)
    junit: Optional[str] = None  # default: RESULTS_DIR/regression_junit.xml


@dataclass
class BenchConfig:
    defaults: list[Any] = field(default_factory=lambda: ["_self_"])
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    method: dict[str, Any] = field(default_factory=dict)  # name -> {_target_: methods..., hyper-parameters}
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    # Training seeds: every (method, concept) trains once per seed; a training run is the unit of analysis.
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    device: str = "auto"
    # Parallel worker processes and torch threads in each; null: fit the cores this process may use
    # (CPU: up to 4 workers, the cores shared out among them; CUDA: one worker with every core).
    workers: Optional[int] = None
    threads: Optional[int] = None
    progress: bool = True
    results_dir: str = "results/default"
    mode: str = "run"  # run | baseline | check | report | tune | estimate
    baseline: Optional[str] = None  # baseline JSON for mode=baseline / mode=check
    merge: list[str] = field(default_factory=list)  # mode=report: more results dirs to merge
    check: CheckConfig = field(default_factory=CheckConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    estimate: EstimateConfig = field(default_factory=EstimateConfig)


def register() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="bench_schema", node=BenchConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="train", name="train_schema", node=TrainConfig)
    cs.store(group="sweep", name="sweep_schema", node=SweepConfig)
    cs.store(group="check", name="check_schema", node=CheckConfig)
    cs.store(group="tune", name="tune_schema", node=TuneConfig)
    cs.store(group="estimate", name="estimate_schema", node=EstimateConfig)
