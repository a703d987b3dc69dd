"""The work of a comparison, done in worker processes that each load the models once.

`init` runs once per worker (or once in the main process when there is one worker); after it, every job
reuses the loaded pipeline, scorer and concept data. Two kinds of job:

- `prepare_concept`: the base model's images every run of a concept is compared with (drift, weight 0)
  and the inputs a method generates before training (DreamBooth's class images, timed on their own);
- `run`: one training run's stages (train -> images -> scores), each skipped when its output exists.

Every stage goes through `reuse_or_make`, the rule `bench.records` states: under a lock file of its own
in the results directory (two runs sharing that directory wait for each other's stage, then reuse it),
an intact stage is reused and a damaged one discarded and made again; a stage writes its outputs
atomically, then their manifest, then its rows file, so a killed job leaves no half stage. A run's stage
that fails writes a `failed_` rows file with its error and the job goes on to the next run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf, open_dict

from bench import records, stages
from bench.io import atomic_dir, atomic_path, atomic_write_text, manifest_problems, no_space, read_manifest, trust_hashes, write_manifest

log = logging.getLogger(__name__)
_STATE: dict = {}


def init(cfg_yaml: str, threads: int, pool_child: bool = False) -> None:
    """Per-process set-up: the thread count, then the config; models load on first use. A pool's child
    leaves Ctrl-C to the parent (the terminal sends it to the whole process group): the parent stops the
    children and prints one line, instead of every child printing its own traceback."""
    import os
    import signal

    if pool_child:
        from bench.models import skip_bitsandbytes_unless_used

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        skip_bitsandbytes_unless_used(OmegaConf.create(cfg_yaml))

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    torch.set_num_threads(int(threads))
    _STATE.clear()
    _STATE["cfg"] = OmegaConf.create(cfg_yaml)


def _cfg():
    return _STATE["cfg"]


def _pipe():
    if "pipe" not in _STATE:
        from bench.models import load_pipeline, long_lived

        start = time.perf_counter()
        with long_lived():
            _STATE["pipe"] = load_pipeline(_cfg().model, _cfg().device)
        _STATE["load_s"] = _STATE.get("load_s", 0.0) + time.perf_counter() - start
    return _STATE["pipe"]


def load_seconds() -> float:
    """Seconds this process spent loading models since the last call (each job reports its share)."""
    return _STATE.pop("load_s", 0.0)


def _encoder():
    from bench.clip import load_encoder

    return load_encoder(_cfg().metrics.clip)


def _oracle():
    """The micro world's concept-presence judge, when `metrics.oracle` asks for it."""
    if not _cfg().metrics.get("oracle", False):
        return None
    from bench.oracle import load_oracle

    return load_oracle()


def _dino():
    """The DINO encoder `metrics.dino` names (micro DINO by default), or None."""
    spec = _cfg().metrics.get("dino")
    if not spec:
        return None
    from metrics.dino import load_dino

    return load_dino(str(spec))


def _concept(name: str):
    if "concepts" not in _STATE:
        from bench.data import load_concepts

        _STATE["concepts"] = {c.name: c for c in load_concepts(_cfg().data, int(_cfg().model.resolution))}
    return _STATE["concepts"][name]


def _method(name: str):
    from methods import build_method

    return build_method(_cfg(), name)


def _results() -> Path:
    return Path(_cfg().results_dir)


def _ident(spec: stages.RunSpec) -> dict:
    return spec.ident(str(_cfg().model.name))


@contextlib.contextmanager
def stage_lock(stage: str):
    """Hold `stage` for this process: another process working in the same results directory waits here
    (and then finds the stage done). The lock is the kernel's, so a killed holder releases it."""
    from filelock import FileLock

    lock = FileLock(str(_results() / ".locks" / f"{stage}.lock"))
    (_results() / ".locks").mkdir(parents=True, exist_ok=True)
    try:
        lock.acquire(timeout=0)
    except TimeoutError:
        log.warning("%s: waiting for another process working on stage %s", _results(), stage)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def reuse_or_make(stage: str, make, on_error=None) -> str:
    """The one way a stage is reused or made. Under the stage's lock: 'reused' when it is finished and
    intact (verified here, by the worker that holds the lock); otherwise what is left of it is discarded
    (said in one line when it was damage) and `make()` -> (rows, outputs) runs, its outputs' manifest and
    rows are written, and 'ok' returned. An exception of `make` goes to `on_error` (its return value is the
    status) or, without one, up."""
    results = _results()
    with stage_lock(stage):
        if records.stage_file(results, stage).exists():
            problems = records.stage_problems(results, stage)
            if not problems:
                return "reused"
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            log.warning("%s: stage %s: %s%s; redoing the stage", results, stage, problems[0], more)
            records.discard_stage(results, stage)
        try:
            rows, outputs = make()
        except Exception as e:
            if on_error is None:
                raise
            return on_error(e)
        records.write_stage(results, stage, rows, outputs=outputs)
        return "ok"


# ------------------------------------------------------------------------------------------- concepts


def base_texts(cfg, concept, methods: dict) -> list[str]:
    """Every prompt the base model must draw for a concept: the sweep's prompts and, per method, the
    prompt its weight 0 must reproduce (Textual Inversion's has the initializer word in it)."""
    from bench.sweep import sweep_prompts

    prompts = sweep_prompts(cfg.sweep, concept)
    texts = [p.text for p in prompts] + [m.base_prompt(p.text, concept) for m in methods.values() for p in prompts]
    return list(dict.fromkeys(texts))


def base_stage(cfg, concept, methods: dict) -> tuple[str, list[str]]:
    """The stage name of a concept's base images, and their prompts. Each prompt's seeds are one batch of
    their own, so regenerating some prompts gives the same pixels as generating all of them; the stage
    (and its checksums) covers every base image of the concept."""
    texts = base_texts(cfg, concept, methods)
    return f"base_{stages.digest({'model': stages.model_identity(cfg.model), 'sweep': stages.plain(cfg.sweep), 'texts': texts})}", texts


def prepare_concept(concept_name: str) -> dict:
    """Base images for one concept, and each method's generated inputs (timed, as rows)."""
    from bench.sweep import base_images
    from methods.base import Method
    from methods.settings import TrainSettings

    cfg, concept = _cfg(), _concept(concept_name)
    methods = {name: _method(name) for name in cfg.method}
    results = _results()
    stage, texts = base_stage(cfg, concept, methods)
    files = {(t, int(s)): stages.base_image_file(results, cfg.model, cfg.sweep, t, s) for t in texts for s in cfg.sweep.seeds}
    written = []

    def make_base_images():
        start = time.perf_counter()
        for (text, seed), im in base_images(_pipe(), texts, cfg.sweep).items():
            with atomic_path(files[(text, int(seed))]) as tmp:
                im.save(tmp, format="PNG")
        ident = {"model": str(cfg.model.name), "concept": concept.name, "kind": concept.kind}
        return [{**ident, "metric": "base_gen_time", "value": time.perf_counter() - start, "unit": "s", "scorer": "wall_clock", "status": "ok"}], list(files.values())

    generated = 0
    if reuse_or_make(stage, make_base_images) == "ok":
        generated = len(texts)
        written.append(stage)
    # The instance images as the report shows them: rewritten whenever the folder is not exactly them.
    folder, pngs = stages.instance_dir(results, concept), instance_pngs(concept)
    if not instance_images_current(results, concept, pngs):
        if folder.is_dir():
            log.warning("%s: the instance images differ from the concept's; writing them again", folder)
        with atomic_dir(folder) as tmp:
            for name, data in pngs.items():
                (tmp / name).write_bytes(data)
    settings = TrainSettings.from_config(cfg)
    for name, method in methods.items():
        if type(method).generate_inputs is Method.generate_inputs:
            continue
        key = stages.digest({"model": stages.model_identity(cfg.model), "data": concept.fingerprint(), "method": stages.plain(cfg.method[name])})
        stage = f"inputs_{key}"

        def make_inputs(name=name, method=method):
            start = time.perf_counter()
            made = method.generate_inputs(_pipe(), concept, settings)
            ident = {"model": str(cfg.model.name), "method": name, "config": stages.config_hash(cfg, name), "concept": concept.name, "kind": concept.kind}
            return [{**ident, "metric": "input_gen_time", "value": time.perf_counter() - start, "unit": "s", "scorer": "wall_clock", "status": "ok"}], made

        if reuse_or_make(stage, make_inputs) == "ok":
            written.append(stage)
    # `written`: the stages this call made (not reused), whose time rows are this invocation's.
    return {"concept": concept_name, "base_texts": generated, "load_s": load_seconds(), "written": written}


# ------------------------------------------------------------------------------------------- runs


def run(spec: stages.RunSpec, hashes: dict | None = None) -> dict:
    """Every missing stage of one training run; returns {"train": status, "images": ..., "scores": ...}.
    `hashes`: the main process's checksums of this run's outputs (`io.known_hashes`), so a stage it has
    just checked is not hashed again here unless a file changed since."""
    trust_hashes(hashes or {})
    status = {"spec": spec}
    status["train"] = _stage(spec, f"train_{spec.run_id}", lambda: train_stage(spec))
    if not status["train"].startswith(("ok", "reused")):
        return {**status, "load_s": load_seconds(), "written": []}  # a failed stage's rows are not a stage time
    if status["train"] == "ok":
        # A new artifact: images and scores made from an earlier one (a redone, damaged stage) are not its.
        folders = [stages.images_dir(_results(), spec.run_id, spec.sweep), stages.curve_dir(_results(), spec.run_id, spec.sweep)]
        for stage in spec.stages[1:]:
            records.discard_stage(_results(), stage, folders)
    status["scores"] = _stage(spec, f"scores_{spec.scores_key}", lambda: sweep_and_score(spec))
    if status["scores"].startswith(("ok", "reused")) and spec.curves:
        status["curve"] = _stage(spec, spec.stages[2], lambda: curve_stage(spec))
    written = [stage for stage, key in zip(spec.stages, ("train", "scores", "curve")) if status.get(key) == "ok"]
    return {**status, "load_s": load_seconds(), "written": written}


def _stage(spec: stages.RunSpec, stage: str, work) -> str:
    """One stage of a run through `reuse_or_make`: its rows carry the run's identity; a failure is
    recorded as a `failed_` stage with its error (the other runs carry on) and cleared once it succeeds."""
    results = _results()
    failed = f"failed_{stage}"

    def make():
        rows, outputs = work()
        return [{**_ident(spec), **r, "status": "ok"} for r in rows], outputs

    def record_failure(e: Exception) -> str:
        from methods import qualified
        from methods.errors import MethodConfigError, TrainingDiverged

        full = no_space(e)
        if full is not None:  # not the method's failure: the whole run stops, in one line
            raise full from None

        from bench.data import ConceptDataError

        e = qualified(e, spec.method) if isinstance(e, MethodConfigError) else e
        said = isinstance(e, (MethodConfigError, TrainingDiverged, ConceptDataError))  # errors that explain themselves: no traceback
        message = str(e) if said else f"{type(e).__name__}: {e}"
        log.error("%s %s/%s seed %s: %s failed: %s", stage.split("_")[0], spec.method, spec.concept, spec.train_seed, stage, message, exc_info=not said)
        records.write_stage(results, failed, [{**_ident(spec), "metric": f"{stage.split('_')[0]}_failed", "value": 1.0, "unit": "flag", "scorer": "runner", "status": f"failed: {message}"}])
        return f"failed: {message}"

    status = reuse_or_make(stage, make, on_error=record_failure)
    if status == "ok":
        records.stage_file(results, failed).unlink(missing_ok=True)
    return status


def train_stage(spec: stages.RunSpec) -> tuple[list[dict], list[Path]]:
    """Train, save the artifact, write cost, metadata and the loss curve; returns the cost rows and the
    run's folder (its outputs)."""
    from bench.cost import measure_training
    from bench.provenance import environment
    from methods.settings import TrainSettings

    cfg = _cfg()
    out = stages.train_dir(_results(), spec)
    settings = TrainSettings.from_config(cfg, spec.train_seed)
    _, cost = measure_training(_method(spec.method), _pipe(), _concept(spec.concept), settings, out)
    meta = {
        "run_id": spec.run_id,
        "method": spec.method,
        "concept": spec.concept,
        "kind": spec.kind,
        "train_seed": spec.train_seed,
        "config": {"model": stages.model_identity(cfg.model), "data": stages.plain(cfg.data), "train": stages.plain(cfg.train), "method": {spec.method: stages.plain(cfg.method[spec.method])}},
        **environment(str(_pipe().device)),
    }
    atomic_write_text(out / "run.json", json.dumps(meta, indent=2))
    atomic_write_text(out / "train.log", "step\tloss\n" + "".join(f"{i}\t{v:.6f}\n" for i, v in enumerate(cost.losses)))
    atomic_write_text(out / "cost.json", cost.to_json())
    return cost.rows(), [out]


def sweep_and_score(spec: stages.RunSpec) -> tuple[list[dict], list[Path]]:
    """The run's images (generated, or read back when that stage is done) and their scores; returns the
    rows and the images folder (the outputs the report shows)."""
    from bench.score import sweep_rows
    from bench.sweep import sweep_prompts

    cfg, results = _cfg(), _results()
    concept = _concept(spec.concept)
    prompts = sweep_prompts(cfg.sweep, concept)
    method = _method(spec.method)
    start = time.perf_counter()
    images, diffs = images_stage(spec, method, concept, prompts)
    generated = time.perf_counter()
    base = _base_images(p.text for p in prompts)
    rows = sweep_rows(_encoder(), concept, prompts, images, base, diffs, inception=bool(cfg.metrics.inception), oracle=_oracle(), dino=_dino())
    rows += validation_loss(spec, method, concept, [float(w) for w in cfg.sweep.weights])
    # Where the time goes: generating this run's images (near 0 when they were on disk) and scoring them.
    rows += [{"metric": "sweep_time", "value": generated - start, "unit": "s", "scorer": "wall_clock"},
             {"metric": "score_time", "value": time.perf_counter() - generated, "unit": "s", "scorer": "wall_clock"}]
    return [{**r, "sweep": spec.sweep} for r in rows], [stages.images_dir(results, spec.run_id, spec.sweep)]


def curve_stage(spec: stages.RunSpec) -> tuple[list[dict], list[Path]]:
    """The learning curve: each checkpoint the training saved (`train.checkpoints`) swept at weight 1 with
    the sweep's prompts and seeds and scored like the final artifact, its rows carrying the checkpoint's
    `step`. Weight 0 is the base model whatever the step; the final artifact's point is its own sweep."""
    from bench.cost import TrainCost
    from bench.score import sweep_rows
    from bench.sweep import sweep_method, sweep_prompts

    cfg, results = _cfg(), _results()
    concept, method = _concept(spec.concept), _method(spec.method)
    prompts = sweep_prompts(cfg.sweep, concept)
    train = stages.train_dir(results, spec)
    cost = TrainCost.from_json((train / "cost.json").read_text())
    at_one = cfg.sweep.copy()
    with open_dict(at_one):
        at_one.weights = [1.0]
    base = _base_images(p.text for p in prompts)
    folder = stages.curve_dir(results, spec.run_id, spec.sweep)
    rows, start = [], time.perf_counter()
    for step, file in sorted(cost.checkpoints.items(), key=lambda kv: int(kv[0])):
        artifact = method.load(train / file)
        images = sweep_method(_pipe(), method, artifact, concept, prompts, at_one, bool(cfg.progress))
        for (pid, seed, weight), im in images.items():
            with atomic_path(folder / f"step{int(step):07d}" / stages.image_name(pid, seed, weight)) as tmp:
                im.save(tmp, format="PNG")
        scored = sweep_rows(_encoder(), concept, prompts, images, base, {}, inception=bool(cfg.metrics.inception), oracle=_oracle(), dino=_dino())
        scored += validation_loss(spec, method, concept, [1.0], artifact)
        rows += [{**r, "step": int(step), "sweep": spec.sweep} for r in scored]
    rows.append({"metric": "curve_time", "value": time.perf_counter() - start, "unit": "s", "scorer": "wall_clock"})
    return rows, [folder]


def validation_loss(spec: stages.RunSpec, method, concept, weights: list[float], artifact=None) -> list[dict]:
    """The run's validation loss on fixed noise (metrics.val_loss) at `weights`, of `artifact` (a loaded
    checkpoint) or else of the run's final artifact, read from disk; no rows when
    `metrics.val_loss_timesteps` is empty or the concept has no held-out images."""
    from bench.cost import TrainCost
    from metrics import val_loss

    timesteps = [int(t) for t in _cfg().metrics.get("val_loss_timesteps") or []]
    if not timesteps or not concept.holdout:
        return []
    if artifact is None:
        train = stages.train_dir(_results(), spec)
        artifact = method.load(train / TrainCost.from_json((train / "cost.json").read_text()).artifact_file)
    return val_loss.rows(_pipe(), method, artifact, concept, weights, timesteps, spec.train_seed)


def images_stage(spec: stages.RunSpec, method, concept, prompts) -> tuple[dict, dict]:
    """Generate the run's sweep images (weight 0 checked against the base model) unless they are on disk."""
    from bench.cost import TrainCost
    from bench.sweep import check_weight_zero, sweep_method

    cfg, results = _cfg(), _results()
    folder = stages.images_dir(results, spec.run_id, spec.sweep)
    manifest = folder / "images.json"
    if manifest.is_file():
        problems = manifest_problems(manifest, folder)
        if not problems:
            done = read_manifest(manifest)
            images = {(pid, int(s), float(w)): _read(folder / name) for name, (pid, s, w) in done["images"].items()}
            return images, {(pid, int(s)): int(d) for pid, s, d in done["weight_zero_diffs"]}
        log.warning("%s: %s; generating the run's images again", folder, problems[0])
    train = stages.train_dir(results, spec)
    cost = TrainCost.from_json((train / "cost.json").read_text())
    artifact = method.load(train / cost.artifact_file)
    pipe = _pipe()
    images = sweep_method(pipe, method, artifact, concept, prompts, cfg.sweep, bool(cfg.progress))
    base_text = {p.prompt_id: method.base_prompt(p.text, concept) for p in prompts}
    base = _base_images(base_text.values())
    diffs = check_weight_zero(spec.method, images, base, base_text)
    names = {}
    for (pid, seed, weight), im in images.items():
        path = stages.image_file(results, spec.run_id, spec.sweep, pid, seed, weight)
        with atomic_path(path) as tmp:
            im.save(tmp, format="PNG")
        names[path.name] = [pid, seed, weight]
    write_manifest(manifest, [folder / n for n in names], folder, fresh=True, images=names, weight_zero_diffs=[[p, s, d] for (p, s), d in diffs.items()],
                   prompts={p.prompt_id: p.written or p.text for p in prompts})
    return images, diffs


def instance_pngs(concept) -> dict[str, bytes]:
    return {f"{i:03d}.png": png_bytes(im) for i, im in enumerate(concept.images)}


def instance_images_current(results: Path, concept, pngs: dict[str, bytes] | None = None) -> bool:
    """Whether the concept's instance-image folder holds exactly its images (byte for byte); `pngs`: its
    images already encoded (`instance_pngs`), when the caller has them."""
    folder = stages.instance_dir(results, concept)
    if not folder.is_dir():
        return False
    pngs = pngs if pngs is not None else instance_pngs(concept)
    return sorted(p.name for p in folder.iterdir()) == sorted(pngs) and all((folder / name).read_bytes() == data for name, data in pngs.items())


def png_bytes(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _base_images(texts) -> dict:
    """The base model's stored images of these prompt texts, by (text, generation seed)."""
    cfg = _cfg()
    return {(t, int(s)): _read(stages.base_image_file(_results(), cfg.model, cfg.sweep, t, s)) for t in dict.fromkeys(texts) for s in cfg.sweep.seeds}


def _read(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")
