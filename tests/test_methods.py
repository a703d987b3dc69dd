"""Contract tests every method passes; methods are found by globbing conf/method/*.yaml."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bench.data import load_world_concept
from bench.images import generate
from methods import build_method
from methods.errors import MethodConfigError, TrainingDiverged
from methods.settings import TrainSettings
from methods.textual_inversion import unload

from helpers import assert_same_image_up_to_rounding, levels_apart

CONF = Path(__file__).resolve().parents[1] / "conf" / "method"
METHODS = sorted(p.stem for p in CONF.glob("*.yaml"))
PROMPT = "a sks shape"
STEPS = 3  # inference steps: enough to compare images exactly, cheap on 2 cores


def method_cfg(name: str, **overrides):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    cfg.update(overrides)
    return cfg


def make(name: str, **overrides):
    return instantiate(method_cfg(name, **overrides))


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


@pytest.fixture(scope="module")
def concept():
    return load_world_concept("sks_crescent", 4, 64)


@pytest.fixture(scope="module")
def trained(micro_pipe, concept, tmp_path_factory):
    """Each method trained a few steps with a large learning rate, so its change is visible."""
    out = {}
    for name in METHODS:
        lr = {"textual_inversion": 0.5, "dreambooth": 1e-3}.get(name, 5e-2)
        extra = {"num_class_images": 2, "class_image_steps": 2} if name == "dreambooth" else {}
        method = make(name, lr=lr, **extra)
        settings = TrainSettings(steps=6, batch_size=2, progress=False, cache_dir=tmp_path_factory.mktemp(name))
        out[name] = (method, method.train(micro_pipe, concept, settings))
    return out


def generate_with(pipe, method, artifact, weight, prompt, seed=0):
    method.apply(pipe, artifact, weight)
    try:
        return generate(pipe, [prompt], [seed], steps=STEPS)[0]
    finally:
        method.remove(pipe)


@pytest.mark.parametrize("name", METHODS)
def test_training_restores_the_module_tree(name, micro_pipe, concept, tmp_path):
    keys = {c: set(getattr(micro_pipe, c).state_dict()) for c in ("unet", "text_encoder")}
    extra = {"num_class_images": 2, "class_image_steps": 2} if name == "dreambooth" else {}
    make(name, **extra).train(micro_pipe, concept, TrainSettings(steps=1, batch_size=1, progress=False, cache_dir=tmp_path))
    assert {c: set(getattr(micro_pipe, c).state_dict()) for c in ("unet", "text_encoder")} == keys


@pytest.mark.parametrize("name", METHODS)
def test_same_seed_same_training(name, micro_pipe, concept, tmp_path):
    """Identical settings give identical losses and artifacts, whatever ran before (global RNG drawn in between)."""
    extra = {"num_class_images": 2, "class_image_steps": 2} if name == "dreambooth" else {}
    runs = []
    for _ in range(2):
        torch.rand(7)  # other work between the runs moves torch's global generator
        runs.append(make(name, **extra).train(micro_pipe, concept, TrainSettings(steps=2, batch_size=1, progress=False, cache_dir=tmp_path)))
    assert runs[0].losses == runs[1].losses
    a, b = runs[0].artifact.tensors, runs[1].artifact.tensors
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", METHODS)
def test_training_yields_an_artifact_and_leaves_the_base_model(name, trained, micro_pipe, concept):
    method, result = trained[name]
    assert result.artifact.tensors and result.trainable_params > 0
    # the text encoder's table, its config and the tokenizer agree again (a saved encoder must load)
    encoder = micro_pipe.text_encoder
    assert encoder.get_input_embeddings().weight.shape[0] == encoder.config.vocab_size == len(micro_pipe.tokenizer)
    assert len(result.losses) == 6 and all(np.isfinite(result.losses))
    base = generate(micro_pipe, [PROMPT], [0], steps=STEPS)[0]
    fresh = generate(micro_pipe, [PROMPT], [0], steps=STEPS)[0]
    assert np.array_equal(pixels(base), pixels(fresh))


@pytest.mark.parametrize("name", METHODS)
def test_weight_zero_is_the_base_model_and_weight_one_is_not(name, trained, micro_pipe, concept):
    method, result = trained[name]
    prompt = method.prompt(PROMPT, concept)
    # Textual Inversion at weight 0 is its initializer word (once per vector), so the base image is that prompt's.
    n = getattr(method, "num_vectors", 1)
    base_prompt = PROMPT.replace(concept.token, " ".join([concept.initializer] * n)) if name == "textual_inversion" else PROMPT
    assert method.base_prompt(PROMPT, concept) == base_prompt
    base = pixels(generate(micro_pipe, [base_prompt], [0], steps=STEPS)[0])
    assert np.array_equal(pixels(generate_with(micro_pipe, method, result.artifact, 0.0, prompt)), base)
    assert not np.array_equal(pixels(generate_with(micro_pipe, method, result.artifact, 1.0, prompt)), base)
    # remove() restored the pipe: the base image again, bit for bit.
    assert np.array_equal(pixels(generate(micro_pipe, [base_prompt], [0], steps=STEPS)[0]), base)


@pytest.mark.parametrize("name", METHODS)
def test_save_load_round_trip_gives_the_same_images(name, trained, micro_pipe, concept, tmp_path):
    method, result = trained[name]
    path = method.save(result.artifact, tmp_path)
    assert path.exists()
    reloaded = method.load(path)
    prompt = method.prompt(PROMPT, concept)
    for w in (1.0, -0.5):
        a = generate_with(micro_pipe, method, result.artifact, w, prompt)
        b = generate_with(micro_pipe, method, reloaded, w, prompt)
        assert np.array_equal(pixels(a), pixels(b))


def test_lora_exports_load_in_stock_diffusers(trained, micro_pipe, tmp_path):
    method, result = trained["lora"]
    method.save(result.artifact, tmp_path)
    ours = pixels(generate_with(micro_pipe, method, result.artifact, 1.0, PROMPT))
    for weight_name in ("pytorch_lora_weights.safetensors", "lora_kohya.safetensors"):
        micro_pipe.load_lora_weights(str(tmp_path), weight_name=weight_name, adapter_name="stock")
        try:
            stock = pixels(generate(micro_pipe, [PROMPT], [0], steps=STEPS)[0])
        finally:
            micro_pipe.unload_lora_weights()
        assert np.array_equal(stock, ours), weight_name


def test_textual_inversion_exports_load_in_stock_diffusers(trained, micro_pipe, concept, tmp_path):
    method, result = trained["textual_inversion"]
    method.save(result.artifact, tmp_path)
    prompt = method.prompt(PROMPT, concept)
    ours = pixels(generate_with(micro_pipe, method, result.artifact, 1.0, prompt))
    for file in ("learned_embeds.safetensors", "embedding_a1111.pt"):
        micro_pipe.load_textual_inversion(str(tmp_path / file), token="<sks>")
        try:
            stock = pixels(generate(micro_pipe, [prompt], [0], steps=STEPS)[0])
        finally:
            # A multi-vector embedding loads as '<sks>', '<sks>_1', ...: unload every one of them (our unload:
            # stock diffusers' leaves the encoder's config.vocab_size at the grown size).
            unload(micro_pipe, method._tokens("<sks>", result.artifact.tensors["emb_params"].shape[0]))
        assert np.array_equal(stock, ours), file


def test_hypernetwork_a1111_file_has_a1111_layout_and_reloads(trained, micro_pipe, tmp_path):
    method, result = trained["hypernetwork"]
    method.save(result.artifact, tmp_path)
    d = torch.load(tmp_path / "hypernetwork_a1111.pt", weights_only=True)
    sizes = [k for k in d if isinstance(k, int)]
    assert sizes and all(len(d[s]) == 2 and "linear.0.weight" in d[s][0] for s in sizes)
    assert d["layer_structure"] == [1.0, 2.0, 1.0] and d["activation_func"] == "linear"
    a = generate_with(micro_pipe, method, result.artifact, 1.0, PROMPT)
    b = generate_with(micro_pipe, method, method.load(tmp_path / "hypernetwork_a1111.pt"), 1.0, PROMPT)
    assert np.array_equal(pixels(a), pixels(b))


@pytest.mark.parametrize("name,key,value", [(m, "lr", bad) for m in METHODS for bad in (0, -1e-3)] + [("lora", "rank", 0), ("lora", "rank", -4), ("hypernetwork", "layer_structure", [2, 1]), ("hypernetwork", "activation", "nope"), ("textual_inversion", "num_vectors", 0)])
def test_nonsense_hyper_parameters_fail_naming_the_key(name, key, value):
    cfg = OmegaConf.create({"method": {name: method_cfg(name, **{key: value})}})
    with pytest.raises(MethodConfigError, match=rf"^method\.{name}\.{key}: "):  # the key as the user types it
        build_method(cfg, name)


@pytest.mark.parametrize("name", METHODS)
def test_every_method_says_what_its_weight_does(name):
    """The report's definitions table reads this line; a new method without it would go unexplained."""
    method = build_method(OmegaConf.create({"method": {name: method_cfg(name)}}), name)
    assert len(method.weight_meaning) > 20 and "w" in method.weight_meaning


def test_unknown_method_is_named():
    cfg = OmegaConf.create({"method": {"lora": method_cfg("lora")}})
    with pytest.raises(MethodConfigError, match="unknown method 'lorra'"):
        build_method(cfg, "lorra")


def test_nan_loss_stops_training_and_leaves_the_base_model(micro_pipe, concept):
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    handle = micro_pipe.unet.register_forward_hook(lambda m, i, o: UNet2DConditionOutput(sample=o.sample * float("nan")))
    method = make("lora")
    try:
        with pytest.raises(TrainingDiverged, match="loss became nan at step 0"):
            method.train(micro_pipe, concept, TrainSettings(steps=3, batch_size=2, progress=False))
    finally:
        handle.remove()
    assert not getattr(micro_pipe.unet, "peft_config", None) or "adapterbench" not in micro_pipe.unet.peft_config


def sweep_prompts_of(concept):
    from bench.sweep import sweep_prompts

    return sweep_prompts(OmegaConf.create({"instance": ["{instance}"], "unrelated": ["a red star"]}), concept)


def batched_sweep_as_one_weight_at_a_time(pipe, method, artifact, concept, prompts, cfg: dict) -> dict:
    """The batched sweep's images, after checking them against the one-weight-at-a-time sweep's."""
    from bench.sweep import sweep_method

    one_by_one = sweep_method(pipe, method, artifact, concept, prompts, OmegaConf.create({**cfg, "batched": False}), progress=False)
    # The reference in another batch layout too: at an extrapolated weight (-1 after a few violent steps)
    # generation is chaotic, and one thread's rounding alone moved a quarter of the pixels by up to 118 levels.
    singly = sweep_method(pipe, method, artifact, concept, prompts, OmegaConf.create({**cfg, "batched": False, "batch": 1}), progress=False)
    batched = sweep_method(pipe, method, artifact, concept, prompts, OmegaConf.create({**cfg, "batched": True}), progress=False)
    assert one_by_one.keys() == batched.keys() == singly.keys()
    for key in one_by_one:
        assert_same_image_up_to_rounding(one_by_one[key], batched[key], key, also_allowed=levels_apart(one_by_one[key], singly[key]))
    return batched


@pytest.mark.parametrize("name", [m for m in METHODS if m in ("textual_inversion", "hypernetwork", "lora")])
def test_batched_weights_give_the_images_of_one_weight_at_a_time(name, trained, micro_pipe, concept):
    method, result = trained[name]
    assert method.batched_weights
    cfg = {"weights": [-1.0, 0.0, 0.5, 1.0], "seeds": [0, 1], "steps": STEPS, "guidance": 5.0, "batch": 16}
    batched_sweep_as_one_weight_at_a_time(micro_pipe, method, result.artifact, concept, sweep_prompts_of(concept), cfg)


def test_a_lora_on_the_text_encoder_sweeps_batched_as_one_weight_at_a_time(micro_pipe, concept):
    """Batched sweeps scale every LoRA layer per sample, the text encoder's too (they were left at full
    strength: weight 0 drew 246 levels away from the base model and the sweep failed)."""
    from bench.sweep import base_images, check_weight_zero

    method = make("lora", lr=5e-2, text_encoder=True)
    result = method.train(micro_pipe, concept, TrainSettings(steps=6, batch_size=2, progress=False))
    assert any(k.startswith("text_encoder.") for k in result.artifact.tensors)
    prompts = sweep_prompts_of(concept)
    cfg = {"weights": [0.0, 1.0], "seeds": [0, 1], "steps": STEPS, "guidance": 5.0, "batch": 8}
    batched = batched_sweep_as_one_weight_at_a_time(micro_pipe, method, result.artifact, concept, prompts, cfg)
    # The sweep stage's own weight-0 check (at most one pixel level from the base model's image).
    base = base_images(micro_pipe, [p.text for p in prompts], OmegaConf.create(cfg))
    check_weight_zero(method.name, batched, base, {p.prompt_id: p.text for p in prompts})


def test_dreambooth_single_file_loads_in_stock_diffusers(trained, micro_pipe, tmp_path):
    from diffusers import StableDiffusionPipeline

    from bench import zoo

    method, result = trained["dreambooth"]
    single = method.save(result.artifact, tmp_path)
    assert single.name == "dreambooth.safetensors" and (tmp_path / "pipeline" / "model_index.json").is_file()
    ours = pixels(generate_with(micro_pipe, method, result.artifact, 1.0, PROMPT))
    stock = StableDiffusionPipeline.from_single_file(str(single), config=str(zoo.micro_sd_dir()), local_files_only=True, safety_checker=None)
    stock.set_progress_bar_config(disable=True)
    assert np.array_equal(pixels(generate(stock, [PROMPT], [0], steps=STEPS)[0]), ours)
    folder = StableDiffusionPipeline.from_pretrained(tmp_path / "pipeline", local_files_only=True, safety_checker=None)
    folder.set_progress_bar_config(disable=True)
    assert np.array_equal(pixels(generate(folder, [PROMPT], [0], steps=STEPS)[0]), ours)


def test_dreambooth_single_file_of_an_sd2_style_model_has_the_open_clip_layout(micro_pipe, concept, tmp_path):
    """SD 2.x checkpoints hold their OpenCLIP text encoder (plain GELU) in open_clip's layout under
    `cond_stage_model.model.`: a micro model with such a text encoder writes it so, and stock diffusers
    reads the file back to the same images."""
    import json
    import shutil

    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from bench import zoo
    from bench.models import load_pipeline

    folder = tmp_path / "sd2_style"
    shutil.copytree(zoo.micro_sd_dir(), folder)
    config = json.loads((folder / "text_encoder" / "config.json").read_text())
    (folder / "text_encoder" / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
    pipe = load_pipeline({"name": "sd2_style", "path": str(folder), "dtype": "float32"}, "cpu")
    method = make("dreambooth", lr=1e-3, prior_preservation=False)
    result = method.train(pipe, concept, TrainSettings(steps=2, batch_size=2, progress=False))
    single = method.save(result.artifact, tmp_path / "out")
    keys = set(load_file(str(single)))
    assert "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in keys and "cond_stage_model.model.positional_embedding" in keys
    assert not any(k.startswith("cond_stage_model.transformer.") for k in keys)
    ours = pixels(generate_with(pipe, method, result.artifact, 1.0, PROMPT))
    stock = StableDiffusionPipeline.from_single_file(str(single), config=str(folder), local_files_only=True, safety_checker=None)
    stock.set_progress_bar_config(disable=True)
    assert np.array_equal(pixels(generate(stock, [PROMPT], [0], steps=STEPS)[0]), ours)


def test_repeated_captions_are_encoded_once_with_the_states_and_gradients_of_every_row(micro_pipe, concept):
    """The training step encodes each distinct caption of a batch once (`batch_text`); the reference is the
    text encoder run on every row, as the diffusers examples do: same states, same gradient on the
    trained vectors."""
    from methods.conditioning import encode_set, text_condition
    from methods.training import batch_text

    method = make("textual_inversion")
    params = method.prepare(micro_pipe, concept)
    try:
        captions = ["a sks shape", "a sks shape on grass", "a sks shape", "a sks shape"]
        s = encode_set(micro_pipe, concept.images[:4], [method.prompt(c, concept) for c in captions])
        idx = torch.tensor([0, 2, 1, 3, 0, 3])
        seen = []
        encode = method.encode
        method.encode = lambda pipe, rows: seen.append(len(rows)) or encode(pipe, rows)
        weights = torch.linspace(0.5, 2.0, len(idx))[:, None, None]  # a different weight per sample: each row's gradient counts
        results = []
        for fn in (lambda: batch_text(method, micro_pipe, s, idx, "cpu"), lambda: text_condition(micro_pipe, s.input_ids[idx])):
            hidden, _ = fn()
            (grad,) = torch.autograd.grad((hidden.square() * weights).sum(), params[0])
            results.append((hidden.detach(), grad))
        assert seen == [2]  # two distinct captions for six images
        torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
        # The repeats' gradients are summed in another order: float32 rounding, relative to the gradient's size.
        torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-3, atol=1e-5 * float(results[1][1].abs().max()))
        assert results[1][1].abs().sum() > 0
    finally:
        method.finish(micro_pipe, concept)


@pytest.mark.parametrize("num_vectors", [1, 2])
def test_textual_inversion_from_a_word_the_tokenizer_splits_reproduces_it_at_weight_zero(num_vectors, micro_pipe, concept, tmp_path):
    """The micro tokenizer spells 'toy' as three pieces (t, o, y): the vectors start as those pieces, once per
    copy, so weight 0 is the prompt 'a toy shape' (or 'a toy toy shape') exactly, and training still moves them."""
    assert len(micro_pipe.tokenizer.tokenize("toy")) == 3
    method = make("textual_inversion", lr=0.5, num_vectors=num_vectors, initializer="toy")
    result = method.train(micro_pipe, concept, TrainSettings(steps=4, batch_size=2, progress=False, cache_dir=tmp_path))
    assert result.artifact.tensors["emb_params"].shape[0] == 3 * num_vectors
    base_prompt = method.base_prompt(PROMPT, concept)
    assert base_prompt == "a " + " ".join(["toy"] * num_vectors) + " shape"
    base = pixels(generate(micro_pipe, [base_prompt], [0], steps=STEPS)[0])
    prompt = method.prompt(PROMPT, concept)
    assert np.array_equal(pixels(generate_with(micro_pipe, method, result.artifact, 0.0, prompt)), base)
    assert not np.array_equal(pixels(generate_with(micro_pipe, method, result.artifact, 1.0, prompt)), base)
    reloaded = method.load(method.save(result.artifact, tmp_path / "saved"))
    assert np.array_equal(pixels(generate_with(micro_pipe, method, reloaded, 0.0, prompt)), base)
    assert np.array_equal(pixels(generate(micro_pipe, [base_prompt], [0], steps=STEPS)[0]), base)  # the pipe is restored


def test_a_caption_longer_than_the_text_encoder_reads_is_named_not_cut(micro_pipe, concept, tmp_path):
    """A 10 MB caption was truncated to the encoder's length in silence; the training refuses it, quoting its start."""
    from dataclasses import replace

    from bench.data import ConceptDataError

    long = replace(concept, captions=["a sks shape " + "on a white background " * 30] * len(concept.images))
    keys = set(micro_pipe.unet.state_dict())
    with pytest.raises(ConceptDataError, match=r"^data: a caption is \d+ tokens and the text encoder reads \d+, so training would see it cut"):
        make("lora").train(micro_pipe, long, TrainSettings(steps=1, batch_size=1, progress=False, cache_dir=tmp_path))
    assert set(micro_pipe.unet.state_dict()) == keys  # the adapter built before the refusal is gone again


def test_a_lora_rank_above_every_targeted_layer_is_refused_before_the_adapter_is_built(micro_pipe, concept, tmp_path):
    """rank=100000 on the micro model: 1.2e9 parameters and 21 GB of RAM, accepted in silence before; the
    message names the key as typed and the largest rank that means anything here."""
    from methods import qualified

    keys = set(micro_pipe.unet.state_dict())
    with pytest.raises(MethodConfigError) as refused:
        build_method(OmegaConf.create({"method": {"lora": method_cfg("lora", rank=100000)}}), "lora").train(
            micro_pipe, concept, TrainSettings(steps=1, batch_size=1, progress=False, cache_dir=tmp_path))
    # The worker's failed-stage line qualifies it with the method's name, as for every method config error.
    assert str(qualified(refused.value, "lora")).startswith("method.lora.rank: 100000 is above the smaller side of every targeted layer of the UNet (at most 128)")
    assert set(micro_pipe.unet.state_dict()) == keys  # nothing was added to the model
