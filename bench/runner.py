"""The pipeline, run by run: config -> checks -> training runs (method x concept x training seed), each
trained, swept and scored in worker processes -> the tidy table -> the report.

Every stage writes its output atomically and is skipped when that output exists (`bench.stages` says what
each stage's key covers), so a rerun with the same config reuses finished work and an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import re
import signal
import tempfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from bench import records, stages, stats, worker
from bench.data import load_concepts
from bench.io import atomic_write_text, remove_debris
from bench.models import ModelConfigError, model_path, resolve_device, resolve_dtype
from bench.provenance import core_budget
from methods import build_method
from methods.errors import MethodConfigError
from methods.settings import TrainSettings

log = logging.getLogger(__name__)
MAX_CPU_WORKERS = 4


def parallelism(cfg: DictConfig, n_jobs: int) -> tuple[int, int]:
    """(workers, torch threads per worker). torch's threads spin while they wait, so workers x threads
    never exceeds this job's core budget (`provenance.core_budget`: the usable cores, or fewer when a
    launcher runs several jobs at once): on these small models two 1-thread workers do about twice the
    work of one 2-thread process, and two 2-thread processes on 2 cores each run 4-5x slower than alone.
    CUDA: one worker (one GPU), every core of the budget for it."""
    cores, _ = core_budget()
    device = resolve_device(str(cfg.device))
    workers = cfg.get("workers")
    if workers is None:
        workers = 1 if device.type == "cuda" else max(1, min(MAX_CPU_WORKERS, cores, n_jobs))
    if not isinstance(workers, int) or workers < 1:
        raise MethodConfigError(f"workers: must be a positive whole number or null, got {workers!r}")
    threads = cfg.get("threads")
    if threads is None:
        threads = max(1, cores // workers)
    if not isinstance(threads, int) or threads < 1:
        raise MethodConfigError(f"threads: must be a positive whole number or null, got {threads!r}")
    return workers, threads


STAGE_FILE = re.compile(r"(failed_)?(train|scores|curve|base|inputs)_[0-9a-f-]+")


def check_results_dir(results: Path) -> None:
    if results.exists() and not results.is_dir():
        raise ModelConfigError(f"results_dir: {results} is a file, not a folder")
    try:
        results.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=results, prefix=".write_test"):
            pass
    except OSError as e:
        raise ModelConfigError(f"results_dir: cannot write to {results} ({e.strerror or e})") from None
    # What the harness keeps under it must be what it wrote: a stray table in rows/ would be read as
    # results, and a lock that is not a file would stop a worker with a traceback mid-run.
    for sub in ("rows", ".locks"):
        if (results / sub).exists() and not (results / sub).is_dir():
            raise ModelConfigError(f"results_dir: {results / sub} is a file; the harness keeps a folder there (move the file away)")
    for f in sorted((results / "rows").glob("*.parquet")):
        if not STAGE_FILE.match(f.stem):
            raise records.RowsFileError(f"results_dir: {f} is not a rows file of this harness (its stages are named train_, scores_, curve_, base_, inputs_); move it out of rows/")
    for f in sorted((results / ".locks").glob("*")):
        if not f.is_file():
            raise ModelConfigError(f"results_dir: {f} is not a lock file the harness made; remove it")


def plan(cfg: DictConfig) -> tuple[list, list[stages.RunSpec], dict]:
    """Check everything a user can get wrong, before any heavy work; returns (concepts, runs, methods by name)."""
    from bench.sweep import SweepError, check_sweep_config, sweep_prompts

    methods = {name: build_method(cfg, name) for name in cfg.method}
    if not methods:
        raise MethodConfigError("method: no method selected (e.g. method=[lora,hypernetwork])")
    seeds = list(cfg.seeds or [])
    if not seeds:
        raise MethodConfigError("seeds: no training seed (e.g. seeds=[0,1,2])")
    if len(set(seeds)) != len(seeds):
        raise MethodConfigError(f"seeds: {seeds} lists a training seed twice")
    if not all(0 <= int(s) < 2**32 for s in seeds):  # the range every generator the harness seeds accepts
        raise MethodConfigError(f"seeds: {seeds} holds a training seed outside 0..2**32-1")
    TrainSettings.from_config(cfg)
    model_path(cfg.model)
    resolve_dtype(str(cfg.model.get("dtype") or "auto"), resolve_device(str(cfg.device)))
    check_sweep_config(cfg.sweep)
    stats.Settings.from_config(cfg.stats)
    check_fidelity(str(cfg.stats.fidelity))
    check_clip_spec(str(cfg.metrics.clip))
    if cfg.metrics.get("dino"):
        from metrics.dino import dino_folder

        dino_folder(str(cfg.metrics.dino))
    resolution = int(cfg.model.resolution)
    if resolution <= 0 or resolution % 8:  # what the diffusers pipelines accept (their VAEs downsample by 4 or 8)
        raise ModelConfigError(f"model.resolution: {resolution} is not a positive multiple of 8 (the micro model draws at 64, SD 1.5 at 512)")
    concepts = load_concepts(cfg.data, resolution)
    check_val_loss_timesteps(cfg.metrics.get("val_loss_timesteps") or [], cfg.model)
    for concept in concepts:
        prompts = sweep_prompts(cfg.sweep, concept)
        for name in methods:
            if all(p.scale_for(methods[name]) == 0 for p in prompts if p.kind != "unrelated"):
                raise SweepError(f"sweep: every instance and recontext prompt's tags set {name}'s strength to 0 (e.g. {next(p.written for p in prompts if p.kind != 'unrelated')!r}), "
                                 "so every image would be the base model's; give a tag a non-zero strength")
    if cfg.metrics.inception:
        from metrics.fd import inception_metric

        inception_metric()
    runs = [stages.run_spec(cfg, m, c, s) for c in concepts for s in seeds for m in methods]
    return concepts, runs, methods


def check_val_loss_timesteps(timesteps, model_cfg) -> None:
    """metrics.val_loss_timesteps: distinct whole timesteps the model's scheduler trains on."""
    import json

    config = model_path(model_cfg) / "scheduler" / "scheduler_config.json"  # a diffusers folder; a single file: SD's 1000
    try:
        total = int(json.loads(config.read_text()).get("num_train_timesteps", 1000)) if config.is_file() else 1000
    except (OSError, ValueError, AttributeError):
        total = 1000  # an unreadable scheduler config is the model loader's to name
    values = list(timesteps)
    if any(isinstance(t, bool) or not isinstance(t, int) for t in values) or len(set(values)) != len(values) or not all(0 <= t < total for t in values):
        raise ModelConfigError(f"metrics.val_loss_timesteps: {values} must be distinct whole timesteps in 0..{total - 1} (the scheduler's training timesteps); [] turns the validation loss off")


def check_fidelity(name: str) -> None:
    from metrics import QUALITY, higher_is_better

    if name != "auto" and higher_is_better(name) is None:
        raise stats.StatsConfigError(f"stats.fidelity: {name!r} is not a quality metric; use auto or one of {', '.join(QUALITY)} or a Fréchet distance (fd_<space>)")


def check_clip_spec(spec: str) -> None:
    """metrics.clip names a feature space that exists here: without a hub, an open_clip architecture name
    alone would build an untrained network and score with it, so only local weights are accepted."""
    if spec == "micro":
        return
    if not spec.startswith("local-dir:"):
        raise ModelConfigError(f"metrics.clip: {spec!r} is neither 'micro' nor 'local-dir:/path/to/open_clip/folder' (no model hub is reachable, so the weights must be local)")
    folder = Path(spec.removeprefix("local-dir:"))
    config = folder / "open_clip_config.json"
    if not config.is_file():
        raise ModelConfigError(f"metrics.clip: {folder} holds no open_clip_config.json (an open_clip model folder: config and weights)")
    try:
        doc = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelConfigError(f"metrics.clip: {config} is not readable JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("model_cfg"), dict):
        raise ModelConfigError(f"metrics.clip: {config} has no 'model_cfg' object (open_clip's local-dir layout: model_cfg, preprocess_cfg)")
    weights = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    if not any((folder / w).is_file() for w in weights):
        raise ModelConfigError(f"metrics.clip: {folder} holds no weights ({' or '.join(weights)})")


def run(cfg: DictConfig) -> int:
    """Run every stage of every training run; returns the process exit code (1 when any run failed)."""
    return run_comparison(cfg)[0]


def run_comparison(cfg: DictConfig) -> tuple[int, list[stages.RunSpec]]:
    """`run`, also returning the runs of this config (for the modes that read exactly their rows)."""
    import time

    wall_start = time.perf_counter()
    results = Path(cfg.results_dir)
    check_results_dir(results)
    concepts, runs, methods = plan(cfg)
    removed = remove_debris(results)
    if removed:
        log.info("removed %d temporary file(s) that killed writers left in %s", removed, results)
    # Every stage looked at (rows readable, outputs matching their manifest; nothing changed here): a run or
    # concept with a missing or damaged stage goes to a worker, which verifies it again under the stage's
    # lock and redoes it (worker.reuse_or_make). Base images are checked for every concept, finished or not.
    pending = [r for r in runs if not all(records.stage_intact(results, stage) for stage in r.stages)]
    stale = [c.name for c in concepts if not (records.stage_intact(results, worker.base_stage(cfg, c, methods)[0]) and worker.instance_images_current(results, c))]
    workers, threads = parallelism(cfg, len(pending))
    torch.set_num_threads(threads)
    if pending:
        from bench.estimate import check_fits

        # Fresh instances: prepare leaves fake tensors on the method objects it runs.
        check_fits(cfg, {name: build_method(cfg, name) for name in dict.fromkeys(r.method for r in pending)}, concepts[0], workers)
    load_s, written = 0.0, []
    if pending or stale:
        print(f"adapterbench: {len(runs)} training runs ({len(cfg.method)} methods x {len(concepts)} concepts x {len(cfg.seeds)} training seeds), "
              f"{len(pending)} to do; {workers} worker(s) x {threads} thread(s)")
        load_s, written = execute(cfg, results, pending, workers, threads, stale)
    records.publish(results)
    failures = failed_runs(results, runs)
    report_start = time.perf_counter()
    report = report_stage(results, cfg)
    report_s = time.perf_counter() - report_start
    print_summary(config_table(results, runs), results, failures, cfg)
    timing = stage_times(results, written, load_s, report_s, time.perf_counter() - wall_start, workers)
    in_workers = ", ".join(f"{k} {human_seconds(timing[k])}" for k in ("load models", *STAGE_TIMES))
    print(f"adapterbench: time in {workers} worker(s): {in_workers}; report {human_seconds(report_s)}; wall {human_seconds(timing['wall'])}")
    atomic_write_text(results / "timing.json", json.dumps(timing, indent=1))
    print(f"adapterbench: report {report.resolve()}")
    return (1 if failures else 0), runs


# Where a comparison's time goes: the wall-clock rows each stage writes, by stage.
STAGE_TIMES = {"base images": "base_gen_time", "class images": "input_gen_time", "train": "train_time", "generate": "sweep_time", "score": "score_time",
               "learning curves": "curve_time"}


def stage_times(results: Path, written: list[str], load_s: float, report_s: float, wall_s: float, workers: int) -> dict:
    """Seconds per stage of this invocation: the wall-clock rows of the stages its workers wrote (reused
    stages cost nothing now; another process working in the same folder wrote its own), model loading in
    the workers, the report, and the whole wall time. Stages run in `workers` processes at once, so they
    add up to about workers x wall time."""
    table = records.read_files([f for f in (records.stage_file(results, stage) for stage in written) if f.is_file()])
    out = {"load models": load_s}
    out.update({name: float(table[table.metric == metric].value.sum()) for name, metric in STAGE_TIMES.items()})
    out.update({"report": report_s, "wall": wall_s, "workers": workers})
    return out


def execute(cfg: DictConfig, results: Path, pending: list[stages.RunSpec], workers: int, threads: int, stale: list[str] = ()) -> tuple[float, list[str]]:
    """Prepare each concept of a pending run (and the `stale` ones, whose base images are missing or
    damaged), then run every pending run, in `workers` processes (or this one); returns the seconds the
    workers spent loading models and the stages they wrote."""
    concept_names = list(dict.fromkeys([*(r.concept for r in pending), *stale]))
    job_cfg = cfg.copy()
    if workers > 1:
        job_cfg.progress = False  # one bar for the whole comparison, not one per worker
    cfg_yaml = OmegaConf.to_yaml(job_cfg, resolve=True)
    bar = tqdm(total=len(concept_names) + len(pending), desc="comparison", unit="job", disable=not cfg.progress)
    load_s, written = 0.0, []
    if workers == 1:
        worker.init(cfg_yaml, threads)
        for name in concept_names:
            out = worker.prepare_concept(name)
            load_s, written = load_s + out["load_s"], written + out["written"]
            bar.update()
        for spec in pending:
            bar.set_postfix_str(f"{spec.method} {spec.concept} seed {spec.train_seed}")
            out = worker.run(spec)  # same process: the hashes checked above are known here
            load_s, written = load_s + out["load_s"], written + out["written"]
            bar.update()
        bar.close()
        return load_s, written
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=worker.init, initargs=(cfg_yaml, threads, True)) as pool:
        try:
            # A run's stages were just checked here: its worker gets those hashes instead of redoing them.
            jobs = (("prepare", worker.prepare_concept, [(name,) for name in concept_names]),
                    ("runs", worker.run, [(spec, records.known_hashes(results, *spec.stages)) for spec in pending]))
            for phase, fn, calls in jobs:
                with sigint_ignored():  # a worker spawned by a submit starts ignoring Ctrl-C (see worker.init)
                    futures = {pool.submit(fn, *args): args[0] for args in calls}
                while futures:
                    done, _ = wait(futures, return_when=FIRST_COMPLETED)
                    for f in done:
                        item = futures.pop(f)
                        out = f.result()
                        load_s, written = load_s + out["load_s"], written + out["written"]
                        bar.update()
                        if phase == "runs":
                            bar.set_postfix_str(f"{item.method} {item.concept} seed {item.train_seed}")
        except BrokenProcessPool as e:
            log.error("a worker process died (%s); finished stages are kept, the rest is recorded as not run", e)
        except BaseException:
            # Ctrl-C or SIGTERM: the children ignore SIGINT and would finish their runs before the pool's
            # exit returned; stop them now (their stages are written atomically, so nothing half-done stays).
            processes = list(getattr(pool, "_processes", {}).values())
            for process in processes:
                process.terminate()
            for process in processes:
                process.join(timeout=10)
            pool.shutdown(wait=True, cancel_futures=True)  # the pool's queues closed, nothing leaked at exit
            bar.close()
            raise
    bar.close()
    return load_s, written


@contextlib.contextmanager
def sigint_ignored():
    """SIGINT ignored in this process for the block. The pool spawns its workers inside `submit`, and a
    process started while SIGINT is ignored keeps ignoring it from its first instruction: a Ctrl-C that
    reaches a worker still importing (before its initializer could ignore it) would print a traceback.
    The block is a loop of submits: a Ctrl-C during it is lost, one after it stops the run as usual."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals are not ours to set
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def report_stage(results: Path, cfg: DictConfig) -> Path:
    """Rebuild the report unless it was built from exactly the rows files there are now and every file
    it wrote is still as it was (checksums kept in the stamp)."""
    from bench.io import files_under, manifest_problems, read_manifest, write_manifest
    from bench.report import build_report

    folder = results / "report"
    stamp_file = folder / ".rows_stamp"
    files = sorted((results / "rows").glob("*.parquet"))
    rows = hashlib.sha256(json.dumps([(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]).encode()).hexdigest()
    html = folder / "report.html"
    try:
        stamp = read_manifest(stamp_file) if stamp_file.is_file() else {}
    except (OSError, ValueError):
        stamp = {}
    if stamp.get("rows") == rows and html.is_file():
        problems = manifest_problems(stamp_file, folder)
        if not problems:
            log.info("reusing %s", html)
            return html
        log.warning("%s: %s; building the report again", folder, problems[0])
    html = build_report([results], fidelity=str(cfg.stats.fidelity), settings=stats.Settings.from_config(cfg.stats))
    write_manifest(stamp_file, files_under(folder), folder, fresh=True, rows=rows)
    return html


def failed_runs(results: Path, runs: list[stages.RunSpec]) -> list[tuple[stages.RunSpec, str]]:
    """Runs of this config without a finished scores stage, with the error their failed stage recorded."""
    import pandas as pd

    out = []
    for r in runs:
        if all(records.stage_file(results, stage).exists() for stage in r.stages[1:]):
            continue
        reason = "not run (its worker stopped)"
        for stage in r.stages:
            f = records.stage_file(results, f"failed_{stage}")
            if f.exists():
                reason = str(pd.read_parquet(f).status.iloc[0])
                break
        out.append((r, reason))
    return out


def config_table(results: Path, runs: list[stages.RunSpec], checkpoints: bool = False):
    """Exactly the rows of these runs under this config (their training, scores and curve stages);
    the learning curves' checkpoint rows only with `checkpoints` (records.read_files)."""
    files = [records.stage_file(results, stage) for r in runs for stage in r.stages]
    return records.read_files([f for f in dict.fromkeys(files) if f.exists()], checkpoints=checkpoints)


def other_config_stages(results: Path, runs: list[stages.RunSpec]) -> int:
    """How many training and scoring stage files in `results` belong to no run of this config."""
    mine = {stage for r in runs for stage in r.stages}
    found = {f.stem for f in (results / "rows").glob("*.parquet") if f.stem.startswith(("train_", "scores_", "curve_"))}
    return len(found - mine)


def contended_runs(table) -> int:
    """Training runs whose threads plus the other load measured beside them exceeded the usable cores."""
    from bench.provenance import usable_cores

    cost = table[table.step.isna() & table.metric.isin(["threads", "other_load"]) & (table.status == "ok")]
    wide = cost.pivot_table(index="run_id", columns="metric", values="value", aggfunc="first")
    if not {"threads", "other_load"} <= set(wide.columns):
        return 0
    # Half a core of slack: a worker's own start-up and the main process's bookkeeping are not contention.
    return int((wide.threads + wide.other_load > usable_cores() + 0.5).sum())


def human_seconds(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 90 else f"{s:.1f} s"


def print_summary(table, results: Path, failures: list, cfg: DictConfig) -> None:
    """Per method: quality at weight 1 with its interval beside cost (mean over runs), in human units."""
    import pandas as pd

    from bench.plots import human_bytes

    settings = stats.Settings.from_config(cfg.stats)
    lines = []
    if len(table):
        from bench.validity import headline as headline_fidelity

        fidelity = headline_fidelity(table, str(cfg.stats.fidelity))
        headline = [m for m in dict.fromkeys((fidelity, "clip_i", "clip_t", "drift")) if (table.metric == m).any()]
        quality = {m: stats.summarize(table, m, 1.0, settings=settings) for m in headline}
        blanks = table[(table.metric == "blank") & (table.status == "ok")]
        cost = table[table.step.isna() & table.weight.isna() & (table.status == "ok")]
        for method in dict.fromkeys(table.method.dropna()):
            c = cost[cost.method == method].groupby("metric").value.mean()
            row = {"method": method}
            for metric, q in quality.items():
                q = q[(q.method == method) & (q.scope == "overall")] if len(q) else q
                if len(q):
                    r = q.iloc[0]
                    row[f"{metric}@1 [95% CI]"] = f"{r['mean']:.3f} [{r.low:.3f}, {r.high:.3f}]" if np.isfinite(r.low) else f"{r['mean']:.3f}"
            row["train time"] = human_seconds(c.get("train_time", float("nan")))
            row["peak memory"] = f"{c.get('peak_mem', float('nan')):,.0f} MiB"
            row["file"] = human_bytes(c.get("artifact_bytes", float("nan")))
            b = blanks[blanks.method == method].value
            # Degenerate images over the whole sweep (every weight): a collapse at any strength shows here.
            row["blank images"] = f"{int(b.sum())}/{len(b)}" if len(b) else "-"
            row["runs"] = int(table[(table.method == method) & (table.metric == "train_time")].run_id.nunique())
            lines.append(row)
    if lines:
        print(pd.DataFrame(lines).set_index("method").to_string())
        presence = ("; presence: share of images in which the micro world's oracle sees the concept (ground truth)"
                    if (table.metric == "presence").any() else "")
        print(f"adapterbench: columns at weight 1, mean [95% interval] over training runs{presence}; blank images over every weight")
        verdicts = stats.learned(table) if (table.metric == "presence").any() else pd.DataFrame()
        if len(verdicts):
            per = [f"{m} {int(g.learned.sum())}/{len(g)}" for m, g in verdicts.groupby("method", sort=False)]
            print(f"adapterbench: concepts learned ({stats.LEARNED_RULE}): {', '.join(per)}")
        contended = contended_runs(table)
        if contended:
            print(f"adapterbench: note: {contended} training run(s) were timed while other processes kept more cores busy than this "
                  "machine had left for them (the `other_load` cost rows); their times and steps/s are high")
    for spec, reason in failures:
        print(f"FAILED: {spec.method} on {spec.concept}, training seed {spec.train_seed}: {reason}")
    print(f"adapterbench: results table {results / 'results.csv'}")
