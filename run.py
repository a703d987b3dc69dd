"""adapterbench entry point: compose the Hydra config, run the pipeline, exit with its status.

Exit status: 0 success; 1 a method failed or (mode=check) a metric regressed; 2 a usage error
(bad config, missing file, malformed baseline), reported in one line that names the key or file.
"""

from __future__ import annotations

import gc
import os
import re
import signal
import sys
from pathlib import Path

# Everything is local: never reach for a model hub, even when a library would like to.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from bench.config import register  # noqa: E402

register()
USAGE_ERROR = 2
CONF = Path(__file__).resolve().parent / "conf"
# Hydra's main() does not return the task's value, so the worst status of this process's jobs is kept here.
exit_status = 0


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    global exit_status
    exit_status = max(exit_status, job(cfg))


def usage_errors() -> tuple[type[Exception], ...]:
    """The errors that mean "the config or an input file is wrong": one line naming the key or file, exit 2."""
    from bench.data import ConceptDataError
    from bench.estimate import EstimateConfigError
    from bench.models import ModelConfigError
    from bench.records import RowsFileError
    from bench.regression import BaselineError
    from bench.stats import StatsConfigError
    from bench.sweep import SweepError
    from methods.errors import MethodConfigError
    from metrics.dino import DinoConfigError
    from metrics.fd import InceptionUnavailable

    return (BaselineError, ConceptDataError, EstimateConfigError, ModelConfigError, MethodConfigError, RowsFileError, StatsConfigError, SweepError, InceptionUnavailable,
            DinoConfigError)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt (never caught as an Exception)."""


def on_sigterm(signum, frame) -> None:
    raise Terminated()


def job(cfg: DictConfig) -> int:
    from bench.models import skip_bitsandbytes_unless_used

    skip_bitsandbytes_unless_used(cfg)
    from bench.cli import main as run_main

    try:
        return run_main(cfg)
    except usage_errors() as e:
        print(f"adapterbench: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as e:
        from bench.io import no_space

        full = no_space(e)
        if full is None:
            raise
        print(f"adapterbench: error: {full}", file=sys.stderr)
        return USAGE_ERROR
    except (KeyboardInterrupt, Terminated) as e:
        name, status = ("SIGTERM", 143) if isinstance(e, Terminated) else ("SIGINT (Ctrl-C)", 130)
        print(f"adapterbench: stopped by {name}; every finished stage is kept in {cfg.results_dir}: run the same command again to resume", file=sys.stderr)
        raise SystemExit(status) from None  # a multirun's later jobs must not start either


def config_error(argv: list[str]) -> str | None:
    """Compose the config the command line asks for, before Hydra does, and turn a composition error
    (unknown key, group option or type, malformed override) into one line naming the override. Every
    value of a sweep override (`-m key=a,b`) is checked; Hydra's own flags skip the check."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):
        return None
    try:
        parsed = OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")])
        parsed = [o for o in parsed if not o.get_key_element().lstrip("+~").startswith("hydra")]
        # One composition per value of each sweep, the other sweeps at their first value.
        choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [o.input_line] for o in parsed]
        first = [c[0] for c in choices]
        variants = [first] + [first[:i] + [v] + first[i + 1:] for i, c in enumerate(choices) for v in c[1:]]
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            configs = [compose("config", overrides=overrides) for overrides in variants]
        for cfg in configs:
            problem = results_dir_error(cfg.results_dir)
            if problem:
                return problem
        if len(configs) > 1:
            # A multirun's later jobs would otherwise find a nonsense hyper-parameter only after the
            # earlier jobs have run: every job's methods are built (cheap: no model is loaded) first.
            from methods import build_method
            from methods.errors import MethodConfigError

            for cfg, overrides in zip(configs, variants):
                for name in cfg.method:
                    try:
                        build_method(cfg, name)
                    except MethodConfigError as e:
                        return f"{e} (multirun job {' '.join(overrides)})"
    except (HydraException, OmegaConfBaseException) as e:
        cause = e.__cause__
        lines = str(e).strip().splitlines()
        options = [line.strip() for line in lines if line.startswith("\t") and "provider=" not in line]
        detail = f" ({str(cause).strip().splitlines()[0]})" if cause is not None and str(cause).strip() else ""
        group = re.search(r"Could not (?:load|find) '(\w+)/", lines[0])
        if not options and group and (CONF / group[1]).is_dir():
            # Hydra lists a group's options for `method=foo` but not for a list entry, `method=[foo]`.
            options = sorted(f.stem for f in (CONF / group[1]).glob("*.yaml"))
        options = [o for o in options if not o.endswith("_schema")]  # the structured schemas are not choices
        known = f"; available: {', '.join(options)}" if options else ""
        return f"config: {lines[0].rstrip('.')}{detail}{known}"
    return None


def results_dir_error(value) -> str | None:
    """Why `results_dir` cannot hold a run, checked before Hydra creates its folder under it (None: it can)."""
    text = "" if value is None else str(value)
    if not text.strip():
        return "results_dir: empty; name a folder for the results (e.g. results_dir=results/mine)"
    from bench.io import folder_error

    path = Path(text).absolute()
    if path.exists() and not path.is_dir():
        return f"results_dir: {path} is a file, not a folder"
    return folder_error(path, "results_dir", path, "written" if path.exists() else "made")


def expand_home(argv: list[str]) -> list[str]:
    """`results_dir=~/x` as the shell would expand it (Hydra keeps the '~' and would make a folder named '~')."""
    return [re.sub(r"^(\+{0,2}results_dir=)(['\"]?)~", lambda m: m[1] + m[2] + os.path.expanduser("~"), a) for a in argv]


if __name__ == "__main__":
    # Each console line as it is printed, also under nohup or in CI (a pipe or file is block-buffered by
    # default: mode=tune's progress lines had appeared only when the whole tuning ended).
    sys.stdout.reconfigure(line_buffering=True)
    signal.signal(signal.SIGTERM, on_sigterm)
    sys.argv[1:] = expand_home(sys.argv[1:])
    error = config_error(sys.argv[1:])
    if error:
        print(f"adapterbench: error: {error}", file=sys.stderr)
        sys.exit(USAGE_ERROR)
    main()
    # Everything is written; spare the interpreter's exit its full garbage-collector pass over every
    # object torch, diffusers and pandas made (about a second and a half, bench.models.long_lived).
    gc.freeze()
    sys.exit(exit_status)
