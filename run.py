"""adapterbench entry point: compose the Hydra config, run the pipeline, exit with its status."""

from __future__ import annotations

import os
import sys

# Everything is local: never reach for a model hub, even when a library would like to.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from bench.config import register  # noqa: E402

register()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> int:
    from bench.runner import run

    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
