"""adapterbench entry point: compose the Hydra config, run the pipeline, exit with its status.

Exit status: 0 success; 1 a method failed or (mode=check) a metric regressed; 2 a usage error
(bad config, missing file, malformed baseline), reported in one line that names the key or file.
"""

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
USAGE_ERROR = 2
# Hydra's main() does not return the task's value, so the worst status of this process's jobs is kept here.
exit_status = 0


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    global exit_status
    exit_status = max(exit_status, job(cfg))


def job(cfg: DictConfig) -> int:
    from bench.data import ConceptDataError
    from bench.models import ModelConfigError
    from bench.regression import BaselineError
    from bench.runner import main as run_main
    from bench.sweep import SweepError
    from methods.base import MethodConfigError
    from metrics.fd import InceptionUnavailable

    try:
        return run_main(cfg)
    except (BaselineError, ConceptDataError, ModelConfigError, MethodConfigError, SweepError, InceptionUnavailable) as e:
        print(f"adapterbench: error: {e}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    main()
    sys.exit(exit_status)
