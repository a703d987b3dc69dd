"""SD 3.5 and FLUX.1 through the same code as the UNet models, on tiny folders made in the test
(tests/tiny_dit.py, conftest `dit_dirs`): each loads by its model_index.json, conditions training as its
pipeline conditions generation, trains with rectified flow, and every method it supports learns (its loss
on a fixed batch falls), leaves weight 0 the base model bit for bit, and writes files that round-trip and
that stock diffusers loads (the hypernetwork: its analog on the text stream's key/value inputs)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bench.data import load_world_concept
from bench.images import generate
from bench.models import pipeline_class
from methods.conditioning import text_condition, tokenize
from methods.errors import MethodConfigError
from bench.family import family
from methods.settings import TrainSettings
from methods.training import noised_and_target
from test_learning import fixed_batch_loss

CONF = Path(__file__).resolve().parents[1] / "conf" / "method"
FAMILIES = ("sd3", "flux1", "flux2_klein")
# The attention projections of both streams: the image tokens' (to_*) and the text tokens' (add_*, to_add_out).
BOTH_STREAMS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
METHODS = ("dreambooth", "textual_inversion", "lora", "hypernetwork", "loha", "lokr", "dora", "oft")
# (family, method) pairs trained here: the four methods on every family (but Textual Inversion on FLUX.2
# klein, which has no CLIP encoder: refused in one line, below); the peft adapters, one code path through
# peft on any transformer, on FLUX.1, and LoKr (peft's benchmark's favourite) on FLUX.2 klein too.
FOUR = ("dreambooth", "textual_inversion", "lora", "hypernetwork")
PAIRS = [*((f, m) for f in FAMILIES for m in FOUR if (f, m) != ("flux2_klein", "textual_inversion")),
         *(("flux1", m) for m in METHODS if m not in FOUR), ("flux2_klein", "lokr")]
LR = {"dreambooth": 1e-3, "textual_inversion": 0.5, "dora": 6e-3, "oft": 2e-3}
PROMPT = "a sks crescent"
STEPS = 3


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def make(name: str, **overrides):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    cfg.update({"lr": LR.get(name, 2e-2), **({"num_class_images": 2, "class_image_steps": 2} if name == "dreambooth" else {}), **overrides})
    if name == "lora":
        cfg.target_modules = BOTH_STREAMS
    elif "adapter" in cfg:
        cfg.adapter.target_modules = BOTH_STREAMS
    return instantiate(cfg)


@pytest.fixture(scope="module")
def pipes(dit_dirs):
    from bench.models import load_pipeline

    return {name: load_pipeline({"name": name, "path": str(folder), "dtype": "float32", "resolution": 64}, "cpu") for name, folder in dit_dirs.items()}


@pytest.fixture(scope="module")
def concept():
    return load_world_concept("sks_crescent", 4, 64)


@pytest.fixture(scope="module")
def trained(pipes, concept, tmp_path_factory):
    out = {}
    for fam, name in PAIRS:
        method = make(name)
        settings = TrainSettings(steps=30, batch_size=2, progress=False, cache_dir=tmp_path_factory.mktemp(f"{fam}_{name}"))
        out[fam, name] = (method, method.train(pipes[fam], concept, settings))
    return out


def image(pipe, text, method=None, artifact=None, weight=None, concept=None):
    """The image of `text` at seed 0; with a method, its artifact applied at `weight` and the text as the
    method writes it (Textual Inversion's placeholder)."""
    if method is None:
        return pixels(generate(pipe, [text], [0], steps=STEPS)[0])
    method.apply(pipe, artifact, weight)
    try:
        return pixels(generate(pipe, [method.prompt(text, concept)], [0], steps=STEPS)[0])
    finally:
        method.remove(pipe)


@pytest.mark.parametrize("fam", FAMILIES)
def test_dit_folder_loads_as_its_pipeline_and_training_sees_the_pipelines_own_conditioning(fam, pipes):
    pipe = pipes[fam]
    assert type(pipe).__name__ == {"sd3": "StableDiffusion3Pipeline", "flux1": "FluxPipeline", "flux2_klein": "Flux2KleinPipeline"}[fam]
    assert family(pipe).name == fam
    prompts = [PROMPT, "a red circle on a white background"]
    hidden, pooled = text_condition(pipe, tokenize(pipe, prompts))
    if fam == "flux2_klein":
        ref, _ = pipe.encode_prompt(prompts)
        # Qwen3's states after layers 9, 18 and 27 side by side (3 x 16), over the chat template's 512 tokens; no pooled embedding.
        assert hidden.shape == ref.shape == (2, 512, 48) and pooled is None
        assert torch.allclose(hidden, ref, atol=1e-6)
        return
    if fam == "sd3":
        ref, _, ref_pooled, _ = pipe.encode_prompt(prompts, None, None, do_classifier_free_guidance=False)
        # CLIP-L and CLIP-G side by side, zero-padded to T5's width, then T5's 256 tokens (the pipeline's default length).
        assert hidden.shape == (2, pipe.tokenizer.model_max_length + 256, 32) and pooled.shape == (2, 8 + 16)
    else:
        ref, ref_pooled, _ = pipe.encode_prompt(prompts, None)
        # T5's 512 tokens (FLUX.1-dev's max_sequence_length); CLIP-L's pooled output only.
        assert hidden.shape == (2, 512, 32) and pooled.shape == (2, 128)
    assert hidden.shape == ref.shape and pooled.shape == ref_pooled.shape
    assert torch.allclose(hidden, ref, atol=1e-6) and torch.allclose(pooled, ref_pooled, atol=1e-6)


@pytest.mark.parametrize("fam", FAMILIES)
def test_the_flow_objective_is_the_schedulers_own_interpolation_and_velocity(fam, pipes):
    """x_t = (1 - sigma) x0 + sigma noise at sigma = t / 1000 is what the family's scheduler's `scale_noise`
    makes of the same timestep (an independent computation), and the target is noise - x0."""
    pipe = pipes[fam]
    scheduler = family(pipe).training_scheduler(pipe)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    t = family(pipe).sample_timesteps(scheduler, 3, gen)
    assert all(v in scheduler.timesteps for v in t)  # drawn from the training schedule, as the diffusers examples draw them
    xt, target = noised_and_target(scheduler, x0, noise, t)
    for i in range(3):
        ref = scheduler.scale_noise(x0[i : i + 1], t[i : i + 1], noise[i : i + 1])
        assert torch.allclose(xt[i : i + 1], ref, atol=1e-6)
    assert torch.equal(target, noise - x0)


def test_sd3_samples_logit_normal_timesteps_and_flux_uniform_ones(pipes):
    """SD 3.5: the sigmoid of a standard normal (diffusers' SD3 example's default), on SD3's shifted schedule,
    so most draws land in the middle-to-noisy range; FLUX: uniform over the unshifted schedule."""
    draws = {}
    for fam in FAMILIES:
        scheduler = family(pipes[fam]).training_scheduler(pipes[fam])
        draws[fam] = family(pipes[fam]).sample_timesteps(scheduler, 4000, torch.Generator().manual_seed(0)) / 1000
    u = torch.sigmoid(torch.randn(4000, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(draws["sd3"].median(), (3 * u / (1 + 2 * u)).median(), atol=0.01)  # shift 3: s' = 3s / (1 + 2s)
    assert abs(draws["flux1"].mean().item() - 0.5) < 0.02 and abs(draws["flux1"].std().item() - (1 / 12) ** 0.5) < 0.02


@pytest.mark.parametrize("fam, name", PAIRS)
def test_every_supported_method_trains_on_a_dit_and_learns(fam, name, trained, pipes, concept):
    method, result = trained[fam, name]
    assert len(result.losses) == 30 and np.isfinite(result.losses).all() and result.trainable_params > 0
    if name in ("lora", "dreambooth"):
        assert {k.split(".", 1)[0] for k in result.artifact.tensors} == {"transformer"}
    losses = {w: fixed_batch_loss(pipes[fam], method, result.artifact, concept, w) for w in (0.0, 1.0)}
    assert losses[1.0] < losses[0.0], losses


@pytest.mark.parametrize("fam, name", PAIRS)
def test_dit_weight_zero_is_the_base_model_and_files_round_trip(fam, name, trained, pipes, concept, tmp_path):
    pipe = pipes[fam]
    method, result = trained[fam, name]
    base = image(pipe, method.base_prompt(PROMPT, concept))
    assert np.array_equal(image(pipe, PROMPT, method, result.artifact, 0.0, concept), base)
    at_one = image(pipe, PROMPT, method, result.artifact, 1.0, concept)
    assert not np.array_equal(at_one, base)
    assert np.array_equal(image(pipe, method.base_prompt(PROMPT, concept)), base)  # remove() restored the pipe
    reloaded = method.load(method.save(result.artifact, tmp_path))
    assert np.array_equal(image(pipe, PROMPT, method, reloaded, 1.0, concept), at_one)


@pytest.mark.parametrize("fam", FAMILIES)
def test_a_dit_lora_loads_in_the_stock_pipeline_and_draws_the_same_image(fam, trained, pipes, dit_dirs, tmp_path):
    """The diffusers-layout file (`transformer.<module>.lora_A.weight`, also ai-toolkit's FLUX.1 layout) through the
    family's own `load_lora_weights`."""
    from safetensors.torch import load_file

    method, result = trained[fam, "lora"]
    path = method.save(result.artifact, tmp_path)
    keys = set(load_file(str(path)))
    assert all(k.startswith("transformer.") for k in keys) and any(".add_k_proj." in k for k in keys)
    assert not (tmp_path / "lora_kohya.safetensors").exists()
    ours = image(pipes[fam], PROMPT, method, result.artifact, 1.0)
    stock = pipeline_class(dit_dirs[fam]).from_pretrained(dit_dirs[fam], local_files_only=True)
    stock.set_progress_bar_config(disable=True)
    stock.default_sample_size = pipes[fam].default_sample_size
    stock.load_lora_weights(str(path))
    assert np.abs(pixels(generate(stock, [PROMPT], [0], steps=STEPS)[0]) - ours).max() <= 1


@pytest.mark.parametrize("fam", FAMILIES)
def test_a_dit_dreambooth_saves_a_transformer_the_stock_pipeline_loads(fam, trained, pipes, dit_dirs, tmp_path):
    method, result = trained[fam, "dreambooth"]
    main = method.save(result.artifact, tmp_path)
    assert main.name == "diffusion_pytorch_model.safetensors" and main.parent.name == "transformer"
    ours = image(pipes[fam], PROMPT, method, result.artifact, 1.0)
    stock = pipeline_class(main.parent.parent).from_pretrained(main.parent.parent, local_files_only=True)
    stock.set_progress_bar_config(disable=True)
    stock.default_sample_size = pipes[fam].default_sample_size
    assert np.array_equal(pixels(generate(stock, [PROMPT], [0], steps=STEPS)[0]), ours)


@pytest.mark.parametrize("fam", FAMILIES)
def test_the_hypernetwork_on_a_dit_feeds_the_text_streams_key_and_value_projections(fam, trained, pipes):
    """The analog of AUTOMATIC1111's k/v-input MLPs: one (k, v) pair per input size before add_k_proj and
    add_v_proj (the text stream), counted here from the transformer's own layers; the image stream's to_k
    and to_v keep their plain Linear while it is applied."""
    from methods.hypernetwork import HyperLinear

    pipe = pipes[fam]
    method, result = trained[fam, "hypernetwork"]
    sizes = {m.add_k_proj.in_features for m in pipe.transformer.modules() if getattr(m, "add_k_proj", None) is not None}
    assert sizes == {32 if fam == "sd3" else 16}  # the joint attention's width: 4 x 8 (SD 3.5), 2 x 8 (FLUX.1, FLUX.2 klein)
    assert result.trainable_params == sum(2 * (d * 2 * d + 2 * d + 2 * d * d + d) for d in sizes)
    method.apply(pipe, result.artifact, 1.0)
    try:
        joint = [m for m in pipe.transformer.modules() if getattr(m, "add_k_proj", None) is not None]
        assert joint and all(isinstance(m.add_k_proj, HyperLinear) and isinstance(m.add_v_proj, HyperLinear) for m in joint)
        assert not any(isinstance(m, HyperLinear) for a in joint for m in (a.to_k, a.to_v))
    finally:
        method.remove(pipe)
    assert not any(isinstance(m, HyperLinear) for m in pipe.transformer.modules())


@pytest.mark.parametrize("fam", ["sd3", "flux1"])
def test_textual_inversion_on_a_dit_has_vectors_in_its_clip_encoders_and_t5_reads_the_initializer(fam, trained, pipes, concept, tmp_path):
    """SD 3.5: a vector in CLIP-L and CLIP-G (`clip_l`, `clip_g`); FLUX.1: in CLIP-L (`clip_l`). T5 has none:
    while the vectors are loaded it reads the placeholder as the initializer word (weight 0 is then the base
    prompt in every encoder), and reads prompts as written again once they are removed."""
    from safetensors.torch import load_file

    from bench.family import t5_tokenizer

    pipe = pipes[fam]
    method, result = trained[fam, "textual_inversion"]
    widths = {"sd3": {"clip_l": 16, "clip_g": 16}, "flux1": {"clip_l": 128}}[fam]
    assert result.trainable_params == sum(widths.values()) * method.num_vectors
    file = load_file(str(method.save(result.artifact, tmp_path)))
    assert {k: v.shape[-1] for k, v in file.items()} == widths
    t5 = t5_tokenizer(pipe)
    plain = t5(["a <sks> crescent"]).input_ids
    method.apply(pipe, result.artifact, 0.5)
    try:
        assert t5([method.prompt(PROMPT, concept)]).input_ids == t5([method.base_prompt(PROMPT, concept)]).input_ids != plain
    finally:
        method.remove(pipe)
    assert t5(["a <sks> crescent"]).input_ids == plain and type(t5).__call__ is type(t5).__mro__[0].__call__


def test_textual_inversion_and_text_encoder_training_are_refused_on_flux2_klein_in_one_line(pipes, concept):
    """FLUX.2 klein's one text encoder is Qwen3: no CLIP encoder to hold a vector or a text LoRA. Each is
    refused in one line naming the key and the family, and the pipe is left as it was."""
    pipe = pipes["flux2_klein"]
    base = image(pipe, PROMPT)
    for method, key in ((make("textual_inversion"), "method: textual_inversion"), (make("lora", text_encoder=True), "method.text_encoder"),
                        (make("dreambooth", train_text_encoder=True, prior_preservation=False), "method.train_text_encoder")):
        with pytest.raises(MethodConfigError, match=rf"^{key}: flux2_klein has no CLIP text encoder to train [^\n]+$"):
            method.train(pipe, concept, TrainSettings(steps=1, batch_size=1, progress=False))
    assert np.array_equal(image(pipe, PROMPT), base)


@pytest.mark.parametrize("fam", ["sd3", "flux1"])
def test_multi_vector_textual_inversion_on_a_dit_writes_its_placeholder_out_where_the_pipeline_does_not(fam, pipes, concept):
    """Two vectors: FLUX's pipeline expands '<sks>' itself (diffusers' loader mixin); SD 3.5's has no mixin,
    so the method writes '<sks> <sks>_1' into the prompt. Either way weight 0 is the base prompt's image."""
    pipe = pipes[fam]
    method = make("textual_inversion", num_vectors=2)
    result = method.train(pipe, concept, TrainSettings(steps=3, batch_size=2, progress=False))
    assert result.artifact.tensors["clip_l"].shape[0] == 2
    method.apply(pipe, result.artifact, 0.0)
    written = method.prompt(PROMPT, concept)
    method.remove(pipe)
    assert ("<sks>_1" in written) == (fam == "sd3")
    assert np.array_equal(image(pipe, PROMPT, method, result.artifact, 0.0, concept), image(pipe, method.base_prompt(PROMPT, concept)))


def test_min_snr_weighting_is_refused_on_a_flow_model(pipes, concept):
    with pytest.raises(MethodConfigError, match="train.snr_gamma"):
        make("lora").train(pipes["flux1"], concept, TrainSettings(steps=1, batch_size=1, progress=False, snr_gamma=5.0))


def test_a_whole_comparison_runs_on_a_flux_folder_through_run_py(dit_dirs, tmp_path):
    """`python run.py model=flux1 model.path=...` as a user types it (smoke budget, one concept): training,
    sweeps, scores and the report go through the code the micro model uses, and weight 0 is checked to be
    the base model's image as on every model."""
    import subprocess
    import sys

    import pandas as pd

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    cmd = [sys.executable, str(root / "run.py"), "model=flux1", f"model.path={dit_dirs['flux1']}", "model.resolution=64", "model.dtype=float32",
           "train=smoke", "sweep=smoke", "progress=false", "workers=1", "threads=1", "seeds=[0]", "data.concepts=[sks_crescent]",
           "method=[lora,textual_inversion]", f"method.lora.target_modules=[{','.join(BOTH_STREAMS)}]", f"results_dir={out}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(out / "results.csv")
    assert set(table.method.dropna()) == {"lora", "textual_inversion"} and (out / "report" / "report.html").is_file()  # rows without a method: the base model's
    assert "Warning" not in done.stderr, done.stderr[-2000:]


def test_a_dit_resolution_its_latent_patches_cannot_split_is_refused_naming_the_key(dit_dirs):
    from bench.models import ModelConfigError, load_pipeline

    with pytest.raises(ModelConfigError, match=r"^model\.resolution: 60 px is not a multiple of 8 .*use 56 or 64$"):
        load_pipeline({"name": "flux1", "path": str(dit_dirs["flux1"]), "dtype": "float32", "resolution": 60}, "cpu")
