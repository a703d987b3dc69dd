import re

import pytest
from omegaconf import OmegaConf
from PIL import Image

from bench.data import load_world_concept
from bench.sweep import SweepError, check_sweep_config, check_weight_changes_images, check_weight_zero, sweep_method, sweep_prompts
from methods.base import Artifact, Method


@pytest.fixture(scope="module")
def concept():
    return load_world_concept("sks_crescent", 2, 64)


def test_prompt_templates_fill_and_name_bad_keys(concept):
    cfg = OmegaConf.create({"instance": ["{instance}"], "recontext": ["{instance} on a white background", "a {token} {class_word}"], "unrelated": ["a red star"]})
    prompts = sweep_prompts(cfg, concept)
    assert [(p.prompt_id, p.text) for p in prompts] == [
        ("instance_0", "a sks crescent"),
        ("recontext_0", "a sks crescent on a white background"),
        ("recontext_1", "a sks crescent"),
        ("unrelated_0", "a red star"),
    ]
    assert prompts[1].scoring_text(concept) == "a crescent on a white background"
    with pytest.raises(SweepError, match=r"sweep.recontext\[0\]: unknown placeholder {subject}"):
        sweep_prompts(OmegaConf.create({"instance": [], "recontext": ["a {subject}"]}), concept)
    with pytest.raises(SweepError, match="sweep.instance"):
        sweep_prompts(OmegaConf.create({"unrelated": ["a red star"]}), concept)


@pytest.mark.parametrize("template,shown", [("{instance} {0}", "{0}"), ("{instance.__class__}", "{instance.__class__}"),
                                            ("{instance!r}", "{instance!r}"), ("{instance:>40}", "{instance:>40}"), ("{}", "{}")])
def test_a_template_reads_bare_placeholder_names_only(concept, template, shown):
    """str.format would fill '{instance.__class__}' with "<class 'str'>" (a prompt nobody wrote) and fail on
    '{0}' with an IndexError traceback."""
    with pytest.raises(SweepError, match=r"^sweep\.instance\[0\]: unknown placeholder " + re.escape(shown)):
        sweep_prompts(OmegaConf.create({"instance": [template]}), concept)
    with pytest.raises(SweepError, match=r"^sweep\.instance\[0\]: .* is not a prompt template"):
        sweep_prompts(OmegaConf.create({"instance": ["{instance"]}), concept)
    assert sweep_prompts(OmegaConf.create({"instance": ["{{literal}} {instance}"]}), concept)[0].text == "{literal} a sks crescent"


def test_image_names_say_run_sweep_prompt_seed_and_weight(tmp_path):
    from bench.stages import image_file

    path = image_file(tmp_path, "3f2a9c01d4", "1b2c3d4e", "instance_0", 3, -0.5)
    assert path.name == "instance_0_seed3_w-0.50.png" and path.parent.name == "3f2a9c01d4-1b2c3d4e"


def test_weight_zero_further_than_one_level_from_the_base_fails_the_sweep():
    base_im = Image.new("RGB", (4, 4), (100, 100, 100))
    near, far = Image.new("RGB", (4, 4), (101, 100, 100)), Image.new("RGB", (4, 4), (103, 100, 100))
    base = {("a circle shape", 0): base_im}
    assert check_weight_zero("m", {("instance_0", 0, 0.0): near, ("instance_0", 0, 1.0): far}, base, {"instance_0": "a circle shape"}) == {("instance_0", 0): 1}
    with pytest.raises(SweepError, match="weight 0.*instance_0.*3 pixel levels"):
        check_weight_zero("m", {("instance_0", 0, 0.0): far}, base, {"instance_0": "a circle shape"})


@pytest.mark.parametrize(("override", "match"), [({"weights": []}, "sweep.weights: empty"), ({"weights": [0.0, 0.5]}, "lacks 1.0"), ({"seeds": []}, "sweep.seeds: empty"), ({"seeds": [1, 1]}, "twice"), ({"steps": 0}, "sweep.steps")])
def test_sweep_config_mistakes_name_the_key(override, match):
    cfg = OmegaConf.create({"weights": [0.0, 1.0], "seeds": [0, 1], "steps": 4, "batch": 8, **override})
    with pytest.raises(SweepError, match=match):
        check_sweep_config(cfg)


class NeverApplied(Method):
    """A broken adapter: apply() forgets to change anything."""

    name = "never_applied"

    def prepare(self, pipe, data):
        return []

    def finish(self, pipe, data):
        return Artifact(self.name, {})

    def apply(self, pipe, artifact, weight):
        pass

    def remove(self, pipe):
        pass

    def save(self, artifact, out_dir):
        return out_dir

    def load(self, path):
        return Artifact(self.name, {})


def test_an_adapter_that_changes_nothing_is_an_error(micro_pipe, concept):
    cfg = OmegaConf.create({"weights": [0.0, 1.0], "seeds": [0], "steps": 2, "guidance": 5.0, "batch": 8})
    prompts = sweep_prompts(OmegaConf.create({"instance": ["{instance}"]}), concept)
    with pytest.raises(SweepError, match="never_applied.*identical"):
        sweep_method(micro_pipe, NeverApplied(lr=1.0), Artifact("x", {}), concept, prompts, cfg, progress=False)


def test_guard_passes_when_any_image_moves():
    a, b = Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4), "blue")
    check_weight_changes_images("m", {("p", 0, 0.0): a, ("p", 0, 1.0): b, ("q", 0, 0.0): a, ("q", 0, 1.0): a}, [0.0, 1.0])


def test_automatic1111_tags_and_embedding_names_resolve_to_this_runs_artifact(concept):
    cfg = OmegaConf.create({"instance": ["<lora:sks_crescent:0.8> a photo of sks_crescent"], "unrelated": ["a red star <hypernet:sks_crescent:-0.5>"]})
    inst, unrel = sweep_prompts(cfg, concept)
    assert inst.text == "a photo of sks" and inst.written == "<lora:sks_crescent:0.8> a photo of sks_crescent"
    from methods.dreambooth import DreamBooth
    from methods.hypernetwork import Hypernetwork
    from methods.lora import LoRA
    from methods.peft_adapter import PeftAdapter
    from methods.textual_inversion import TextualInversion

    # A method's tags are its class's (LoRA and the peft adapters: <lora:...>, <lyco:...>; the hypernetwork: <hypernet:...>).
    assert [inst.scale_for(m) for m in (LoRA, PeftAdapter, Hypernetwork, DreamBooth, TextualInversion)] == [0.8, 0.8, 1.0, 1.0, 1.0]
    assert unrel.text == "a red star" and unrel.scale_for(Hypernetwork) == -0.5 and unrel.scale_for(LoRA) == 1.0
    for prompt, match in (("<lora:sks_heart:1> {instance}", r"sweep\.instance\[0\]: <lora:sks_heart:1> names no trained artifact.*'sks_crescent'"),
                          ("<lora:sks_crescent:strong> {instance}", r"sweep\.instance\[0\]: .*strength 'strong' is not a number"),
                          ("<lyco:sks_crescent:nan> {instance}", r"strength must be finite"),
                          ("<hypernetwork:sks_crescent:1> {instance}", r"sweep\.instance\[0\]: a <\.\.\.> tag other than")):
        with pytest.raises(SweepError, match=match):
            sweep_prompts(OmegaConf.create({"instance": [prompt]}), concept)


@pytest.mark.parametrize("batched", [False, True])
def test_a_lora_tag_sets_the_strength_a_prompt_is_drawn_at(micro_pipe, concept, batched):
    """'<lora:NAME:0.5> a sks shape' at sweep weight w is 'a sks shape' at weight 0.5 w: the web UI's meaning."""
    import numpy as np

    from methods.settings import TrainSettings
    from methods.lora import LoRA

    method = LoRA(lr=5e-2)
    artifact = method.train(micro_pipe, concept, TrainSettings(steps=3, batch_size=2, progress=False)).artifact
    base = {"steps": 3, "guidance": 5.0, "seeds": [0], "batch": 8, "batched": batched}
    tagged = sweep_method(micro_pipe, method, artifact, concept, sweep_prompts(OmegaConf.create({"instance": ["<lora:sks_crescent:0.5> a sks shape"]}), concept),
                          OmegaConf.create({**base, "weights": [0.0, 1.0, 2.0]}), progress=False)
    plain = sweep_method(micro_pipe, method, artifact, concept, sweep_prompts(OmegaConf.create({"instance": ["a sks shape"]}), concept),
                         OmegaConf.create({**base, "weights": [0.0, 0.5, 1.0]}), progress=False)
    for w in (0.0, 1.0, 2.0):
        a, b = np.asarray(tagged[("instance_0", 0, w)]).astype(int), np.asarray(plain[("instance_0", 0, w / 2)]).astype(int)
        assert np.abs(a - b).max() <= 1, w
