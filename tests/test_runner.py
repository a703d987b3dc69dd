"""The runner trains every configured method in its own process, records cost rows, reuses finished
stages, and records a failing method as failed while the others complete."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from bench import records
from bench.config import register
from bench.runner import run

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SMOKE = ["train=smoke", "sweep=smoke", "progress=false", "workers=1", "threads=1"]
register()


def config(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[*SMOKE, f"results_dir={tmp_path}", *overrides])


def command(results: Path, *overrides) -> list[str]:
    """`python run.py` as a user types it, with the smoke config of `config`."""
    return [sys.executable, str(ROOT / "run.py"), *SMOKE, f"results_dir={results}", *overrides]


KEY = ["run_id", "metric", "prompt_id", "seed", "weight", "step"]


def numbers(results: Path):
    t = records.read_table(results)
    return t[~t.scorer.isin(records.INSTRUMENT_SCORERS)].sort_values(KEY).reset_index(drop=True)


def published_images(results: Path) -> list[Path]:
    """Every image of a results dir, without the hidden temporaries a killed write can leave."""
    root = results / "images"
    return sorted(p.relative_to(root) for p in root.rglob("*.png") if not any(part.startswith(".") for part in p.relative_to(root).parts))


def assert_same_results(first: Path, second: Path) -> None:
    """Identical tables (but the instruments) and identical images, byte for byte."""
    a, b = numbers(first), numbers(second)
    assert len(a) == len(b) and a[KEY].equals(b[KEY])
    assert (a.value.fillna(-1) == b.value.fillna(-1)).all(), a[a.value.fillna(-1) != b.value.fillna(-1)].head()
    images = published_images(first)
    assert images == published_images(second)
    differ = [str(p) for p in images if (first / "images" / p).read_bytes() != (second / "images" / p).read_bytes()]
    assert not differ, differ


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One real comparison (smoke budget), shared by the tests that read what it wrote."""
    tmp_path = tmp_path_factory.mktemp("smoke_run")
    cfg = config(tmp_path, "seeds=[0,1]")
    assert run(cfg) == 0
    return cfg, tmp_path


@pytest.mark.slow
def test_all_methods_train_and_land_as_cost_rows_then_rerun_reuses(smoke_run):
    cfg, tmp_path = smoke_run
    table = records.read_table(tmp_path)
    assert set(table.method.dropna()) == {"dreambooth", "textual_inversion", "lora", "hypernetwork"}
    runs = table.dropna(subset=["run_id"]).groupby(["method", "concept", "train_seed"]).run_id.nunique()
    assert len(runs) == 4 * 2 * 2 and (runs == 1).all()  # method x concept x training seed, one run each
    cost = table[table.step.isna() & table.weight.isna() & table.run_id.notna()].pivot_table(index="method", columns="metric", values="value", aggfunc="mean")
    assert (cost[["peak_mem", "process_rss_peak", "train_time", "steps_per_s", "trainable_params", "artifact_bytes"]] > 0).all().all()
    # Training memory is the run's own: DreamBooth's full fine-tune needs visibly more than an adapter.
    assert cost.loc["dreambooth", "peak_mem"] > 1.5 * cost.loc["lora", "peak_mem"]
    assert (table[table.metric == "peak_mem"].scorer == "cpu_tensor_peak").all()
    # Class images are timed apart from training, once per concept.
    assert len(table[(table.metric == "input_gen_time") & (table.method == "dreambooth")]) == 2
    # Textual Inversion counts its learned vectors only: one row of the embedding table (width 128) each.
    assert cost.loc["textual_inversion", "trainable_params"] == 128 * cfg.method.textual_inversion.num_vectors
    assert cost.loc["dreambooth", "artifact_bytes"] > cost.loc["lora", "artifact_bytes"] > cost.loc["textual_inversion", "artifact_bytes"]
    assert (table[table.metric == "train_loss"].groupby("run_id").size() == 4).all()
    assert (tmp_path / "results.csv").stat().st_size > 0 and (tmp_path / "results.parquet").exists()

    # Sweeps: every run at every weight, weight 0 within one level of the base model, scorer named.
    sweep = table[table.metric == "clip_i"]
    assert sweep.run_id.nunique() == 16 and set(sweep.weight) == {0.0, 1.0}
    assert (table[table.metric == "base_pixel_diff"].value <= 1.0).all()
    assert {"clip_t", "clip_i", "drift", "diversity", "fd_microclip", "cmmd", "presence", "blank"} <= set(table.metric)
    assert (table[table.metric.isin(["clip_i", "clip_t", "drift", "cmmd", "fd_microclip"])].scorer == "microclip").all()
    # Ground truth beside the proxies: the oracle judges every subject image, pixels count blank ones.
    assert (table[table.metric == "presence"].scorer == "oracle").all() and set(table[table.metric == "presence"].value) <= {0.0, 1.0}
    assert len(table[table.metric == "presence"]) == len(sweep) and len(table[table.metric == "blank"]) >= len(sweep)
    rid = sweep[sweep.method == "lora"].run_id.iloc[0]
    assert len(list((tmp_path / "images").glob(f"{rid}-*/instance_0_seed*_w+1.00.png"))) == 2

    # Per-run metadata, never shared between runs: resolved config, commit, packages, hardware, threads.
    meta = json.loads((tmp_path / "train" / rid / "run.json").read_text())
    assert meta["run_id"] == rid and meta["config"]["method"].keys() == {"lora"} and meta["hardware"]["torch_threads"] == 1
    assert {"torch", "diffusers", "peft", "open_clip_torch"} <= set(meta["packages"]) and meta["git_commit"]
    assert (tmp_path / "train" / rid / "train.log").read_text().count("\n") == 5  # header + 4 steps
    assert "artifact_file" in (tmp_path / "train" / rid / "cost.json").read_text() and str(tmp_path) not in (tmp_path / "train" / rid / "cost.json").read_text()

    # The published outputs: every file exists and is non-empty.
    report = tmp_path / "report"
    tables = ("provenance", "definitions", "prompts", "cost", "learning_rates", "quality", "per_concept", "paired", "ranking", "best_weight", "validity", "blank")
    outputs = [report / "report.html", *(report / "tables" / f"{t}.{e}" for t in tables for e in ("md", "csv", "tex"))]
    figures = ("instance_images", "infographic", "cost", "curves", "tradeoff", "loss", "grid_sks_crescent_instance_0")
    outputs += [report / "figures" / f"{f}.{e}" for f in figures for e in ("png", "svg")]
    assert all(f.is_file() and f.stat().st_size > 0 for f in outputs), [str(f) for f in outputs if not f.is_file()]
    assert "data:image/png;base64," in (report / "report.html").read_text()

    # Where the time went, per stage of this invocation.
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert all(timing[k] > 0 for k in ("load models", "base images", "class images", "train", "generate", "score", "report", "wall"))

    stamps = {f: f.stat().st_mtime_ns for f in (tmp_path / "rows").glob("*.parquet")}
    html_stamp = (report / "report.html").stat().st_mtime_ns
    assert run(cfg) == 0
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert timing["train"] == timing["generate"] == timing["load models"] == 0  # all reused: nothing loaded, trained or generated
    assert {f: f.stat().st_mtime_ns for f in (tmp_path / "rows").glob("*.parquet")} == stamps
    assert (report / "report.html").stat().st_mtime_ns == html_stamp  # nothing changed, nothing rebuilt

    # A missing scores stage (as after a metrics change, whose key only it carries) is re-scored from the
    # stored images: nothing is trained or generated again, and the numbers are the same.
    scores = sorted((tmp_path / "rows").glob("scores_*.parquet"))
    before = records.read_files([scores[0]])
    scores[0].unlink()
    train_stamps = {f: f.stat().st_mtime_ns for f in (tmp_path / "rows").glob("train_*.parquet")}
    images = {f: f.stat().st_mtime_ns for f in (tmp_path / "images").rglob("*.png")}
    assert run(cfg) == 0
    assert {f: f.stat().st_mtime_ns for f in (tmp_path / "rows").glob("train_*.parquet")} == train_stamps
    assert {f: f.stat().st_mtime_ns for f in (tmp_path / "images").rglob("*.png")} == images
    again = records.read_files([scores[0]])
    measured = before.scorer != "wall_clock"  # the stage's own timings differ; its scores must not
    assert again[measured].drop(columns="value").equals(before[measured].drop(columns="value"))
    assert (again[measured].value - before[measured].value).abs().max() < 1e-6
    assert again[again.metric == "sweep_time"].value.iloc[0] < 0.2 * before[before.metric == "sweep_time"].value.iloc[0]  # read, not generated


def test_stage_keys_cover_exactly_what_each_stage_reads(tmp_path, monkeypatch):
    from bench.data import load_world_concept
    from bench.stages import run_spec

    concept = load_world_concept("sks_crescent", 8, 64)
    base = run_spec(config(tmp_path), "lora", concept, 0)
    assert run_spec(config(tmp_path), "lora", concept, 0) == base
    metrics = run_spec(config(tmp_path, "metrics.inception=true"), "lora", concept, 0)
    assert (metrics.run_id, metrics.images_key) == (base.run_id, base.images_key) and metrics.scores_key != base.scores_key
    sweep = run_spec(config(tmp_path, "sweep.steps=5"), "lora", concept, 0)
    assert sweep.run_id == base.run_id and sweep.images_key != base.images_key and sweep.scores_key != base.scores_key
    for override in ("train.steps=5", "method.lora.rank=8", "model.resolution=32"):
        assert run_spec(config(tmp_path, override), "lora", concept, 0).run_id != base.run_id, override
    assert run_spec(config(tmp_path), "lora", concept, 1).run_id != base.run_id
    assert run_spec(config(tmp_path), "lora", load_world_concept("sks_crescent", 7, 64), 0).run_id != base.run_id
    # A retrained embedded scorer re-scores (its bytes are in the key); nothing before scoring changes.
    import shutil

    from bench import stages
    from bench.zoo import ORACLE_DIR

    fake = tmp_path / "oracle"
    shutil.copytree(ORACLE_DIR, fake)
    (fake / "oracle.json").write_text((fake / "oracle.json").read_text() + " ")
    monkeypatch.setattr("bench.zoo.oracle_dir", lambda: fake)
    retrained = run_spec(config(tmp_path), "lora", concept, 0)
    assert retrained.images_key == base.images_key and retrained.scores_key != base.scores_key
    monkeypatch.undo()
    assert stages.folder_digest(ORACLE_DIR) != stages.folder_digest(fake)
    # Another method's config does not touch this method's runs; its own config hash does change.
    other = run_spec(config(tmp_path, "method.hypernetwork.lr=0.1"), "lora", concept, 0)
    assert other == base
    assert run_spec(config(tmp_path, "method.lora.rank=8"), "lora", concept, 0).config != base.config


def test_stage_keys_follow_the_base_models_weights_not_only_its_config(tmp_path):
    """A rebuilt zoo keeps the embedded model's config, and a replaced checkpoint its path: with the config
    alone as the key, mode=tune reused runs trained on the old model. One flipped bit in the UNet's weights
    changes the run id, the config column, the base images and DreamBooth's class-image cache key; the
    report hashes the model identity recorded in run.json without looking for the model on disk."""
    from bench import zoo
    from bench.data import load_world_concept
    from bench.stages import WEIGHTS_KEY, base_image_file, config_hash, model_identity, plain, recorded_config_hash, run_spec
    from methods.settings import TrainSettings

    model = tmp_path / "model"
    shutil.copytree(zoo.micro_sd_dir(), model)
    concept = load_world_concept("sks_crescent", 8, 64)

    def keys():
        cfg = config(tmp_path / "results", f"model.path={model}")
        spec = run_spec(cfg, "lora", concept, 0)
        return (spec.run_id, spec.config, base_image_file(tmp_path, cfg.model, cfg.sweep, "a photo", 0),
                TrainSettings.from_config(cfg).model_key)

    before = keys()
    assert keys() == before
    weights = next((model / "unet").glob("*.safetensors"))
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 1
    weights.write_bytes(bytes(raw))
    after = keys()
    assert all(a != b for a, b in zip(after, before)), (before, after)

    cfg = config(tmp_path / "results", f"model.path={model}")
    # as train_stage writes run.json's config, read back as JSON
    recorded = json.loads(json.dumps({"model": model_identity(cfg.model), "train": plain(cfg.train), "method": {"lora": plain(cfg.method.lora)}}))
    assert recorded["model"][WEIGHTS_KEY] and recorded_config_hash(recorded, "lora") == config_hash(cfg, "lora")
    shutil.rmtree(model)  # reporting needs no model on disk
    assert recorded_config_hash(recorded, "lora") == after[1]


def test_a_failing_method_is_recorded_and_the_others_complete(tmp_path):
    # A rate that passes every check but diverges in training (a config error is refused at planning instead).
    cfg = config(tmp_path, "method=[hypernetwork,lora]", "method.hypernetwork.lr=1e30", "data=sks_crescent", "seeds=[0]")
    assert run(cfg) == 1
    table = records.read_table(tmp_path)
    failed = table[table.metric == "train_failed"]
    assert list(failed.method) == ["hypernetwork"] and "lower method.hypernetwork.lr" in failed.status.iloc[0]
    assert (table[table.method == "lora"].status == "ok").all() and len(table[table.method == "lora"]) > 0
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Failed runs" in html and "lower method.hypernetwork.lr" in html  # the failure is on the page, with its error


@pytest.mark.parametrize(("override", "key"), [
    ("method.lora.rank=0", r"method\.lora\.rank"), ("train.steps=-3", "train.steps"), ("train.batch_size=0", "train.batch_size"),
    ("train.steps=100000000000", "train.steps"), ("seeds=[]", "seeds"), ("seeds=[1,1]", "seeds"), ("workers=0", "workers"),
    ("threads=-1", "threads"), ("sweep.weights=[]", "sweep.weights"), ("sweep.weights=[0,0.5]", "sweep.weights"),
    ("sweep.seeds=[]", "sweep.seeds"), ("sweep.guidance=nan", "sweep.guidance"), ("sweep.steps=0", "sweep.steps"),
    ("stats.confidence=2", "stats.confidence"), ("stats.n_boot=0", "stats.n_boot"), ("stats.fidelity=bogus", "stats.fidelity"),
    ("metrics.clip=ViT-B-32", "metrics.clip"), ("metrics.clip=local-dir:/nowhere", "metrics.clip"),
    ("data.concepts=[nope]", "data.concepts"), ("results_dir=/proc/version", "results_dir"),
    ("train.precision=fp8", "train.precision"), ("train.optimizer=sgd", "train.optimizer"), ("train.attention=flash3", "train.attention"),
    ("method.hypernetwork.enable_sizes=[999]", r"method\.hypernetwork\.enable_sizes"),  # the model has no such attention input
    ("metrics.val_loss_timesteps=[1000]", r"metrics\.val_loss_timesteps: \[1000\] must be distinct whole timesteps in 0\.\.999"),
    ("metrics.val_loss_timesteps=[5,5]", r"metrics\.val_loss_timesteps"), ("data.holdout=-2", r"data\.holdout: -2 is not a whole number"),
])
def test_nonsense_config_fails_before_any_training(tmp_path, override, key):
    """Every config value is checked up front, with an error run.py turns into one line and exit 2."""
    sys.path.insert(0, str(ROOT))
    from run import usage_errors

    cfg = config(tmp_path, override)
    with pytest.raises(usage_errors(), match=key):
        run(cfg)
    assert not (tmp_path / "rows").exists()


@pytest.mark.parametrize(("files", "message"), [({"open_clip_config.json": "{not json"}, "is not readable JSON"),
                                               ({"open_clip_config.json": "[]"}, "has no 'model_cfg' object"),
                                               ({"open_clip_config.json": '{"model_cfg": {}}'}, "holds no weights")])
def test_a_broken_local_clip_folder_is_named_before_any_training(tmp_path, files, message):
    sys.path.insert(0, str(ROOT))
    from run import usage_errors

    folder = tmp_path / "clip"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    with pytest.raises(usage_errors(), match=f"metrics.clip: .*{message}"):
        run(config(tmp_path / "run", f"metrics.clip=local-dir:{folder}"))
    assert not (tmp_path / "run" / "rows").exists()


def test_inception_fid_without_local_weights_fails_before_any_training(tmp_path):
    pytest.importorskip("torchmetrics")
    try:
        import torch_fidelity  # noqa: F401

        pytest.skip("torch-fidelity is installed here; the unavailable case cannot be shown")
    except ImportError:
        pass
    from metrics.fd import InceptionUnavailable

    with pytest.raises(InceptionUnavailable, match="metrics.inception"):
        run(config(tmp_path, "metrics.inception=true"))
    assert not (tmp_path / "rows").exists()


def chromium() -> str | None:
    import shutil

    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.slow
def test_report_renders_in_a_real_browser(smoke_run, tmp_path):
    """The HTML report as a reader sees it: headless Chromium at 1,400 px loads it, every embedded image
    decodes, no table is wider than the page's text, and the page logs no error."""
    import subprocess

    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)")
    _, results = smoke_run
    html = results / "report" / "report.html"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
           "--window-size=1400,1000", "--virtual-time-budget=5000", "--dump-dom", html.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    decoded = re.search(r'data-decoded="(\d+)/(\d+)"', proc.stdout)
    assert decoded, "the page's decode probe did not run"
    ok, total = map(int, decoded.groups())
    assert total >= 8 and ok == total, f"{ok} of {total} images decoded"
    widest = re.search(r'data-widest-table="(\d+)/(\d+)/([^"]*)"', proc.stdout)
    assert widest and 0 < int(widest[1]) <= int(widest[2]), f"table '{widest and widest[3]}' is {widest and widest[1]} px wide on a {widest and widest[2]} px page"
    # The page itself logs nothing, so any console line (an uncaught error, a failed resource) is a fault.
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    assert "About these numbers" in proc.stdout and "Metric validity" in proc.stdout


@pytest.mark.slow
def test_every_report_table_compiles_in_a_two_column_paper(smoke_run, tmp_path):
    """Each `.tex` table the report wrote goes into a minimal two-column pdflatex document with booktabs
    and graphicx (the line its first comment names), as a paper's author would \\input it, and compiles (10 of 12 failed once: an unescaped
    '%' in a caption, Unicode arrows, a math character in text). Needs pdflatex (Debian:
    texlive-latex-recommended; .ci/run installs it)."""
    import shutil

    if shutil.which("pdflatex") is None:
        pytest.skip("no pdflatex on this machine (Debian: apt-get install texlive-latex-recommended; .ci/run installs it)")
    _, results = smoke_run
    tables = sorted((results / "report" / "tables").glob("*.tex"))
    assert len(tables) >= 10, tables
    from helpers import latex_errors_in_a_paper

    failed = {tex.name: errors for tex in tables if (errors := latex_errors_in_a_paper(tex, tmp_path))}
    assert not failed, failed


def _kill_when(cmd: list[str], condition, timeout: float = 600) -> bool:
    """Run `cmd` and kill -9 its whole process group the moment `condition()` holds; False if it ended first."""
    import tempfile

    err = tempfile.TemporaryFile()  # not a pipe: a chatty child must never block on a full one
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if condition():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.01)
    assert proc.poll() is not None, "the run neither reached the kill point nor ended"
    err.seek(0)
    assert proc.returncode == 0, err.read().decode()[-2000:]
    return False


@pytest.mark.slow
def test_a_run_killed_at_any_stage_resumes_to_exactly_the_uninterrupted_results(smoke_run, tmp_path):
    """Determinism and exact resume at once: a second run of the same config (same threads, same machine),
    killed -9 while the base images are written, after some training, in the middle of writing a run's
    sweep images and after some scoring, and resumed each time, ends with every number but the
    instruments' own readings and every image equal to the uninterrupted run's, byte for byte."""
    _, first = smoke_run
    cmd = command(tmp_path, "seeds=[0,1]")
    rows = tmp_path / "rows"

    def sweep_half_written() -> bool:
        folders = [d for d in (tmp_path / "images").glob("*-*") if d.is_dir() and d.name != "base"]
        return any(any(d.glob("*.png")) and not (d / "images.json").exists() for d in folders)

    kill_points = {
        "base images": lambda: any((tmp_path / "images" / "base").glob("*.png")),
        "after 3 trainings": lambda: len(list(rows.glob("train_*.parquet"))) >= 3,
        "half a sweep": sweep_half_written,
        "after 9 scorings": lambda: len(list(rows.glob("scores_*.parquet"))) >= 9,
    }
    killed = [name for name, condition in kill_points.items() if _kill_when(cmd, condition)]
    assert len(killed) >= 3, f"the run ended before most kill points: killed at {killed}"
    finished = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert_same_results(first, tmp_path)
    assert not list(tmp_path.rglob(".*.tmp")), "the killed writers' temporaries were left behind"


@pytest.mark.slow
def test_a_moved_results_dir_with_damaged_outputs_is_repaired_to_the_same_results(smoke_run, tmp_path, caplog):
    """Results dirs are portable and self-checking: moved elsewhere, with a truncated artifact, a flipped
    byte in a sweep image, a garbage rows file and a deleted base image, a rerun names each damage in one
    line, redoes exactly those stages and ends with the original table and images."""
    cfg, first = smoke_run
    moved = tmp_path / "moved"
    shutil.copytree(first, moved)
    lora = sorted(moved.glob("train/*/artifact/lora_kohya.safetensors"))[0]
    lora.write_bytes(lora.read_bytes()[:100])
    # An image of another run: the truncated artifact's run is retrained, and its images made anew unread.
    image = sorted(f for f in moved.glob("images/*-*/instance_0_seed0_w+1.00.png") if not f.parent.name.startswith(lora.parts[-3]))[0]
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF
    image.write_bytes(bytes(data))
    garbage = sorted(moved.glob("rows/scores_*.parquet"))[-1]
    garbage.write_text("not parquet")
    sorted(moved.glob("images/base/*.png"))[0].unlink()
    untouched = {f: f.stat().st_mtime_ns for f in moved.glob("rows/train_*.parquet") if f.stem != f"train_{lora.parts[-3]}"}

    with caplog.at_level("WARNING"):
        assert run(config(moved, "seeds=[0,1]")) == 0
    said = " | ".join(r.getMessage() for r in caplog.records)
    for damaged in (f"{lora.parts[-3]}/artifact/lora_kohya.safetensors is corrupt", f"{image.name} is corrupt", f"{garbage.name} is unreadable", "is missing"):
        assert damaged in said, said
    assert all("\n" not in r.getMessage() for r in caplog.records)
    assert {f: f.stat().st_mtime_ns for f in untouched} == untouched  # the other trainings were reused
    assert_same_results(first, moved)
    # Nothing inside points back at the old place (Hydra's own run logs are not results).
    texts = [f for f in moved.rglob("*") if f.is_file() and f.suffix in (".json", ".csv", ".md", ".html", ".log") and "hydra" not in f.parts]
    assert not [f for f in texts if str(first) in f.read_text(errors="replace")]


def test_a_finished_results_dir_still_checks_its_base_and_instance_images(smoke_run, tmp_path, caplog):
    """Every run finished, so nothing is trained or scored again; a base image and an instance image with a
    flipped byte are still found on the rerun and written again, equal to the originals."""
    cfg, first = smoke_run
    moved = tmp_path / "moved"
    shutil.copytree(first, moved)
    damaged = [sorted(moved.glob("images/base/*.png"))[0], sorted(moved.glob("images/instance/*/*.png"))[0]]
    originals = [f.read_bytes() for f in damaged]
    for f in damaged:
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    trained = {f: f.stat().st_mtime_ns for f in moved.glob("rows/train_*.parquet")}
    with caplog.at_level("WARNING"):
        assert run(config(moved, "seeds=[0,1]")) == 0
    said = " | ".join(r.getMessage() for r in caplog.records)
    assert f"{damaged[0].name} is corrupt" in said and "instance images differ from the concept's" in said, said
    assert [f.read_bytes() for f in damaged] == originals
    assert {f: f.stat().st_mtime_ns for f in trained} == trained


@pytest.mark.slow
def test_two_runs_sharing_a_results_dir_do_each_stage_once(tmp_path):
    """Started together on one results dir, two runs wait for each other's stages instead of computing
    them twice: every stage file is written once (its inode never changes after it appears)."""
    cmd = command(tmp_path, "method=[lora,hypernetwork]", "seeds=[0,1]")
    logs = [tmp_path / f"run{i}.log" for i in range(2)]
    procs = [subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT) for log in logs]  # Hydra logs to stdout
    first_seen: dict[str, int] = {}
    rewritten = set()
    while any(p.poll() is None for p in procs):
        for f in (tmp_path / "rows").glob("*.parquet"):
            try:
                inode = f.stat().st_ino
            except FileNotFoundError:
                continue
            if first_seen.setdefault(f.name, inode) != inode:
                rewritten.add(f.name)
        time.sleep(0.005)
    outs = [log.read_text() for log in logs]
    assert all(p.returncode == 0 for p in procs), [e[-1500:] for e in outs]
    assert len([n for n in first_seen if n.startswith("train_")]) == 2 * 2 * 2
    assert not rewritten, rewritten
    assert any("waiting for another process" in err for err in outs)


@pytest.mark.parametrize(("omp", "cores", "overrides", "expected"), [
    (None, 2, [], (2, 1)),  # two 1-thread workers on two cores
    ("1", 2, [], (1, 1)),  # a parallel joblib job's share: one core
    (None, 8, [], (4, 2)),  # at most 4 CPU workers, the cores shared out
    ("4", 8, [], (4, 1)),
    ("1", 2, ["threads=2"], (1, 2)),  # an explicit setting wins
])
def test_threads_fit_the_core_budget_a_launcher_gives(tmp_path, monkeypatch, omp, cores, overrides, expected):
    from bench import provenance, runner

    monkeypatch.setattr(provenance, "usable_cores", lambda: cores)
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    cfg = config(tmp_path, "workers=null", "threads=null", *overrides)
    assert runner.parallelism(cfg, n_jobs=16) == expected


@pytest.mark.parametrize(("make", "message"), [
    (lambda r: (r / "rows").mkdir(parents=True) or (r / "rows" / "mine.parquet").write_bytes(b"PAR1"), r"rows/mine.parquet is not a rows file of this harness"),
    (lambda r: (r / ".locks" / "train_0a1b.lock").mkdir(parents=True), r"\.locks/train_0a1b.lock is not a lock file the harness made"),
    (lambda r: r.mkdir(parents=True) or (r / "rows").write_text("x"), r"rows is a file; the harness keeps a folder there"),
])
def test_what_the_harness_keeps_in_results_dir_is_checked_before_any_training(tmp_path, make, message):
    """A stray table in rows/ (it would be read as results), a lock that is a folder, rows/ as a file: one
    line naming the path, exit 2, nothing trained (each was a traceback mid-run)."""
    sys.path.insert(0, str(ROOT))
    from run import usage_errors

    make(tmp_path / "run")
    with pytest.raises(usage_errors(), match=message):
        run(config(tmp_path / "run"))
    assert not (tmp_path / "run" / "train").exists()


def test_stage_times_count_only_the_stages_this_invocation_wrote(tmp_path):
    """Two runs in one results dir at once: each one's timing.json holds its own stages' times, not the
    other's rows that happen to be fresh (it read every rows file written since it started)."""
    from bench.runner import stage_times

    records.write_stage(tmp_path, "train_aaaa", [{"run_id": "aaaa", "metric": "train_time", "value": 3.0, "unit": "s", "scorer": "wall_clock", "status": "ok"}])
    records.write_stage(tmp_path, "train_bbbb", [{"run_id": "bbbb", "metric": "train_time", "value": 50.0, "unit": "s", "scorer": "wall_clock", "status": "ok"}])
    assert stage_times(tmp_path, ["train_aaaa"], 1.0, 0.5, 9.0, 1)["train"] == 3.0
    assert stage_times(tmp_path, [], 0.0, 0.5, 9.0, 1)["train"] == 0.0


def test_tags_that_zero_every_subject_prompt_are_refused_before_any_training(tmp_path):
    """Every instance prompt tagged <lora:NAME:0>: each image would be the base model's, so the run is refused
    at planning instead of training for nothing."""
    sys.path.insert(0, str(ROOT))
    from run import usage_errors

    cfg = config(tmp_path, "data=sks_crescent", "method=[lora,hypernetwork]", "sweep.instance=['<lora:sks_crescent:0> {instance}']", "sweep.recontext=[]")
    with pytest.raises(usage_errors(), match="every instance and recontext prompt's tags set lora's strength to 0"):
        run(cfg)
    assert not (tmp_path / "rows").exists()
