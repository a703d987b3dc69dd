"""The pipeline, stage by stage: config -> model -> training (measured) -> rows -> results directory.

Every stage writes its output atomically and is skipped when that output exists, so a rerun with the
same config reuses finished work and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import subprocess
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from bench import records
from bench.cost import TrainJobFailed, train_in_subprocess
from bench.data import load_concept
from bench.io import atomic_path, atomic_write_text
from bench.models import model_path
from methods import build_method
from methods.base import MethodConfigError, TrainSettings

log = logging.getLogger(__name__)


def run_id(cfg: DictConfig, method: str) -> str:
    """A short hash of everything that determines a method's training result."""
    keys = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data", "train")}
    keys.update(seed=cfg.seed, method=OmegaConf.to_container(cfg.method[method], resolve=True))
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:10]


def main(cfg: DictConfig) -> int:
    """Dispatch on `mode`: run (default), baseline, check or report; returns the exit code."""
    from bench import regression

    results = Path(cfg.results_dir)
    mode = cfg.get("mode", "run")
    if mode == "run":
        return run(cfg)
    if mode == "report":
        from bench.report import build_report

        dirs = [results, *[Path(d) for d in cfg.get("merge") or []]]
        print(f"adapterbench: report {build_report(dirs).resolve()}")
        return 0
    if mode not in ("baseline", "check"):
        raise regression.BaselineError(f"mode: {mode!r} is not one of run, baseline, check, report")
    if not cfg.get("baseline"):
        raise regression.BaselineError(f"baseline: mode={mode} needs baseline=PATH.json")
    doc = regression.read_baseline(Path(cfg.baseline)) if mode == "check" else None
    status = 0
    if records.read_table(results).empty:
        print(f"adapterbench: {results} holds no results yet; running the comparison first")
        status = run(cfg)
    table = records.read_table(results)
    if mode == "baseline":
        regression.write_baseline(table, Path(cfg.baseline))
        print(f"adapterbench: baseline written to {cfg.baseline}")
        return status
    comparisons = regression.compare(doc, table, OmegaConf.to_container(cfg.check.tolerances, resolve=True))
    print(regression.format_comparisons(comparisons))
    junit = Path(cfg.check.junit) if cfg.check.get("junit") else results / "regression_junit.xml"
    regression.write_junit(comparisons, junit)
    regressed = [c for c in comparisons if c.regressed]
    print(f"adapterbench: {len(regressed)} of {len(comparisons)} checks regressed; JUnit XML {junit}")
    return 1 if regressed or status else 0


def run(cfg: DictConfig) -> int:
    """Run every stage; returns the process exit code (1 when any method failed)."""
    results = Path(cfg.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    # Check everything a user can get wrong before any heavy work starts.
    methods = {name: build_method(cfg, name) for name in cfg.method}
    if not methods:
        raise MethodConfigError("method: no method selected (e.g. method=[lora,hypernetwork])")
    TrainSettings.from_config(cfg)  # train.steps, train.batch_size: checked here, not in each training job
    model_path(cfg.model)
    concept = load_concept(cfg.data, cfg.model.resolution)
    if cfg.metrics.inception:
        from metrics.fd import inception_metric

        inception_metric()
    write_metadata(cfg, results / "run.json")

    failed = []
    for name in methods:
        if not train_stage(cfg, name, concept.name, results):
            failed.append(name)
    trained = [n for n in methods if n not in failed]
    pending = [n for n in trained if not records.stage_file(results, sweep_stage_name(cfg, n)).exists()]
    if pending:
        failed += sweep_stages(cfg, {n: methods[n] for n in pending}, concept, results)
    table = records.publish(results)
    report = report_stage(results)
    print_summary(table, results, failed)
    print(f"adapterbench: report {report.resolve()}")
    return 1 if failed else 0


def report_stage(results: Path) -> Path:
    """Rebuild the report unless it was built from exactly the rows files there are now."""
    from bench.report import build_report

    stamp_file = results / "report" / ".rows_stamp"
    files = sorted((results / "rows").glob("*.parquet"))
    stamp = hashlib.sha256(json.dumps([(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]).encode()).hexdigest()
    html = results / "report" / "report.html"
    if html.is_file() and stamp_file.is_file() and stamp_file.read_text() == stamp:
        log.info("reusing %s", html)
        return html
    html = build_report([results])
    atomic_write_text(stamp_file, stamp)
    return html


def train_stage(cfg: DictConfig, name: str, concept: str, results: Path) -> bool:
    """Train one method (in its own process) unless its rows exist; True when it succeeded."""
    rid = run_id(cfg, name)
    stage = f"train_{name}_{rid}"
    failed_stage = f"failed_{stage}"
    if records.stage_file(results, stage).exists():
        log.info("reusing %s", stage)
        return True
    ident = {"run_id": rid, "model": cfg.model.name, "method": name, "concept": concept, "seed": cfg.seed}
    out = results / "train" / f"{name}_{rid}"
    # The job's own copy of the config: parallel jobs (Hydra launchers) share the results directory.
    config_file = out / "config.yaml"
    atomic_write_text(config_file, OmegaConf.to_yaml(cfg, resolve=True))
    try:
        cost = train_in_subprocess(config_file, name, out, results / "logs" / f"{stage}.log")
    except TrainJobFailed as e:
        log.error("method %s failed: %s", name, e)
        records.write_stage(results, failed_stage, [{**ident, "metric": "train_failed", "value": 1.0, "unit": "flag", "status": f"failed: {e}"}])
        return False
    records.write_stage(results, stage, [{**ident, **row, "status": "ok"} for row in cost.rows()])
    records.stage_file(results, failed_stage).unlink(missing_ok=True)
    return True


def sweep_stage_name(cfg: DictConfig, name: str) -> str:
    sweep = hashlib.sha256(json.dumps(OmegaConf.to_container(cfg.sweep, resolve=True), sort_keys=True).encode()).hexdigest()[:8]
    return f"sweep_{name}_{run_id(cfg, name)}_{sweep}"


def sweep_stages(cfg: DictConfig, methods: dict, concept, results: Path) -> list[str]:
    """Sweep and score each trained method; returns the names of methods whose sweep failed."""
    from bench.clip import load_encoder
    from bench.models import load_pipeline
    from bench.score import sweep_rows
    from bench.sweep import SweepError, base_images, image_path, sweep_method, sweep_prompts

    prompts = sweep_prompts(cfg.sweep, concept)
    pipe = load_pipeline(cfg.model, cfg.device)
    encoder = load_encoder(cfg.metrics.clip)
    images_dir = results / "images"
    seeds = [int(s) for s in cfg.sweep.seeds]
    # Every base-model image any method needs: unrelated prompts (drift) and weight-0 equivalents.
    needed = sorted({(m.base_prompt(p.text, concept), s) for m in methods.values() for p in prompts for s in seeds} | {(p.text, s) for p in prompts for s in seeds})
    base = dict(zip(needed, base_images(pipe, needed, cfg.sweep)))
    for i, ((text, seed), im) in enumerate(base.items()):
        with atomic_path(images_dir / "base" / f"{i:03d}_seed{seed}_{'_'.join(text.split())[:60]}.png") as tmp:
            im.save(tmp, format="PNG")
    failed = []
    for name, method in methods.items():
        rid = run_id(cfg, name)
        ident = {"run_id": rid, "model": cfg.model.name, "method": name, "concept": concept.name}
        cost = json.loads((results / "train" / f"{name}_{rid}" / "cost.json").read_text())
        try:
            artifact = method.load(Path(cost["artifact_path"]))
            images = sweep_method(pipe, method, artifact, concept, prompts, cfg.sweep, bool(cfg.progress))
        except (SweepError, ValueError, RuntimeError) as e:
            log.error("sweep of %s failed: %s", name, e)
            records.write_stage(results, f"failed_{sweep_stage_name(cfg, name)}", [{**ident, "metric": "sweep_failed", "value": 1.0, "unit": "flag", "status": f"failed: {e}"}])
            failed.append(name)
            continue
        for (pid, seed, weight), im in images.items():
            with atomic_path(image_path(images_dir, name, pid, seed, weight)) as tmp:
                im.save(tmp, format="PNG")
        rows = sweep_rows(encoder, concept, prompts, images, base, lambda text, m=method: m.base_prompt(text, concept), inception=bool(cfg.metrics.inception))
        records.write_stage(results, sweep_stage_name(cfg, name), [{**ident, **r, "status": "ok"} for r in rows])
        records.stage_file(results, f"failed_{sweep_stage_name(cfg, name)}").unlink(missing_ok=True)
    return failed


def print_summary(table, results: Path, failed: list[str]) -> None:
    from bench.report import cost_rows

    cost = cost_rows(table)
    if len(cost):
        wide = cost.pivot_table(index="method", columns="metric", values="value", aggfunc="first")
        print(wide.to_string(float_format=lambda v: f"{v:,.3g}"))
    for name in failed:
        print(f"FAILED: {name} (see {results / 'rows'})")
    print(f"adapterbench: results table {results / 'results.csv'}")


def write_metadata(cfg: DictConfig, path: Path) -> None:
    """Resolved config, git commit, package versions and device: enough to rerun or compare a run."""
    import diffusers
    import peft
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    meta = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "git_commit": commit,
        "python": platform.python_version(),
        "packages": {m.__name__: m.__version__ for m in (torch, diffusers, transformers, peft)},
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else (platform.processor() or platform.machine()),
    }
    atomic_write_text(path, json.dumps(meta, indent=2))
