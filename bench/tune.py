"""mode=tune: choose each method's learning rate before comparing, the same way for every method.

Published comparisons tune each method first; otherwise the comparison measures the defaults someone
happened to type. For every method, `tune.factors` x its grid centre (`tune.centers`, else its configured
lr) is trained on the tuning concepts (`tune.concepts`, kept out of the evaluation suite) at the tuning
seeds, through the same runner, stages and statistics as a comparison. The chosen lr maximises
`tune.objective` at weight 1 (mean over tuning runs) among those whose drift at weight 1 is at most
`tune.max_drift` (if none is, the least drifting); equal objectives go to the lower drift.
With `tune.write` the choice is written into conf/method/<name>.yaml, where the comparison reads it, and
the whole grid into results/benchmarks/tuning.md.
"""

from __future__ import annotations

import datetime
import itertools
import math
import json
import re
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from bench import stats, world
from bench.io import atomic_write_text
from bench.paths import BENCHMARK_RESULTS, METHOD_CONF_DIR, TUNING_JSON
from bench.records import checkpoint_rows, final_rows
from methods.errors import MethodConfigError
from metrics import higher_is_better



def grid_config(cfg: DictConfig, factors: dict[str, list[float]] | None = None) -> tuple[DictConfig, dict[str, tuple[str, float, dict]]]:
    """The tuning comparison's config, and arm name -> (method, lr, tuned options). `factors`: per method,
    the multiples of its grid centre to train (default `tune.factors`; `tune` extends them at an edge)."""
    t = cfg.tune
    overlap = set(t.concepts) & set(world.SUITE)
    if overlap:
        raise MethodConfigError(f"tune.concepts: {sorted(overlap)} belong to the evaluation suite; tune on concepts the comparison does not report")
    for i, name in enumerate(t.concepts or []):
        if str(name) not in world.CONCEPTS and not Path(str(name)).is_dir():
            raise MethodConfigError(f"tune.concepts[{i}]: {name!r} is neither a micro-world concept (its tuning concepts: {', '.join(world.TUNING)}) nor a folder")
    if not t.concepts or not t.seeds or len(set(t.seeds)) != len(t.seeds):
        raise MethodConfigError(f"tune.concepts / tune.seeds: need at least one tuning concept and distinct tuning seeds, got {list(t.concepts)} / {list(t.seeds)}")
    if higher_is_better(str(t.objective)) is not True:
        raise MethodConfigError(f"tune.objective: {t.objective!r} is not a quality metric that is higher when better (e.g. clip_i, presence); the chosen lr maximises it")
    if not float(t.max_drift) > 0:
        raise MethodConfigError(f"tune.max_drift: must be a positive number, got {t.max_drift}")
    if isinstance(t.max_extensions, bool) or not isinstance(t.max_extensions, int) or t.max_extensions < 0:
        raise MethodConfigError(f"tune.max_extensions: how often a grid may be extended past its edge, a whole number >= 0, got {t.max_extensions!r}")
    if len(t.factors) < 3 or any(float(f) <= 0 for f in t.factors):
        raise MethodConfigError(f"tune.factors: need at least 3 positive multiples of the configured lr, got {list(t.factors)}")
    centers = tune_centers(cfg)
    for name, lr in centers.items():
        if name not in cfg.method and name not in _known_methods():
            raise MethodConfigError(f"tune.centers.{name}: not a method (known: {', '.join(_known_methods())})")
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
            raise MethodConfigError(f"tune.centers.{name}: the lr a grid is centred on must be a positive number, got {lr!r}")
    options = tune_options(cfg)
    for name, keys in options.items():
        if name in cfg.method:
            unknown = [k for k in keys if k not in cfg.method[name] or k == "lr"]
            if unknown or not all(isinstance(v, list) and v for v in keys.values()):
                raise MethodConfigError(f"tune.options.{name}: each key must be a hyper-parameter of method.{name} (not lr) with a non-empty list of values; got {keys}")
    arms, methods = {}, {}
    for name in cfg.method:
        base_lr = float(centers.get(name, cfg.method[name].lr))
        keys = options.get(name, {})
        for combo in itertools.product(*keys.values()):
            choice = dict(zip(keys, combo))
            for factor in (factors or {}).get(name, t.factors):
                lr = float(f"{base_lr * float(factor):.3g}")
                # Named by its lr, not its place in the grid: an extended grid reuses the arms it has.
                arm = f"{name}-lr{lr_tag(lr)}" + "".join(f"-{key}{value}" for key, value in choice.items())
                methods[arm] = {**OmegaConf.to_container(cfg.method[name], resolve=True), **choice, "lr": lr}
                arms[arm] = (name, lr, choice)
    grid = cfg.copy()
    with open_dict(grid):
        grid.method = methods
        grid.data.concepts = list(t.concepts)
        grid.data.path = None
        grid.seeds = list(t.seeds)
        grid.sweep.weights = list(t.weights)
        grid.results_dir = str(Path(cfg.results_dir) / "tune")
    return grid, arms


def lr_tag(lr: float) -> str:
    """An lr as a name part without dots (config keys): 0.0006 -> '6e-4', 0.0015 -> '1p5e-3'."""
    mantissa, exponent = f"{lr:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".").replace(".", "p")
    return f"{mantissa}e{int(exponent)}"


def arm_table(cfg: DictConfig, arms: dict, table: pd.DataFrame) -> pd.DataFrame:
    """One row per arm: its objective and drift at weight 1, mean over tuning runs with 95 % t-intervals."""
    objective = str(cfg.tune.objective)
    rows = []
    for arm, (name, lr, choice) in arms.items():
        sub = table[table.method == arm]
        row = {"method": name, "arm": arm, "lr": lr, **choice}
        units = {metric: stats.unit_values(sub, metric, 1.0).value.to_numpy() for metric in (objective, "drift")}
        for metric, values in units.items():
            mean, lo, hi = stats.t_interval(values)
            row |= {metric: mean, f"{metric} 95% CI": f"[{lo:.3g}, {hi:.3g}]" if math.isfinite(lo) else ""}
        row["runs"] = len(units[objective])
        rows.append(row)
    return pd.DataFrame(rows)


def at_edge(grid: pd.DataFrame, index, options: list[str]) -> str | None:
    """'up' or 'down' when the chosen arm has the highest or lowest lr its method tried with the same
    options: the best may lie beyond, so the grid is extended that way. None: an interior choice."""
    pick = grid.loc[index]
    same = grid[(grid.method == pick.method) & np.logical_and.reduce([grid[k] == pick[k] for k in options] or [np.ones(len(grid), bool)])]
    if len(same) < 2:
        return None
    if pick.lr >= same.lr.max():
        return "up"
    if pick.lr <= same.lr.min():
        return "down"
    return None


def tune(cfg: DictConfig) -> int:
    """Train the grid; where a method's choice is on the grid's edge, extend its grid one step that way
    and train the new arms (finished arms are reused), up to `tune.max_extensions` times."""
    from bench import runner

    objective, max_drift = str(cfg.tune.objective), float(cfg.tune.max_drift)
    factors = {name: sorted(float(f) for f in cfg.tune.factors) for name in cfg.method}
    notes: list[str] = []
    for extension in range(int(cfg.tune.max_extensions) + 1):
        grid, arms = grid_config(cfg, factors)
        status, runs = runner.run_comparison(grid)
        full = runner.config_table(Path(grid.results_dir), runs, checkpoints=True)  # with the learning curves' rows
        grid_table = arm_table(cfg, arms, final_rows(full))
        picked = {name: choose(g, objective, max_drift) for name, g in grid_table.groupby("method", sort=False)}
        edges = {name: side for name, index in picked.items() if (side := at_edge(grid_table, index, list(tune_options(cfg).get(name, {})))) is not None}
        for name, side in edges.items():
            lr = grid_table.loc[picked[name]].lr
            f = factors[name]
            if extension == int(cfg.tune.max_extensions):
                notes.append(f"{name}: the chosen lr {lr:g} is still the {'top' if side == 'up' else 'bottom'} of its grid after "
                             f"{extension} extension(s) (tune.max_extensions); the best may lie beyond")
                continue
            new = f[-1] * f[-1] / f[-2] if side == "up" else f[0] * f[0] / f[1]
            factors[name] = sorted([*f, float(f"{new:.3g}")])
            notes.append(f"{name}: lr {lr:g} was the {'top' if side == 'up' else 'bottom'} of its grid; grid extended to x{new:.3g} of its centre")
            print(f"adapterbench: tune: {notes[-1]}")
        if not edges or extension == int(cfg.tune.max_extensions):
            break
    chosen, chosen_options = {}, {}
    for name, index in picked.items():
        pick = grid_table.loc[index]
        chosen[name] = float(pick.lr)
        chosen_options[name] = {key: _as_option(pick[key], values) for key, values in tune_options(cfg).get(name, {}).items()}
    curves = chosen_curves(full, grid_table, picked, objective)
    grid_table["chosen"] = grid_table.index.isin(list(picked.values()))
    grid_table["date"] = datetime.date.today().isoformat()
    # What else each method was configured with while its lr was tuned (an lr is tuned for that config).
    settings = {name: {k: v for k, v in OmegaConf.to_container(cfg.method[name], resolve=True).items() if k not in ("lr", "_target_")} for name in chosen}
    record = {"chosen": chosen, "chosen_options": chosen_options, "options": tune_options(cfg),
              "concepts": list(cfg.tune.concepts), "seeds": list(cfg.tune.seeds), "factors": list(cfg.tune.factors),
              "centers": tune_centers(cfg), "objective": objective, "max_drift": max_drift, "train": OmegaConf.to_container(cfg.train, resolve=True),
              "date": datetime.date.today().isoformat(), "grid": grid_table.to_dict("records"), "settings": settings, "notes": notes}
    record, grid_table = merge_previous(record, grid_table)
    text = render(cfg, grid_table, record.get("notes", notes)) + render_curves(curves, objective, int(cfg.train.steps))
    print(text)
    figure = frontier_figure(grid_table, objective, max_drift, Path(grid.results_dir))
    print(f"adapterbench: tune: frontier figure {figure}")
    if cfg.tune.write:
        for name, lr in chosen.items():
            write_lr(METHOD_CONF_DIR / f"{name}.yaml", lr, cfg)
            for key, value in chosen_options[name].items():
                write_key(METHOD_CONF_DIR / f"{name}.yaml", key, value, cfg)
        atomic_write_text(BENCHMARK_RESULTS / "tuning.md", text + "\n![each method's arms: presence against drift](tuning_frontier.png)\n")
        atomic_write_text(TUNING_JSON, json.dumps(record, indent=2, default=str))
        for ext in ("png", "svg"):
            shutil.copyfile(figure.with_suffix(f".{ext}"), BENCHMARK_RESULTS / f"tuning_frontier.{ext}")
        print(f"adapterbench: chosen learning rates written to conf/method/*.yaml: {chosen}; other tuned keys: {chosen_options}")
    return status


LEVEL_TOLERANCE = 0.05  # a curve has levelled off once it is this close to the best it reaches


def chosen_curves(full: pd.DataFrame, grid: pd.DataFrame, picked: dict, objective: str) -> pd.DataFrame:
    """Each method's chosen arm: its objective at weight 1 at every step its runs were scored at (the
    checkpoints, `train.checkpoints`, and the end), mean over tuning runs, and the first step within
    LEVEL_TOLERANCE of the highest it reaches. Empty without checkpoints."""
    from bench.report import curve_steps

    if not checkpoint_rows(full).any():
        return pd.DataFrame()
    q = curve_steps(full)
    rows = []
    for name, index in picked.items():
        pick = grid.loc[index]
        sub = q[(q.method == pick.arm) & (q.metric == objective)]
        per_step = sub.groupby(["step", "run_id"]).value.mean().groupby("step").mean().sort_index()
        if per_step.empty:
            continue
        level = next(int(s) for s, v in per_step.items() if v >= per_step.max() - LEVEL_TOLERANCE)
        rows.append({"method": name, "lr": pick.lr, **{f"{objective} @ step {int(s)}": v for s, v in per_step.items()}, "levels off by step": level})
    return pd.DataFrame(rows)


def render_curves(curves: pd.DataFrame, objective: str, steps: int) -> str:
    """The chosen arms' learning curves, and the budget rule's verdict on `train.steps`."""
    if curves.empty:
        return ""
    latest = int(curves["levels off by step"].max())
    rule = (f"Budget rule: train.steps is enough when every method's chosen arm has levelled off (come within {LEVEL_TOLERANCE} "
            f"of the highest {objective} its curve reaches) by half the budget, step {steps // 2} of {steps}. ")
    if latest <= steps // 2:
        verdict = f"Met: the last to level off does so by step {latest}."
    else:
        late = ", ".join(curves[curves["levels off by step"] > steps // 2].method)
        verdict = f"Not met: {late} level(s) off only by step {latest}; a larger train.steps could change the comparison."
    return (f"\n## Learning curves of the chosen arms\n\n{objective} at weight 1 against training steps (the same trainings, saved part-way: "
            f"train.checkpoints), mean over tuning runs. {rule}{verdict}\n\n" + curves.to_markdown(index=False, floatfmt=".3g") + "\n")


def frontier_figure(grid: pd.DataFrame, objective: str, max_drift: float, out: Path) -> Path:
    """Per method, every arm's objective against its drift at weight 1 (95 % t-intervals over tuning runs),
    labelled by lr; the Pareto set (no other arm has more of the objective and less drift) ringed, the
    chosen arm starred, and the rule that chose it written on the figure."""
    from bench.plots import pareto, plt, save_figure

    methods = list(dict.fromkeys(grid.method))
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.6), squeeze=False, sharey=True)
    option_keys = [c for c in grid.columns if c not in ("method", "arm", "lr", objective, "drift", "runs", "chosen", "date") and "95% CI" not in c]
    for ax, name in zip(axes[0], methods):
        g = grid[grid.method == name].reset_index(drop=True)
        on_front = pareto(list(zip(g.drift, g[objective])))
        for i, r in g.iterrows():
            err = [_err(r, objective), _err(r, "drift")]
            ax.errorbar(r.drift, r[objective], yerr=err[0], xerr=err[1], fmt="o", ms=4, color="C0", ecolor="0.75", lw=0.8, zorder=2)
            if on_front[i]:
                ax.plot(r.drift, r[objective], "o", ms=11, mfc="none", mec="C1", mew=1.5, zorder=3)
            if r.get("chosen", False):
                ax.plot(r.drift, r[objective], "*", ms=14, color="C3", zorder=4)
            opts = "".join(f" {k}={_plain(r[k]):g}" for k in option_keys if pd.notna(r.get(k)) and r.get(k) != "")
            # A crowded panel (an option crossed with the lr) labels its ringed and chosen arms only; tuning.md lists all.
            if len(g) <= 6 or on_front[i] or r.get("chosen", False):
                ax.annotate(f"{r.lr:g}{opts}", (r.drift, r[objective]), fontsize=6, xytext=(4, 3), textcoords="offset points")
        ax.axvline(max_drift, ls="--", color="0.5", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("drift at weight 1")
        ax.set_ylim(-0.05, 1.05) if objective == "presence" else None
    axes[0][0].set_ylabel(f"{objective} at weight 1")
    rule = (f"mode=tune: chosen (star) = highest {objective} with drift <= {max_drift:g} (dashed), ties to lower drift; "
            f"ringed: Pareto set; bars: 95 % t-intervals over tuning runs; labels: lr (a crowded panel labels ringed and chosen arms only)")
    fig.suptitle(textwrap.fill(rule, 60 * len(methods)), fontsize=8)
    fig.tight_layout()
    return save_figure(fig, Path(out), "frontier")


def _err(row, metric: str):
    """An errorbar's [[below], [above]] from a '[lo, hi]' interval column (none when it is blank)."""
    text = row.get(f"{metric} 95% CI", "")
    if not isinstance(text, str) or not text.startswith("["):
        return None
    lo, hi = (float(x) for x in text.strip("[]").split(","))
    return [[max(row[metric] - lo, 0)], [max(hi - row[metric], 0)]]


def choose(arms: pd.DataFrame, objective: str, max_drift: float):
    """The index of the arm with the best `objective` among those drifting at most `max_drift`; among
    equals (presence is a rate: ties happen) the one that changes the base model less. If every arm
    drifts too far, the least drifting."""
    ok = arms[(arms.drift <= max_drift) & arms[objective].notna()]
    if not len(ok):
        return arms.drift.idxmin()
    return ok.sort_values([objective, "drift"], ascending=[False, True], kind="stable").index[0]


def merge_previous(record: dict, grid: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    """Keep the earlier tuning of methods not tuned this time (`mode=tune method=textual_inversion`
    retunes one method), when it was made under the same protocol; otherwise this tuning stands alone."""
    if not TUNING_JSON.is_file():
        return record, grid
    old = json.loads(TUNING_JSON.read_text())
    protocol = ("concepts", "seeds", "factors", "objective", "max_drift")
    if any(old.get(k) != record.get(k) for k in protocol) or _train(old.get("train")) != _train(record.get("train")):
        return record, grid
    kept = [r for r in old.get("grid", []) if r["method"] not in record["chosen"]]
    # Grid centres are per method: a kept method's must be unchanged (a new method's centre, added to the
    # config for its own tuning, does not make the others' grids another protocol).
    old_centers, new_centers = old.get("centers") or {}, record.get("centers") or {}
    if any(old_centers.get(m) != new_centers.get(m) for m in {r["method"] for r in kept}):
        return record, grid
    for r in kept:
        r.setdefault("date", old.get("date"))
    merged = pd.concat([pd.DataFrame(kept), grid], ignore_index=True) if kept else grid
    order = list(dict.fromkeys([*(r["method"] for r in old.get("grid", [])), *grid.method]))
    merged = merged.sort_values("method", key=lambda m: m.map(order.index), kind="stable").reset_index(drop=True)

    def keep(field: str) -> dict:
        """The old per-method entries of `field` for methods not retuned, then this tuning's."""
        return {**{m: v for m, v in old.get(field, {}).items() if m not in record["chosen"]}, **record.get(field, {})}

    chosen = keep("chosen")
    merged_record = {**record, "centers": {**old_centers, **new_centers}, "chosen": {m: chosen[m] for m in order if m in chosen}, "chosen_options": keep("chosen_options"),
                     "settings": keep("settings"), "grid": merged.to_dict("records")}
    return merged_record, merged


def _train(train: dict | None) -> dict:
    """A tuning's `train` config with the training options it ran at filled in: a record written before an
    option existed ran at that option's default."""
    from methods.settings import TrainSettings

    options = ("precision", "gradient_checkpointing", "optimizer", "attention")
    # Checkpoints change what is saved, not what is trained (tests/test_curves.py): not part of the protocol.
    return {**{k: getattr(TrainSettings, k) for k in options}, **{k: v for k, v in (train or {}).items() if k != "checkpoints"}}


def render(cfg: DictConfig, grid: pd.DataFrame, notes: list[str] = ()) -> str:
    t = cfg.tune
    head = (f"# Learning rates (and tuned options) chosen by `mode=tune`\n\n"
            f"Tuning concepts {', '.join(t.concepts)} (not in the evaluation suite), training seeds {list(t.seeds)}, "
            f"{cfg.train.steps} steps at batch {cfg.train.batch_size}; grid: {list(t.factors)} x each method's grid centre"
            f" ({', '.join(f'{m} {v:g}' for m, v in tune_centers(cfg).items()) or 'its configured lr'})"
            + "".join(f", crossed for {m} with {', '.join(f'{k} in {v}' for k, v in keys.items())}" for m, keys in tune_options(cfg).items())
            + ". "
            f"Chosen: the highest {t.objective} at weight 1 (mean over tuning runs) with drift at weight 1 <= {t.max_drift}, "
            f"on equal {t.objective} the lower drift. "
            f"Run with `python run.py mode=tune` (a method's rows keep the date it was last tuned).\n\n")
    # Options tuned for one method only are blank, not NaN, in the other methods' rows.
    shown = grid.drop(columns=["arm"], errors="ignore").astype(object).where(grid.notna(), "")
    extended = "".join(f"- {n}\n" for n in notes)
    return head + shown.to_markdown(index=False, floatfmt=".4g") + "\n" + (f"\nGrid extensions:\n{extended}" if extended else "")


def _known_methods() -> list[str]:
    return sorted(p.stem for p in METHOD_CONF_DIR.glob("*.yaml"))


def tune_centers(cfg: DictConfig) -> dict:
    """`tune.centers` as plain data: method -> the lr its grid is centred on."""
    return OmegaConf.to_container(cfg.tune.get("centers") or {}, resolve=True)


def tune_options(cfg: DictConfig) -> dict:
    """`tune.options` as plain data: method -> {hyper-parameter: [values]} crossed with the lr grid."""
    return OmegaConf.to_container(cfg.tune.get("options") or {}, resolve=True)


def _as_option(value, values: list):
    """The grid's value as the option list wrote it: a column shared with methods without this option
    holds NaN for them, which turns its integers into floats (4 -> 4.0)."""
    value = _plain(value)
    return next((v for v in values if v == value), value)


def _plain(value):
    """A pandas cell as a YAML-able Python value (numpy ints and floats included)."""
    return value.item() if hasattr(value, "item") else value


def write_key(path: Path, key: str, value, cfg: DictConfig) -> None:
    """Replace a top-level `key:` line of a method YAML (a tuned option), saying where the value came from."""
    text = path.read_text()
    note = f"# {key} chosen by mode=tune on {', '.join(cfg.tune.concepts)} (results/benchmarks/tuning.md)"
    text = re.sub(rf"(?m)^# {re.escape(key)} chosen by mode=tune.*\n", "", text)
    text = re.sub(r"(?m)^# set by hand to the values mode=tune chose.*\n", "", text)  # a tuning replaces a hand-set value's note
    new, n = re.subn(rf"(?m)^{re.escape(key)}:.*$", f"{note}\n{key}: {value}", text, count=1)
    if n != 1:
        raise MethodConfigError(f"{path}: no top-level '{key}:' line to write the tuned value into")
    atomic_write_text(path, new)


def write_lr(path: Path, lr: float, cfg: DictConfig) -> None:
    """Replace the `lr:` line of a method YAML, saying where the value came from."""
    write_key(path, "lr", f"{lr:g}", cfg)
