"""The generic peft adapter (methods/peft_adapter.py): what weight w does in each family, checked on the
adapter's own tensors (the contract tests in test_methods.py check weight 0 == base on images), and bad
adapter configs named."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bench.data import load_world_concept
from methods.errors import MethodConfigError
from methods.settings import TrainSettings
from methods.peft_adapter import ADAPTER

CONF = Path(__file__).resolve().parents[1] / "conf" / "method"
FAMILIES = ["dora", "loha", "lokr", "oft"]


@pytest.fixture(scope="module")
def trained(micro_pipe):
    concept = load_world_concept("sks_crescent", 4, 64)
    out = {}
    for name in FAMILIES:
        method = instantiate(OmegaConf.load(CONF / f"{name}.yaml"), lr=0.05)
        out[name] = (method, method.train(micro_pipe, concept, TrainSettings(steps=4, batch_size=2, progress=False)))
    return out


def adapter_layers(pipe):
    return [m for m in pipe.unet.modules() if hasattr(m, "get_base_layer") and (ADAPTER in getattr(m, "scaling", {}) or ADAPTER in getattr(m, "oft_R", {}))]


def at_weight(pipe, method, artifact, w, read):
    method.apply(pipe, artifact, w)
    try:
        return [read(layer) for layer in adapter_layers(pipe)]
    finally:
        method.remove(pipe)


@pytest.mark.parametrize("name", ["loha", "lokr"])
def test_loha_and_lokr_add_their_update_at_scale_w(name, trained, micro_pipe):
    method, result = trained[name]
    full = at_weight(micro_pipe, method, result.artifact, 1.0, lambda m: m.get_delta_weight(ADAPTER).clone())
    for w in (0.5, -1.0, 2.0):
        scaled = at_weight(micro_pipe, method, result.artifact, w, lambda m: m.get_delta_weight(ADAPTER).clone())
        assert len(scaled) == len(full) > 0
        assert all(torch.allclose(s, w * f, atol=1e-7) for s, f in zip(scaled, full))
    assert any(f.abs().max() > 0 for f in full)  # it learned something to scale


def test_dora_moves_each_rows_magnitude_from_the_base_norm_and_scales_the_direction(trained, micro_pipe):
    method, result = trained["dora"]

    def read(m):
        return m.lora_magnitude_vector[ADAPTER].weight.clone(), torch.linalg.norm(m.get_base_layer().weight, dim=1), m.scaling[ADAPTER]

    ends = {w: at_weight(micro_pipe, method, result.artifact, w, read) for w in (0.0, 0.5, 1.0)}
    for (m0, norm, s0), (mh, _, sh), (m1, _, s1) in zip(ends[0.0], ends[0.5], ends[1.0]):
        assert torch.equal(m0, norm) and s0 == 0.0  # w = 0: magnitude / norm is exactly 1, no direction
        assert torch.allclose(mh, (norm + m1) / 2, atol=1e-6) and sh == s1 / 2
    assert any(not torch.equal(m1, norm) for m1, norm, _ in ends[1.0])  # the magnitude trained


def test_oft_multiplies_each_rotation_generator_by_w(trained, micro_pipe):
    method, result = trained["oft"]
    full = at_weight(micro_pipe, method, result.artifact, 1.0, lambda m: m.oft_R[ADAPTER].weight.clone())
    for w in (0.0, 0.5, -1.0):
        scaled = at_weight(micro_pipe, method, result.artifact, w, lambda m: m.oft_R[ADAPTER].weight.clone())
        assert all(torch.allclose(s, w * f) for s, f in zip(scaled, full))
    # At w = 0 the rotation is the identity, so the projection sees its input unchanged.
    method.apply(micro_pipe, result.artifact, 0.0)
    try:
        layer = adapter_layers(micro_pipe)[0]
        x = torch.randn(3, layer.in_features)
        assert torch.equal(layer.oft_R[ADAPTER](x), x)
    finally:
        method.remove(micro_pipe)


def test_bad_adapter_configs_name_the_key(micro_pipe):
    concept = load_world_concept("sks_crescent", 2, 64)
    from methods import build_method

    cfg = OmegaConf.create({"method": {
        "ia3": {"_target_": "methods.peft_adapter.PeftAdapter", "name": "ia3",
                "adapter": {"_target_": "peft.IA3Config", "_convert_": "all", "target_modules": ["to_k"], "feedforward_modules": []}},
        "loha": {"_target_": "methods.peft_adapter.PeftAdapter", "name": "loha", "adapter": {"r": 4}}}})
    with pytest.raises(MethodConfigError, match=r"method\.ia3\.adapter: peft type IA3"):
        build_method(cfg, "ia3")
    with pytest.raises(MethodConfigError, match=r"method\.loha\.adapter: a peft config"):
        build_method(cfg, "loha")
    keys = set(micro_pipe.unet.state_dict())
    nothing = instantiate(OmegaConf.load(CONF / "loha.yaml"), adapter={"target_modules": ["no_such_layer"]})
    with pytest.raises(MethodConfigError, match=r"method\.loha\.adapter\.target_modules"):
        nothing.train(micro_pipe, concept, TrainSettings(steps=1, batch_size=1, progress=False))
    assert set(micro_pipe.unet.state_dict()) == keys  # nothing left behind


@pytest.mark.parametrize("name", ["loha", "lokr"])
def test_loha_and_lokr_export_the_lycoris_layout_and_read_it_back(name, trained, micro_pipe, tmp_path):
    import numpy as np
    from safetensors.torch import load_file

    from bench.images import generate
    from methods.peft_adapter import LYCORIS_FILE

    method, result = trained[name]
    method.save(result.artifact, tmp_path)
    lyco = load_file(str(tmp_path / LYCORIS_FILE))
    parts = {"loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"}, "lokr": {"lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"}}[name]
    assert {k.split(".", 1)[1] for k in lyco} <= parts and "alpha" in {k.split(".", 1)[1] for k in lyco}
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.alpha" in lyco
    # Every module's scale is alpha / rank = 1 for a LyCORIS loader: the peft scale is in the factors.
    ranks = {k.split(".")[0]: v.shape[0] for k, v in lyco.items() if k.endswith((".hada_w1_b", ".lokr_w2_b"))}
    assert all(float(lyco[f"{m}.alpha"]) == r for m, r in ranks.items())
    # What a LyCORIS loader computes from the file (the formulas of AUTOMATIC1111's network_loha/lokr: the
    # product of the factors, times alpha / rank) is the update peft applies at weight 1.
    method.apply(micro_pipe, result.artifact, 1.0)
    try:
        peft_delta = {n: m.get_delta_weight(ADAPTER).clone() for n, m in micro_pipe.unet.named_modules()
                      if hasattr(m, "get_delta_weight") and ADAPTER in getattr(m, "scaling", {})}
    finally:
        method.remove(micro_pipe)
    for module, delta in peft_delta.items():
        f = {k.split(".", 1)[1]: v for k, v in lyco.items() if k.split(".", 1)[0] == "lora_unet_" + module.replace(".", "_")}
        if name == "loha":
            rank = f["hada_w1_b"].shape[0]
            theirs = (f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"])
        else:
            w2 = f["lokr_w2"] if "lokr_w2" in f else f["lokr_w2_a"] @ f["lokr_w2_b"]
            rank = f["lokr_w2_b"].shape[0] if "lokr_w2_b" in f else None
            theirs = torch.kron(f["lokr_w1"], w2)
        scale = float(f["alpha"]) / rank if rank else 1.0
        assert torch.allclose(theirs.reshape(delta.shape) * scale, delta, atol=1e-6), module
    reread = method.load(tmp_path / LYCORIS_FILE)
    for w in (1.0, 0.5):
        images = []
        for artifact in (result.artifact, reread):
            method.apply(micro_pipe, artifact, w)
            try:
                images.append(np.asarray(generate(micro_pipe, ["a sks shape"], [0], steps=3)[0]).astype(int))
            finally:
                method.remove(micro_pipe)
        assert np.abs(images[0] - images[1]).max() <= 1, (name, w)
