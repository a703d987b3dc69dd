"""Did a change of code change what a comparison measures? Two results dirs of the same config, compared.

    python benchmarks/same_results.py results/before results/after

Every number of `results.parquet` but the instruments' own readings (wall clock, RSS, the machine's other
load: `records.INSTRUMENT_SCORERS`) and every image, byte for byte. Runs are matched by what they are (method, concept,
training seed), not by run id, so a change that renames stage keys without changing a result still
compares equal. Exit 0 when both are the same, 1 with the first differences listed. This is the proof a
behaviour-preserving restructuring keeps (issue 29): the default run before and after it.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUN = ["method", "concept", "train_seed"]
KEY = [*RUN, "model", "kind", "sweep", "prompt_id", "seed", "weight", "step", "metric", "unit", "scorer", "status"]


def numbers(results: Path) -> pd.DataFrame:
    t = pd.read_parquet(results / "results.parquet")
    from bench.records import INSTRUMENT_SCORERS

    t = t[~t.scorer.isin(INSTRUMENT_SCORERS)]
    return t[[*KEY, "value"]].astype({k: "string" for k in KEY if k not in ("train_seed", "seed", "weight", "step")}).sort_values(KEY, na_position="first").reset_index(drop=True)


def images(results: Path, table: pd.DataFrame) -> dict[tuple, str]:
    """sha256 of every published image of the table's runs (and the base and instance images), by (method,
    concept, training seed, file name); folders of runs the table does not hold (an older config's, left
    in a shared results dir) are not its results."""
    runs = table.dropna(subset=["run_id"]).drop_duplicates("run_id").set_index("run_id")[RUN]
    out = {}
    for p in sorted((results / "images").rglob("*.png")):
        rel = p.relative_to(results / "images")
        if any(part.startswith(".") for part in rel.parts):
            continue  # a killed writer's temporary
        folder = rel.parts[0]
        run_id, _, which = folder.partition("-")  # <run_id>-<sweep hash>[-curve]
        if run_id in runs.index:
            who = (*runs.loc[run_id], which)
        elif folder in ("base", "instance"):
            who = (folder,)
        else:
            continue
        out[(*who, *rel.parts[1:])] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def differences(a: Path, b: Path, limit: int = 10) -> list[str]:
    out = []
    na, nb = numbers(a), numbers(b)
    if len(na) != len(nb) or not na[KEY].equals(nb[KEY]):
        merged = na[KEY].merge(nb[KEY], how="outer", indicator=True)
        for side, name in (("left_only", a), ("right_only", b)):
            for r in merged[merged._merge == side].head(limit).itertuples(index=False):
                out.append(f"only in {name}: {dict(zip(KEY, r[:-1]))}")
        return out or ["the tables' rows differ in order or count"]
    same = (na.value == nb.value) | (na.value.isna() & nb.value.isna())
    for (_, r), v in zip(na[~same].head(limit).iterrows(), nb.value[~same].head(limit)):
        out.append(f"{r.method} {r.concept} seed {r.train_seed} {r.metric} (prompt {r.prompt_id}, gen seed {r.seed}, w {r.weight}, step {r.step}): {r.value!r} -> {v!r}")
    ia = images(a, pd.read_parquet(a / "results.parquet"))
    ib = images(b, pd.read_parquet(b / "results.parquet"))
    if ia.keys() != ib.keys():
        out += [f"image only in {a}: {'/'.join(map(str, k))}" for k in sorted(ia.keys() - ib.keys(), key=str)[:limit]]
        out += [f"image only in {b}: {'/'.join(map(str, k))}" for k in sorted(ib.keys() - ia.keys(), key=str)[:limit]]
    out += [f"image differs: {'/'.join(map(str, k))}" for k in sorted(ia.keys() & ib.keys(), key=str) if ia[k] != ib[k]][:limit]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    args = p.parse_args(argv)
    found = differences(args.before, args.after)
    n = len(numbers(args.before))
    n_images = len(images(args.before, pd.read_parquet(args.before / "results.parquet")))
    if found:
        print(f"{args.before} and {args.after} differ:\n" + "\n".join(found))
        return 1
    print(f"{args.before} and {args.after}: the same {n} numbers (instruments' readings aside) and {n_images} images, byte for byte")
    return 0


if __name__ == "__main__":
    sys.exit(main())
