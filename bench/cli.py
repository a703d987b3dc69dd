"""The modes of `python run.py`, dispatched in one place above the pipeline they drive.

    run       a comparison (bench.runner)               report    the report of existing results (bench.report)
    tune      learning rates on tuning concepts (bench.tune)  estimate  cost on a GPU from fake tensors (bench.estimate)
    baseline  a regression baseline (bench.regression)  check     a regression check against one

This is the top layer (bench/__init__.py lists the layers): it imports the pipeline, nothing imports it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from bench import stats
from bench.data import load_concepts
from bench.models import ModelConfigError
from bench.runner import config_table, other_config_stages, run, run_comparison


def command_line_keys() -> set[str]:
    """The config keys this run's command line set (`train.steps=600` -> 'train.steps'; '+experiment=x' ->
    '+experiment'): empty when the config was not composed by Hydra's command line (a test's compose)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    return {o.split("=", 1)[0] for o in HydraConfig.get().overrides.task}


def main(cfg: DictConfig) -> int:
    """Dispatch on `mode`: run (default), baseline, check, report, tune or estimate; returns the exit code."""
    from bench import regression

    results = Path(cfg.results_dir)
    mode = cfg.get("mode", "run")
    if mode == "run":
        return run(cfg)
    if mode == "report":
        from bench.report import build_report

        dirs = [results, *[Path(d) for d in cfg.get("merge") or []]]
        for key, d in zip(["results_dir", *(f"merge[{i}]" for i in range(len(dirs) - 1))], dirs):
            if not d.is_dir() or not any((d / "rows").glob("*.parquet")):
                raise ModelConfigError(f"{key}: {d} holds no result rows; run a comparison into it first (python run.py results_dir={d})")
        print(f"adapterbench: report {build_report(dirs, fidelity=str(cfg.stats.fidelity), settings=stats.Settings.from_config(cfg.stats)).resolve()}")
        return 0
    if mode == "tune":
        from bench.tune import tune

        return tune(cfg)
    if mode == "estimate":
        from bench.estimate import run_estimate

        return run_estimate(cfg, command_line_keys())
    if mode not in ("baseline", "check"):
        raise regression.BaselineError(f"mode: {mode!r} is not one of run, baseline, check, report, tune, estimate")
    if not cfg.get("baseline"):
        raise regression.BaselineError(f"baseline: mode={mode} needs baseline=PATH.json")
    doc = regression.read_baseline(Path(cfg.baseline)) if mode == "check" else None
    if doc is not None:
        # A check compares the same concepts on the same model; only what it checks (method, training) may
        # differ. Compared by name: the same model or data folder mounted elsewhere is still the same.
        base_model = ((doc.get("config") or {}).get("model") or {}).get("name")
        if base_model is not None and base_model != cfg.model.name:
            raise regression.BaselineError(f"baseline: {cfg.baseline} was made on model {base_model!r}, this check runs {cfg.model.name!r}; "
                                           "make a baseline for this model with mode=baseline")
        base_concepts = regression.baseline_concepts(doc)
        concepts = sorted(c.name for c in load_concepts(cfg.data, int(cfg.model.resolution)))
        if base_concepts and base_concepts != concepts:
            raise regression.BaselineError(f"baseline: {cfg.baseline} was made on concepts {base_concepts}, this check runs {concepts}; "
                                           "a check compares the same concepts: make a baseline for these with mode=baseline")
    junit = Path(cfg.check.junit) if cfg.check.get("junit") else results / "regression_junit.xml"
    if mode == "check":
        regression.check_settings(OmegaConf.to_container(cfg.check, resolve=True))
    problem = regression.output_file_error(Path(cfg.baseline), "baseline") if mode == "baseline" else regression.output_file_error(junit, "check.junit")
    if problem:
        raise regression.BaselineError(problem)
    # Exactly the stages this config needs: finished ones are reused, rows of other configs are not read.
    status, runs = run_comparison(cfg)
    table = config_table(results, runs)
    if mode == "baseline":
        regression.write_baseline(table, Path(cfg.baseline), cfg)
        print(f"adapterbench: baseline written to {cfg.baseline}")
        return status
    if doc is not None:
        for line in regression.config_differences(doc, cfg):
            print(f"adapterbench: note: {line}")
    others = other_config_stages(results, runs)
    if others:
        print(f"adapterbench: note: {results} also holds {others} training/scoring stage(s) of other configs; they are not read by this {mode}")
    unbaselined = sorted(set(table.method.dropna()) - set(doc["methods"]))
    if unbaselined:
        print(f"adapterbench: note: method(s) {', '.join(unbaselined)} of this run are not in the baseline and are not checked")
    comparisons = regression.compare(doc, table, OmegaConf.to_container(cfg.check, resolve=True))
    print(regression.format_comparisons(comparisons))
    regression.write_junit(comparisons, junit)
    decisions = regression.method_decisions(comparisons)
    for method, decision in decisions.items():
        print(f"adapterbench: {method}: {decision}")
    failed = [m for m, d in decisions.items() if d != "ok"]
    print(f"adapterbench: {len(failed)} of {len(decisions)} methods regressed or could not be compared "
          f"(one-sided tests of {sum(np.isfinite(c.p) for c in comparisons)} method x metric pairs as one family at family-wise alpha "
          f"{float(cfg.check.get('alpha', 0.05)):g}, {regression.family_procedure(comparisons)}; a regression is also worse than its margin); JUnit XML {junit}")
    return 1 if failed or status else 0
