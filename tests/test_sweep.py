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
        ("instance_0", "a sks shape"),
        ("recontext_0", "a sks shape on a white background"),
        ("recontext_1", "a sks shape"),
        ("unrelated_0", "a red star"),
    ]
    assert prompts[1].scoring_text(concept) == "a shape on a white background"
    with pytest.raises(SweepError, match=r"sweep.recontext\[0\].*'subject'"):
        sweep_prompts(OmegaConf.create({"instance": [], "recontext": ["a {subject}"]}), concept)
    with pytest.raises(SweepError, match="sweep.instance"):
        sweep_prompts(OmegaConf.create({"unrelated": ["a red star"]}), concept)


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
