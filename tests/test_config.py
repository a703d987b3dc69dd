"""Every YAML under conf/ composes against the structured schema; typos fail at composition."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError

from bench.config import register

CONF = Path(__file__).resolve().parents[1] / "conf"
register()

# Options whose required keys (???) a user must give; the test supplies stand-ins.
REQUIRED = {("model", "sd15"): ["model.path=/models/sd15"], ("model", "sd21"): ["model.path=/models/sd21"], ("data", "folder"): ["data.path=/data/10_sks dog"]}


def group_options():
    for group_dir in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "experiment")):  # experiments: below
        for yaml in sorted(group_dir.glob("*.yaml")):
            yield group_dir.name, yaml.stem


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_default_config_composes():
    cfg = _compose([])
    assert cfg.model.name == "micro" and list(cfg.data.concepts) == ["sks_crescent", "zwx_stripes"] and list(cfg.seeds) == [0, 1, 2]


def test_the_default_covers_an_object_and_a_style_and_the_suite_excludes_the_tuning_concepts():
    from bench import world

    kinds = {world.CONCEPTS[c].kind for c in _compose([]).data.concepts}
    assert kinds == {"object", "style"}
    suite = list(_compose(["data=suite"]).data.concepts)
    assert suite == list(world.SUITE) and len(suite) >= 8
    assert sum(world.CONCEPTS[c].kind == "object" for c in suite) >= 4 and sum(world.CONCEPTS[c].kind == "style" for c in suite) >= 4
    assert not set(world.TUNING) & set(suite)
    probes = list(_compose(["data=textures"]).data.concepts)
    assert probes == list(world.TEXTURE_PROBES) and not set(probes) & set(suite)


@pytest.mark.parametrize("group,option", list(group_options()))
def test_every_option_composes(group, option):
    cfg = _compose([f"{group}={option}", *REQUIRED.get((group, option), [])])
    from omegaconf import OmegaConf

    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def test_misspelt_key_fails_at_composition():
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        _compose(["model.resolutoin=32"])


def test_every_experiment_composes_validates_and_estimates_its_own_training(tmp_path):
    """conf/experiment/*.yaml: each composes with the paths a user supplies, every value passes the checks a
    run makes before training, and mode=estimate with it includes the variant it trains."""
    from hydra import compose, initialize_config_dir

    from bench.config import register
    from bench.estimate import Variant, configured_variant
    from methods import build_method
    from methods.settings import TrainSettings

    register()
    experiments = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
    assert experiments
    for name in experiments:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=[f"+experiment={name}", "model.path=/models/sd15", "data.path=/data/10_sks dog",
                                               f"results_dir={tmp_path}"])
        assert cfg.model.name in ("sd15", "sd21", "sdxl", "sd35", "flux1") and cfg.data.path
        settings = TrainSettings.from_config(cfg)
        assert settings.precision in ("fp16", "bf16") and settings.gradient_checkpointing  # what fits a GPU
        assert sorted(cfg.method) == ["dreambooth", "hypernetwork", "lora", "textual_inversion"], name
        if cfg.model.name in ("sd35", "flux1"):  # the DiT families: bf16, LoRA on both streams' attention projections
            assert cfg.model.dtype == "bf16" and {"add_k_proj", "to_add_out", "to_q"} <= set(cfg.method.lora.target_modules)
        for method in cfg.method:
            build_method(cfg, method)  # every hyper-parameter accepted
        assert configured_variant(cfg) == Variant(settings.precision, settings.gradient_checkpointing, settings.optimizer)
    # A subset of an experiment's methods: '~method.<name>' drops one; method=[...] alone leaves the
    # experiment's settings of the others behind, and that is one clear error, not a failed import.
    from methods.errors import MethodConfigError

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        fewer = compose("config", overrides=["+experiment=sd15_four_methods", "model.path=/m", "data.path=/d", "~method.dreambooth"])
        stray = compose("config", overrides=["+experiment=sd15_four_methods", "model.path=/m", "data.path=/d", "method=[lora]"])
    assert sorted(fewer.method) == ["hypernetwork", "lora", "textual_inversion"]
    with pytest.raises(MethodConfigError, match=r"~method\.dreambooth"):
        build_method(stray, "dreambooth")
