"""Shared fixtures: the embedded micro model and micro CLIP, loaded once per session, offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

MICRO = {"name": "micro", "embedded": True, "dtype": "float32"}


@pytest.fixture(scope="session")
def micro_pipe():
    from bench.models import load_pipeline

    return load_pipeline(MICRO, "cpu")


@pytest.fixture(scope="session")
def micro_encoder():
    from bench.clip import load_encoder

    return load_encoder("micro")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
