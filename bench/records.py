"""The tidy results table: one row per measured number.

Each finished stage writes its own rows file (`rows/<stage>.parquet`, atomically); the table is their
union. A stage whose rows file exists is finished, which is what makes reruns reuse work.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from bench.io import atomic_path

# run_id: the training run (the unit of analysis); config: hash of the method's config; kind: the concept's
# kind (object/style); train_seed: the training seed; sweep: hash of the sweep config that made the images;
# seed: the generation seed; scorer: what measured the value (a feature space such as 'microclip', or the
# instrument: 'cpu_tensor_peak', 'cuda_max_allocated', 'wall_clock', ...).
COLUMNS = [
    "run_id", "model", "method", "config", "concept", "kind", "train_seed", "sweep",
    "prompt_id", "seed", "weight", "step", "metric", "value", "unit", "scorer", "status",
]
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


def write_stage(results_dir: Path, stage: str, rows: Iterable[dict]) -> Path:
    path = stage_file(results_dir, stage)
    with atomic_path(path) as tmp:
        frame(rows).to_parquet(tmp, index=False)
    return path


def read_table(*results_dirs: Path) -> pd.DataFrame:
    """The union of every stage's rows, from one or several results directories."""
    return read_files([f for d in results_dirs for f in sorted(Path(d).glob("rows/*.parquet"))])


def read_files(files: Iterable[Path]) -> pd.DataFrame:
    parts = [frame(pd.read_parquet(f).to_dict("records")) for f in files]
    return frame([]) if not parts else pd.concat(parts, ignore_index=True)


def publish(results_dir: Path) -> pd.DataFrame:
    """Write the whole table as `results.parquet` and `results.csv`."""
    df = read_table(results_dir)
    with atomic_path(Path(results_dir) / "results.parquet") as tmp:
        df.to_parquet(tmp, index=False)
    with atomic_path(Path(results_dir) / "results.csv") as tmp:
        df.to_csv(tmp, index=False)
    return df
