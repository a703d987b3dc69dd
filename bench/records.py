"""The tidy results table: one row per measured number.

Each finished stage writes its own rows file (`rows/<stage>.parquet`, atomically); the table is their
union. The rule every stage follows (base images, class images, trainings, sweeps and scores, learning
curves; the report keeps the same kind of record):

1. its outputs are written atomically, then their manifest `rows/<stage>.outputs.json` (`io.write_manifest`:
   the checksums of every output file and of the rows file, paths relative to the results directory, so
   it can move), then the rows file: a stage whose rows file exists is finished;
2. `stage_problems` / `stage_intact` check a stage against its manifest and change nothing, so the main
   process may look while planning; only a worker holding the stage's lock acts on what it finds
   (`worker.reuse_or_make`): it reuses an intact stage, and otherwise discards what is left of it
   (`discard_stage`, said in one line) and makes it again;
3. each file is hashed once per process: files a stage has just written are remembered as written.
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from bench.io import atomic_path, files_under, manifest_problems, read_manifest, write_manifest
from bench.io import known_hashes as io_known_hashes

log = logging.getLogger(__name__)

# run_id: the training run (the unit of analysis); config: hash of the method's config; kind: the concept's
# kind (object/style); train_seed: the training seed; sweep: hash of the sweep config that made the images;
# seed: the generation seed; step: the training step of a loss row, or of the checkpoint a learning curve's
# row scores (blank on the final artifact's rows); scorer: what measured the value (a feature space such as 'microclip', or the
# instrument: 'cpu_tensor_peak', 'cuda_max_allocated', 'wall_clock', ...).
COLUMNS = [
    "run_id", "model", "method", "config", "concept", "kind", "train_seed", "sweep",
    "prompt_id", "seed", "weight", "step", "metric", "value", "unit", "scorer", "status",
]
# Scorers of the instruments' own readings (wall clock, process RSS, the machine's other load), which differ
# between any two runs of one config: every comparison of two runs' results leaves these rows out.
INSTRUMENT_SCORERS = frozenset({"wall_clock", "process_vmhwm", "proc_stat"})
STRINGS = ("run_id", "model", "method", "config", "concept", "kind", "sweep", "prompt_id", "metric", "unit", "scorer", "status")


def frame(rows: Iterable[dict]) -> pd.DataFrame:
    """Rows as a DataFrame with every column, in order; unknown columns are an error."""
    df = pd.DataFrame(list(rows))
    extra = set(df.columns) - set(COLUMNS)
    if extra:
        raise ValueError(f"result rows have unknown columns {sorted(extra)}")
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = None
    df = df[COLUMNS]
    for col in ("weight", "value"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    for col in ("train_seed", "seed", "step"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    for col in STRINGS:
        df[col] = df[col].astype("string")
    return df


def stage_file(results_dir: Path, stage: str) -> Path:
    return Path(results_dir) / "rows" / f"{stage}.parquet"


def outputs_file(results_dir: Path, stage: str) -> Path:
    return Path(results_dir) / "rows" / f"{stage}.outputs.json"


def write_stage(results_dir: Path, stage: str, rows: Iterable[dict], outputs: Iterable[Path] = ()) -> Path:
    """The stage's rows, after the manifest of its output files (files, or every file in folders) and of
    the rows file itself: a rows file swapped for another valid one (say, with no rows) is damage too."""
    results_dir = Path(results_dir)
    path = stage_file(results_dir, stage)
    buffer = io.BytesIO()
    frame(rows).to_parquet(buffer, index=False)
    data = buffer.getvalue()
    rows_entry = {path.relative_to(results_dir).as_posix(): {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}
    write_manifest(outputs_file(results_dir, stage), files_under(*outputs), results_dir, known=rows_entry, stage=stage)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def stage_problems(results_dir: Path, stage: str) -> list[str]:
    """Why a finished stage cannot be reused (empty: it can): an unreadable rows file, or an output file
    missing or changed since the stage wrote it."""
    import pyarrow.parquet as pq

    path = stage_file(results_dir, stage)
    try:
        pq.read_metadata(path)
    except Exception as e:  # truncated or not parquet at all: pyarrow raises several kinds
        return [f"{path.relative_to(results_dir).as_posix()} is unreadable ({type(e).__name__})"]
    record = outputs_file(results_dir, stage)
    return manifest_problems(record, Path(results_dir)) if record.is_file() else []


def known_hashes(results_dir: Path, *stage_names: str) -> dict:
    """This process's hashes of these stages' recorded outputs (`io.known_hashes`), to pass to a worker."""
    paths = []
    for stage in stage_names:
        try:
            paths += [Path(results_dir) / rel for rel in read_manifest(outputs_file(results_dir, stage))["files"]]
        except (OSError, ValueError, TypeError):
            pass
    return io_known_hashes(paths)


def stage_intact(results_dir: Path, stage: str) -> bool:
    """Whether the stage is finished and every output is as its manifest says. Changes nothing."""
    return stage_file(results_dir, stage).exists() and not stage_problems(results_dir, stage)


def discard_stage(results_dir: Path, stage: str, folders: Iterable[Path] = ()) -> None:
    """Forget a stage, so it is made again: its rows file and manifest, and `folders` (outputs that would
    otherwise be picked up again, such as a sweep's images made from an artifact that has been replaced)."""
    stage_file(results_dir, stage).unlink(missing_ok=True)
    outputs_file(results_dir, stage).unlink(missing_ok=True)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def read_table(*results_dirs: Path, checkpoints: bool = False) -> pd.DataFrame:
    """The union of every stage's rows, from one or several results directories (the learning curves'
    checkpoint rows only with `checkpoints`: see `final_rows`)."""
    return read_files([f for d in results_dirs for f in sorted(Path(d).glob("rows/*.parquet"))], checkpoints=checkpoints)


def checkpoint_rows(df: pd.DataFrame) -> pd.Series:
    """Which rows score a checkpoint saved part-way through training (a sweep row with a `step`); every
    other sweep row scores the final artifact, and loss rows carry a step but no weight."""
    return df.step.notna() & df.weight.notna()


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The table without checkpoint rows: what every comparison, statistic and check reads, so a
    checkpoint's weight-1 images are never averaged with the final artifact's."""
    return df[~checkpoint_rows(df)]


class RowsFileError(ValueError):
    """A file under rows/ that is not a rows file this harness wrote (a usage error: one line, exit 2)."""


def read_files(files: Iterable[Path], checkpoints: bool = False) -> pd.DataFrame:
    parts = []
    for f in files:
        try:
            rows = pd.read_parquet(f)
            if not {"metric", "value"} <= set(rows.columns):
                raise ValueError(f"no metric and value columns (has {sorted(rows.columns)[:6]})")
            parts.append(frame(rows.to_dict("records")))
        except Exception as e:  # pyarrow and pandas raise several types for a file that is not theirs
            raise RowsFileError(f"results_dir: {f} is not a rows file of this harness ({str(e).splitlines()[0][:160]}); move it out of rows/") from None
    df = frame([]) if not parts else pd.concat(parts, ignore_index=True)
    return df if checkpoints else final_rows(df).reset_index(drop=True)


def publish(results_dir: Path) -> pd.DataFrame:
    """Write the whole table as `results.parquet` and `results.csv` (checkpoint rows included: their `step`
    column says which they are)."""
    df = read_table(results_dir, checkpoints=True)
    with atomic_path(Path(results_dir) / "results.parquet") as tmp:
        df.to_parquet(tmp, index=False)
    with atomic_path(Path(results_dir) / "results.csv") as tmp:
        df.to_csv(tmp, index=False)
    return df
