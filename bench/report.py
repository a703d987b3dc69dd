"""Tables, figures and an HTML report, rebuilt from the tidy results table alone.

    python -m bench.report RESULTS_DIR [MORE_RESULTS_DIRS ...] [--out DIR]

Nothing is recomputed: every number comes from `rows/*.parquet`, every picture from `images/`.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from bench import provenance, records, stages, stats, validity  # noqa: E402
from bench.io import atomic_write_text
from bench.plots import colours, human_bytes, matplotlib, method_rank, pareto, plt, save_figure  # noqa: F401 (pareto: the report's frontier)
from metrics import QUALITY, higher_is_better, is_frechet
from metrics import title as metric_name
from metrics import info as metric_info

log = logging.getLogger(__name__)

COST_METRICS = {  # metric -> (column title, scale, format)
    "peak_mem": ("training memory (MiB)", 1.0, "{:,.1f}"),
    "process_rss_peak": ("process peak RSS (MiB)", 1.0, "{:,.0f}"),
    "train_time": ("train time (s)", 1.0, "{:,.1f}"),
    "steps_per_s": ("steps/s", 1.0, "{:,.2f}"),
    "trainable_params": ("trainable params", 1.0, "{:,.0f}"),
    "artifact_bytes": ("file size", 1.0, "bytes"),
    "input_gen_time": ("class images (s)", 1.0, "{:,.1f}"),
    "other_load": ("other load (cores)", 1.0, "{:,.1f}"),
}
def quality_metrics(df: pd.DataFrame) -> dict[str, tuple[str, bool]]:
    """The quality metrics present, as metric -> (title, higher is better), with every Fréchet distance
    (fd_<space>, fid_inception) found."""
    fds = sorted(m for m in df.metric.dropna().unique() if is_frechet(m))
    found = [m for m in QUALITY if (df.metric == m).any()]
    return {m: (metric_name(m), higher_is_better(m)) for m in found + fds}


# ------------------------------------------------------------------------------------------- numbers


def ordered(methods) -> list[str]:
    return sorted(set(methods), key=method_rank)


def _flat(d, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return out


def config_descriptions(runs: list[dict]) -> dict[str, str]:
    """Config hash -> the hyper-parameters that tell it apart from the same method's other configs in these
    runs, e.g. 'rank=16' for a `method.lora.rank=1,4,16` multirun (a family of one method)."""
    by_method: dict[str, dict[str, dict]] = {}
    for r in runs:
        method, config = r.get("method"), r.get("config") or {}
        mcfg = (config.get("method") or {}).get(method)
        if method and isinstance(mcfg, dict):
            # The method's keys as they are ('rank=16'); the training settings and the model prefixed ('train.steps=40').
            flat = {**_flat(mcfg), **_flat(config.get("train"), "train."), **_flat(config.get("model"), "model.")}
            by_method.setdefault(method, {})[stages.recorded_config_hash(config, method)] = flat
    out = {}
    for configs in by_method.values():
        if len(configs) < 2:
            continue
        keys = sorted({k for c in configs.values() for k in c})
        differ = [k for k in keys if len({c.get(k) for c in configs.values()}) > 1 and not k.endswith("_target_")]
        for h, c in configs.items():
            out[h] = ", ".join(f"{k.removeprefix('adapter.')}={c.get(k, '-')}" for k in differ)
    return out


def arm_labels(df: pd.DataFrame) -> dict[tuple, str]:
    """A readable name per (model, method, config, sweep): the method, plus what tells arms apart (the
    differing hyper-parameters where the report knows them, else the config hash)."""
    keys = {tuple(None if pd.isna(x) else x for x in r) for r in df[stats.ARM].dropna(subset=["method"]).itertuples(index=False)}
    many_models = len({k[0] for k in keys}) > 1
    configs = pd.Series([k[2] for k in keys]).groupby([k[1] for k in keys]).nunique() if keys else pd.Series(dtype=int)
    many_sweeps = len({k[3] for k in keys if isinstance(k[3], str)}) > 1
    described = df.attrs.get("config_descriptions", {})
    out = {}
    for model, method, config, sweep in keys:
        label = method
        if configs.get(method, 1) > 1:
            label += f" {described[config]}" if described.get(config) else f" [{config}]"
        if many_models:
            label = f"{model}: {label}"
        if many_sweeps and isinstance(sweep, str):
            label += f" (sweep {sweep})"
        out[(model, method, config, sweep)] = label
    return out


def label_of(labels: dict, model, method, config, sweep=None) -> str:
    sweep = None if sweep is None or pd.isna(sweep) else sweep
    candidates = [(sw, text) for (mo, me, co, sw), text in labels.items() if (mo, me, co) == (model, method, config)]
    for sw, text in candidates:
        if sw == sweep:
            return text
    return candidates[0][1] if candidates else str(method)


def cost_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Run-level cost rows of successful runs (one number per run and cost metric; class-image time is
    per concept, shared by every training seed)."""
    return df[df.metric.isin(COST_METRICS) & df.step.isna() & df.weight.isna() & (df.status == "ok")]


def cost_table(df: pd.DataFrame, settings: stats.Settings = stats.Settings()) -> pd.DataFrame:
    """Arm x cost: the mean over training runs with a 95 % interval (concepts, then seeds)."""
    cost = cost_rows(df)
    labels = arm_labels(df.assign(sweep=None))
    rows = []
    for (model, method, config), g in sorted(cost.groupby(["model", "method", "config"], dropna=False), key=lambda kv: method_rank(label_of(labels, *kv[0]))):
        row = {"method": label_of(labels, model, method, config), "runs": int(g.run_id.nunique())}
        for metric, (title, scale, fmt) in COST_METRICS.items():
            m = g[g.metric == metric]
            if m.empty:
                continue
            groups = [x.value.to_numpy() * scale for _, x in m.groupby("concept")]
            row[title] = format_ci(*stats.hierarchical_bootstrap(groups, settings), fmt)
        rows.append(row)
    return pd.DataFrame(rows).set_index("method").fillna("") if rows else pd.DataFrame()


def format_ci(mean: float, lo: float, hi: float, fmt: str = "{:.3f}") -> str:
    """'mean [low, high]'; fmt 'bytes' prints human units; a zero-width interval is left out."""
    if not np.isfinite(mean):
        return ""
    show = human_bytes if fmt == "bytes" else lambda v: _unsigned_zero(fmt.format(v))
    if not np.isfinite(lo) or show(lo) == show(hi) == show(mean):
        return show(mean)
    return f"{show(mean)} [{show(lo)}, {show(hi)}]"


# LaTeX for what the tables print in Unicode, and the characters a caption must escape.
LATEX_SYMBOLS = {"↑": r"$\uparrow$", "↓": r"$\downarrow$", "−": "$-$", "±": r"$\pm$", "≥": r"$\geq$", "≤": r"$\leq$", "×": r"$\times$"}
LATEX_SPECIAL = {"\\": r"\textbackslash{}", "%": r"\%", "&": r"\&", "#": r"\#", "_": r"\_", "$": r"\$", "{": r"\{", "}": r"\}",
                 "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_text(text: str) -> str:
    """Plain text as LaTeX: special characters escaped, then the table's Unicode symbols as math."""
    out = "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)
    for symbol, tex in LATEX_SYMBOLS.items():
        out = out.replace(symbol, tex)
    return out


def _unsigned_zero(text: str) -> str:
    """'-0.000' (a float error's tiny negative, e.g. 1 - cos of identical images) reads as a real sign: '0.000'."""
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def metric_title(metric: str) -> str:
    return f"{metric_name(metric)} {'↑' if higher_is_better(metric) else '↓'}"


def quality_table(df: pd.DataFrame, settings: stats.Settings = stats.Settings()) -> pd.DataFrame:
    """Arm x scope x metric at weight 1: mean [interval] over training runs, with n."""
    labels = arm_labels(df)
    parts = [stats.summarize(df, metric, 1.0, settings=settings) for metric in quality_metrics(df)]
    s = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else pd.DataFrame()
    if s.empty:
        return s
    rows = {}
    for r in s.itertuples():
        key = (label_of(labels, r.model, r.method, r.config, r.sweep), r.scope)
        row = rows.setdefault(key, {"concepts": r.n_concepts, "runs": r.n_runs})
        row[metric_title(r.metric)] = format_ci(r.mean, r.low, r.high)
    order = sorted(rows, key=lambda k: (stats.SCOPES.index(k[1]), method_rank(k[0])))
    return pd.DataFrame([rows[k] for k in order], index=pd.MultiIndex.from_tuples(order, names=["method", "scope"]))


def blank_table(df: pd.DataFrame) -> pd.DataFrame:
    """Arm x weight: blank (degenerate) images as 'count / images', over every prompt, seed and run."""
    b = df[(df.metric == "blank") & (df.status == "ok")]
    if b.empty:
        return b
    labels = arm_labels(df)
    rows: dict[str, dict[str, str]] = {}
    for (*arm, weight), g in b.groupby([*stats.ARM, "weight"], dropna=False, sort=True):
        rows.setdefault(label_of(labels, *arm), {})[f"weight {weight:g}"] = f"{int(g.value.sum())} / {len(g)}"
    order = sorted(rows, key=method_rank)
    return pd.DataFrame([rows[k] for k in order], index=pd.Index(order, name="method"))


def validity_table(df: pd.DataFrame, settings: stats.Settings = stats.Settings()) -> tuple[str, pd.DataFrame]:
    """(caption, table): each proxy metric's rank agreement with the oracle's presence rate."""
    t = validity.agreement(df, settings)
    if t.empty:
        return "", t
    table = pd.DataFrame({
        "metric": [metric_title(m) for m in t.metric],
        "Spearman rho with presence": [format_ci(r.rho, r.low, r.high) for r in t.itertuples()],
        "rho within concept (mean)": [format_ci(r.rho_within, r.within_low, r.within_high) for r in t.itertuples()],
        "cells": t.cells, "concepts": t.concepts,
        "agrees with ground truth": ["yes" if a else "no" for a in t.agrees],
    }).set_index("metric")
    bad = [metric_title(m) for m, a in zip(t.metric, t.agrees) if not a]
    caption = (f"Rank agreement of each proxy metric with the oracle's presence rate (ground truth: is the concept's shape or fill drawn?) over "
               f"every (method, concept, weight) cell; FD and CMMD are negated so that agreement is positive. Interval: concepts resampled. "
               f"A metric agrees when rho >= {validity.AGREES} and its interval excludes 0. "
               + (f"Not agreeing here: {', '.join(bad)}; read them as similarity, not as evidence the concept is drawn." if bad else "Every proxy agrees here."))
    return caption, table


def per_concept_table(df: pd.DataFrame, metric: str, settings: stats.Settings = stats.Settings()) -> pd.DataFrame:
    """Concept x method: `metric` at weight 0 and 1, mean over that concept's training runs [interval]."""
    labels = arm_labels(df)
    rows = {}
    for weight in (0.0, 1.0):
        units = stats.unit_values(df, metric, weight)
        for (concept, kind, *arm), g in units.groupby(["concept", "kind", *stats.ARM], dropna=False, sort=True):
            label = label_of(labels, *arm)
            row = rows.setdefault((concept, kind), {})
            row[f"{label} @{weight:g}"] = format_ci(*stats.hierarchical_bootstrap([g.value.to_numpy()], settings))
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.names = ["concept", "kind"]
    order = sorted(table.columns, key=lambda c: (method_rank(c.rsplit(" @", 1)[0]), c.rsplit(" @", 1)[1]))
    return table[order]


def paired_table(df: pd.DataFrame, metric: str, settings: stats.Settings = stats.Settings()) -> pd.DataFrame:
    """Every two arms on the runs they share, at weight 1: difference a - b [interval], a's win rate, p."""
    p = stats.paired(df, metric, 1.0, settings=settings)
    if p.empty:
        return p
    labels = arm_labels(df)
    rows = []
    for r in p.itertuples():
        rows.append({
            "scope": r.scope,
            "a": label_of(labels, r.model, r.method_a, r.config_a, r.sweep),
            "b": label_of(labels, r.model, r.method_b, r.config_b, r.sweep),
            "pairs": r.n_pairs,
            f"a − b ({metric_name(metric)})": format_ci(r.diff, r.low, r.high),
            "a wins": f"{100 * r.a_wins:.0f} %",
            "Wilcoxon p": "" if not np.isfinite(r.p_wilcoxon) else f"{r.p_wilcoxon:.3f}",
            "verdict": f"{r.better} better" if r.resolved else ("too few pairs" if r.better == "too few pairs" else "not resolved"),
        })
    return pd.DataFrame(rows).set_index(["scope", "a", "b"])


def ranking_table(df: pd.DataFrame, metric: str, settings: stats.Settings = stats.Settings()) -> pd.DataFrame:
    summary = stats.summarize(df, metric, 1.0, settings=settings)
    if summary.empty:
        return summary
    r = stats.ranking(summary, stats.paired(df, metric, 1.0, settings=settings), metric)
    labels = arm_labels(df)
    r["method"] = [label_of(labels, x.model, x.method, x.config, x.sweep) for x in r.itertuples()]
    r[metric_title(metric)] = [format_ci(x.mean, x.low, x.high) for x in r.itertuples()]
    r = r.rename(columns={"vs_next": "vs. next rank", "beats_resolved": "resolved wins", "n_runs": "runs"})
    return r.set_index(["scope", "rank"])[["method", metric_title(metric), "runs", "vs. next rank", "resolved wins"]]


def best_weight_table(df: pd.DataFrame, fidelity: str, settings: stats.Settings = stats.Settings()) -> pd.DataFrame:
    """Each arm's best weight, chosen on the selection seeds, and its quality on the report seeds."""
    best = stats.best_weights(df, fidelity)
    if best.empty:
        return best
    labels = arm_labels(df)

    def arm(r) -> tuple:
        return tuple(str(getattr(r, k)) for k in stats.ARM)

    at_best = {}  # (metric, arm) -> (mean, low, high) over the report seeds (stats.at_best_weight)
    for metric in dict.fromkeys((fidelity, "clip_i", "clip_t", "drift")):
        s = stats.at_best_weight(df, metric, best, settings)
        for r in (s[s.scope == "overall"].itertuples() if len(s) else []):
            at_best[(metric, arm(r))] = (r.mean, r.low, r.high)
    rows = []
    for b in best.itertuples():
        row = {"method": label_of(labels, b.model, b.method, b.config, b.sweep), "best weight": f"{b.best_weight:g}",
               "chosen on seeds": ", ".join(map(str, b.selected_on)), "reported on seeds": ", ".join(map(str, b.reported_on))}
        for metric in dict.fromkeys((fidelity, "clip_i", "clip_t", "drift")):
            if (metric, arm(b)) in at_best:
                row[metric_title(metric)] = format_ci(*at_best[(metric, arm(b))])
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def write_table(table: pd.DataFrame, out: Path, name: str, caption: str) -> dict[str, Path]:
    """Markdown, CSV and LaTeX versions of one table."""
    paths = {"md": out / f"{name}.md", "csv": out / f"{name}.csv", "tex": out / f"{name}.tex"}
    flat = table.reset_index() if any(n is not None for n in table.index.names) else table
    atomic_write_text(paths["md"], f"{caption}\n\n{flat.to_markdown(index=False)}\n")
    atomic_write_text(paths["csv"], table.to_csv())
    # pandas escapes the cells but not the caption ('95 %' would comment out the rest of the line and
    # leave \caption{ open); Unicode arrows and minus signs do not compile under pdflatex.
    latex = table.to_latex(escape=True, caption=latex_text(caption), label=f"tab:{name}")
    for symbol, tex in LATEX_SYMBOLS.items():
        latex = latex.replace(symbol, tex)
    atomic_write_text(paths["tex"], latex)
    return paths


# ------------------------------------------------------------------------------------------- figures


def arm_means(df: pd.DataFrame, metric: str) -> dict[str, float]:
    """Label -> mean over runs of a run-level metric (cost)."""
    labels = arm_labels(df.assign(sweep=None))
    rows = cost_rows(df)
    rows = rows[rows.metric == metric]
    out = {label_of(labels, *k): g.groupby("concept").value.mean().mean() for k, g in rows.groupby(["model", "method", "config"])}
    return dict(sorted(out.items(), key=lambda kv: method_rank(kv[0])))


def cost_figure(df: pd.DataFrame, out: Path) -> Path | None:
    if cost_rows(df).empty:
        return None
    panels = [("artifact_bytes", "file size (bytes, log)", True), ("peak_mem", "training memory (MiB, tensors)", False), ("train_time", "train time (s)", False), ("trainable_params", "trainable parameters (log)", True)]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6), layout="constrained")  # the title clear of the panels' titles
    for ax, (metric, title, log_scale) in zip(axes, panels):
        means = arm_means(df, metric)
        col = colours(list(means))
        ax.bar(range(len(means)), list(means.values()), color=[col[m] for m in means])
        ax.set_xticks(range(len(means)), [m.replace("_", "\n") for m in means], fontsize=8)
        ax.set_title(title, fontsize=10)
        if log_scale:
            ax.set_yscale("log")
    fig.suptitle("Training cost per method: mean over training runs (same data, steps, batch and seeds)")
    return save_figure(fig, out, "cost")


def curves_figure(df: pd.DataFrame, out: Path, settings: stats.Settings = stats.Settings()) -> Path | None:
    known = quality_metrics(df)
    metrics = [m for m in known if m != "diversity"]
    if not metrics:
        return None
    labels = arm_labels(df)
    col = colours(sorted(set(labels.values()), key=method_rank))
    weights = sorted(stats.quality_rows(df).weight.unique())
    # At most four panels a row: one row of seven shrinks every label to unreadable in a report's width.
    cols = min(4, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.3 * rows + 0.4), squeeze=False, layout="constrained")
    for ax, metric in zip(axes.flat, metrics):
        curves: dict[str, list] = {}
        for w in weights:
            for r in stats.summarize(df, metric, float(w), settings=settings).itertuples():
                if r.scope == "overall":
                    curves.setdefault(label_of(labels, r.model, r.method, r.config, r.sweep), []).append((w, r.mean, r.low, r.high))
        for label in sorted(curves, key=method_rank):
            w, mean, lo, hi = map(np.array, zip(*curves[label]))
            ax.plot(w, mean, "o-", color=col[label], label=label, ms=3)
            if np.isfinite(lo).all():
                ax.fill_between(w, lo, hi, color=col[label], alpha=0.2)
        ax.axvline(0, color="grey", lw=0.8, ls=":")
        ax.set_title(metric_title(metric), fontsize=10)
        ax.set_xlabel("adapter weight")
    spare = list(axes.flat[len(metrics):])
    for ax in spare[1:]:
        ax.remove()
    if spare:  # the legend in an empty cell, off the data
        spare[0].axis("off")
        spare[0].legend(*axes.flat[0].get_legend_handles_labels(), loc="center", fontsize=9)
    else:
        axes.flat[0].legend(fontsize=8)
    fig.suptitle("Metrics against adapter weight: mean over training runs, bands 95 % hierarchical bootstrap")
    return save_figure(fig, out, "curves")


def tradeoff_figure(df: pd.DataFrame, out: Path) -> Path | None:
    q = stats.quality_rows(df)
    if not ((q.metric == "clip_t").any() and (q.metric == "clip_i").any()):
        return None
    labels = arm_labels(df)
    col = colours(sorted(set(labels.values()), key=method_rank))
    fig, ax = plt.subplots(figsize=(6, 4.6))
    for arm, g in q.groupby(stats.ARM, dropna=False):
        label = label_of(labels, *arm)
        per = {m: g[g.metric == m].groupby(["weight", "concept", "train_seed"]).value.mean().groupby(["weight", "concept"]).mean().groupby("weight").mean() for m in ("clip_t", "clip_i")}
        w = per["clip_t"].index.intersection(per["clip_i"].index)
        tm, im = per["clip_t"][w], per["clip_i"][w]
        ax.plot(tm, im, "-", color=col[label], alpha=0.7, label=label)
        ax.scatter(tm, im, color=col[label], s=14 + 30 * np.clip(np.abs(w.to_numpy()), 0, 1.5))
        for weight in (w.min(), 1.0, w.max()):
            if weight in w:
                ax.annotate(f"{weight:g}", (tm[weight], im[weight]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("CLIP-T: text alignment (higher is better)")
    ax.set_ylabel("CLIP-I: subject fidelity (higher is better)")
    ax.set_title("Fidelity vs text alignment along each method's weight path\n(numbers: weight; mean over training runs)", fontsize=10)
    ax.legend(fontsize=8)
    return save_figure(fig, out, "tradeoff")


FRONTIER_COSTS = [("artifact_bytes", "file size (log)", True), ("peak_mem", "training memory (MiB)", False), ("train_time", "train time (s)", False)]


def frontier_figure(df: pd.DataFrame, fidelity: str, out: Path, settings: stats.Settings = stats.Settings()) -> Path | None:
    """Quality at weight 1 (mean, 95 % interval) against each cost, one point per method config; the
    methods no other beats on both (cheaper or as cheap, and better or as good) are ringed and joined."""
    summary = stats.summarize(df, fidelity, 1.0, settings=settings)
    if summary.empty or cost_rows(df).empty:
        return None
    summary = summary[summary.scope == "overall"]
    labels = arm_labels(df.assign(sweep=None))
    higher = higher_is_better(fidelity)
    fig, axes = plt.subplots(1, len(FRONTIER_COSTS), figsize=(4.6 * len(FRONTIER_COSTS), 4.2), squeeze=False, layout="constrained")
    arms = sorted({(r.model, r.method, r.config) for r in summary.itertuples()}, key=lambda a: method_rank(label_of(labels, *a)))
    col = colours([label_of(labels, *a) for a in arms])
    for ax, (metric, title, log_scale) in zip(axes[0], FRONTIER_COSTS):
        costs = arm_means(df, metric)  # per label: mean over concepts of the mean over training runs, as the cost figure
        points = []
        for arm in arms:
            q = summary[(summary.model == arm[0]) & (summary.method == arm[1]) & (summary.config == arm[2])]
            if label_of(labels, *arm) not in costs or q.empty:
                continue
            points.append((arm, costs[label_of(labels, *arm)], *q[["mean", "low", "high"]].iloc[0].to_numpy(dtype=float)))
        if not points:
            continue
        best = pareto([(cost, mean if higher else -mean) for _, cost, mean, _, _ in points])
        for (arm, cost, mean, lo, hi), on_front in zip(points, best):
            label = label_of(labels, *arm)
            ax.errorbar([cost], [mean], yerr=[[mean - lo], [hi - mean]] if np.isfinite([lo, hi]).all() else None, fmt="o", color=col[label], capsize=3, label=label)
            if on_front:
                ax.scatter([cost], [mean], s=220, facecolors="none", edgecolors="black", linewidths=1.2)
        # A family (one method at several configs, e.g. a rank sweep) is joined by a thin line of its colour.
        for method in {arm[1] for arm, *_ in points}:
            family = sorted((cost, mean, arm) for arm, cost, mean, _, _ in points if arm[1] == method)
            if len(family) > 1:
                first = min((label_of(labels, *f[2]) for f in family), key=method_rank)
                ax.plot([f[0] for f in family], [f[1] for f in family], "-", lw=0.8, alpha=0.6, color=col[first])
        front = sorted((cost, mean) for (_, cost, mean, _, _), on in zip(points, best) if on)
        if len(front) > 1:
            ax.step(*zip(*front), where="post", color="black", lw=0.8, ls="--")
        ax.set_xlabel(title)
        if log_scale:
            ax.set_xscale("log")
            # Ticks read as sizes (62 KB, 1 MB): each power of ten, and 2x and 5x too when the costs span under
            # two decades (else one label may be all there is); more ticks than that collide.
            span = math.log10(max(p[1] for p in points) / min(p[1] for p in points))
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0) if span < 2 else (1.0,)))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: human_bytes(v)))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0][0].set_ylabel(f"{metric_name(fidelity)} at weight 1 ({'higher' if higher else 'lower'} is better)", fontsize=9)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Cost against quality: mean over training runs, bars 95 % interval; ringed: not beaten on both by any other method (Pareto front)", fontsize=10)
    return save_figure(fig, out, "frontier")


def xy_grids(df: pd.DataFrame, results_dirs: list[Path], out: Path, texts: dict | None = None) -> list[Path]:
    """Per concept and prompt: methods x weights for the first training seed and generation seed
    (`texts`: (concept, prompt id) -> prompt text, for the titles)."""
    q = stats.quality_rows(df)
    q = q[q.metric == "clip_i"]
    labels = arm_labels(df)
    paths = []
    for (concept, pid), sub in q.groupby(["concept", "prompt_id"], sort=True):
        arms = sorted({tuple(a) for a in sub[stats.ARM].itertuples(index=False)}, key=lambda a: method_rank(label_of(labels, *a)))
        weights = sorted(sub.weight.unique())
        train_seed, seed = int(sub.train_seed.min()), int(sub.seed.min())
        fig, axes = plt.subplots(len(arms), len(weights), figsize=(1.2 * len(weights) + 1.4, 1.25 * len(arms) + 0.7), squeeze=False)
        for r, arm in enumerate(arms):
            runs = sub[(sub[stats.ARM] == pd.Series(arm, index=stats.ARM)).all(axis=1) & (sub.train_seed == train_seed)].run_id.unique()
            for c, w in enumerate(weights):
                ax = axes[r][c]
                ax.set_xticks([])
                ax.set_yticks([])
                found = [f for d in results_dirs for rid in runs for f in [stages.image_file(d, rid, arm[3], pid, seed, w)] if f.is_file()]
                if found:
                    ax.imshow(Image.open(found[0]), interpolation="nearest")
                if r == 0:
                    ax.set_title(f"w={w:g}", fontsize=8)
                if c == 0:
                    ax.set_ylabel(label_of(labels, *arm).replace("_", "\n"), fontsize=8)
        prompt = f"'{texts[(concept, pid)]}'" if texts and (concept, pid) in texts else pid.replace("_", " ")
        fig.suptitle(f"{concept}, {prompt}: methods x weights (training seed {train_seed}, generation seed {seed})", fontsize=9)
        paths.append(save_figure(fig, out, f"grid_{concept}_{pid}"))
    return paths


def infographic(df: pd.DataFrame, fidelity: str, grid: Path | None, out: Path, settings: stats.Settings = stats.Settings()) -> Path | None:
    if cost_rows(df).empty:
        return None
    fig = plt.figure(figsize=(11, 8.5))
    fig.suptitle("adapterbench: DreamBooth vs Textual Inversion vs LoRA vs hypernetworks, measured", fontsize=13, weight="bold")
    ax = fig.add_axes([0.03, 0.62, 0.94, 0.28])
    ax.axis("off")
    labels = arm_labels(df)
    q = {m: stats.summarize(df, m, 1.0, settings=settings) for m in (fidelity, "clip_t", "drift")}
    cost = {m: arm_means(df, m) for m in ("artifact_bytes", "peak_mem", "train_time")}
    headline = []
    for label in sorted(cost["train_time"], key=method_rank):
        cells = [label, human_bytes(cost["artifact_bytes"].get(label, np.nan)), f"{cost['peak_mem'].get(label, np.nan):,.0f}", f"{cost['train_time'].get(label, np.nan):.1f}"]
        for m, s in q.items():
            s = s[(s.scope == "overall")] if len(s) else s
            hit = [r for r in s.itertuples() if label_of(labels, r.model, r.method, r.config, r.sweep) == label]
            cells.append(format_ci(hit[0].mean, hit[0].low, hit[0].high, "{:.2f}") if hit else "")
        headline.append(cells)
    table = ax.table(cellText=headline, colLabels=["method", "file", "train MiB", "train s", f"{metric_name(fidelity).removesuffix(' (oracle)')}@1 [95% CI]", "CLIP-T@1", "drift@1"], loc="upper center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.6)
    if grid is not None:
        ax2 = fig.add_axes([0.05, 0.02, 0.9, 0.6])
        ax2.imshow(Image.open(grid))
        ax2.axis("off")
    return save_figure(fig, out, "infographic")


def learning_rates_table(df: pd.DataFrame, results_dirs: list[Path]) -> tuple[str, pd.DataFrame]:
    """Each arm's learning rate (from its runs' run.json) beside the one `mode=tune` chose, if any."""
    import json

    from bench.paths import TUNING_JSON

    tuned = json.loads(TUNING_JSON.read_text()) if TUNING_JSON.is_file() else None
    labels = arm_labels(df.assign(sweep=None))
    rows = []
    for (model, method, config), g in cost_rows(df).groupby(["model", "method", "config"], dropna=False):
        meta = next((Path(d) / "train" / rid / "run.json" for d in results_dirs for rid in g.run_id.dropna().unique() if (Path(d) / "train" / rid / "run.json").is_file()), None)
        if meta is None:
            continue
        lr = json.loads(meta.read_text())["config"]["method"][method].get("lr")
        chosen = (tuned or {}).get("chosen", {}).get(method)
        rows.append({"method": label_of(labels, model, method, config), "lr used": lr, "lr chosen by mode=tune": chosen if chosen is not None else "",
                     "source": "tuned default" if chosen is not None and lr is not None and math.isclose(float(lr), float(chosen)) else "set in the config, not the tuned default"})
    caption = ("Learning rates: the shipped defaults were chosen by `python run.py mode=tune` "
               + (f"on {', '.join(tuned['concepts'])} (not in the evaluation suite), training seeds {tuned['seeds']}, grid {tuned['factors']} x "
                  + (f"a fixed centre per method ({', '.join(f'{m} {v:g}' for m, v in tuned['centers'].items())})" if tuned.get("centers") else "the previous rate")
                  + f", as the highest {tuned['objective']} at weight 1 with drift at weight 1 <= {tuned['max_drift']} ({tuned['date']}; results/benchmarks/tuning.md)."
                  + "".join(f" {m}'s {k} was tuned with its rate ({', '.join(map(str, v))})." for m, keys in tuned.get("options", {}).items() for k, v in keys.items())
                  if tuned else "(no tuning record found).")
               + " Other hyper-parameters are each method's configured defaults.")
    return caption, pd.DataFrame(rows).set_index("method") if rows else pd.DataFrame()


# ------------------------------------------------------------------------------------------- provenance


def run_records(results_dirs: list[Path]) -> list[dict]:
    """Every training run's run.json (resolved config, commit, packages, hardware, date)."""
    out = []
    for d in results_dirs:
        for f in sorted(Path(d).glob("train/*/run.json")):
            try:
                out.append(json.loads(f.read_text()))
            except (OSError, json.JSONDecodeError) as e:
                log.warning("skipping unreadable %s: %s", f, e)
    return out


def _distinct(values) -> str:
    seen = list(dict.fromkeys(str(v) for v in values if v is not None))
    return "; ".join(seen) if seen else "unknown"


def provenance_table(df: pd.DataFrame, runs: list[dict]) -> pd.DataFrame:
    """What the numbers were made with, and how many of everything: one row per fact."""
    q = stats.quality_rows(df)
    dates = sorted(r["date"] for r in runs if r.get("date"))
    hw = [r.get("hardware", {}) for r in runs]
    rows = {
        "date (first - last training run)": f"{dates[0][:16].replace('T', ' ')} - {dates[-1][:16].replace('T', ' ')} UTC" if dates else "unknown",
        "git commit": _distinct(r.get("git_commit") for r in runs),
        "python": _distinct(r.get("python") for r in runs),
    }
    for name in provenance.PACKAGES:
        rows[name] = _distinct(r.get("packages", {}).get(name) for r in runs)
    rows.update({
        "CPU": _distinct(h.get("cpu") for h in hw),
        "GPU": _distinct(h.get("gpu") or "none" for h in hw),
        "device": _distinct(h.get("device") for h in hw),
        "usable cores / torch threads per process": _distinct(f"{h.get('usable_cores')} / {h.get('torch_threads')}" for h in hw),
        "model": _distinct(df.model.dropna()),
        "concepts": f"{df.concept.nunique()}: " + ", ".join(f"{c} ({k})" for c, k in df[["concept", "kind"]].dropna().drop_duplicates().itertuples(index=False)),
        "training seeds per concept": ", ".join(str(int(x)) for x in sorted(df.train_seed.dropna().unique())),
        "generation seeds per run": ", ".join(str(int(x)) for x in sorted(q.seed.dropna().unique())),
        "adapter weights": ", ".join(f"{float(x):g}" for x in sorted(q.weight.dropna().unique())),
        "training runs": str(df.run_id.nunique()),
    })
    return pd.DataFrame({"value": rows}).rename_axis("item")


def resolved_config_html(runs: list[dict]) -> str:
    """The resolved config of the comparison (the first run's; the runs differ only in method and seed)."""
    if not runs:
        return ""
    import yaml

    text = yaml.safe_dump(runs[0].get("config", {}), sort_keys=False, default_flow_style=None, width=110)
    return f"<details><summary>Resolved config (as run; `run.json` of each training run has its own)</summary><pre>{html.escape(text)}</pre></details>"


def definitions_table(df: pd.DataFrame, runs: list[dict]) -> pd.DataFrame:
    """One line per method (what weight w does) and per metric (unit, direction, definition)."""
    from hydra.utils import get_class


    rows = []
    configs = {}
    for r in runs:
        for name, mcfg in r.get("config", {}).get("method", {}).items():
            if isinstance(mcfg, dict) and mcfg.get("_target_"):
                configs.setdefault(name, mcfg)
    for name in ordered(df.method.dropna().unique()):
        try:
            meaning = get_class(configs[name]["_target_"]).weight_meaning_for(configs[name])
        except Exception:  # a method class that moved since the run: say so rather than fail the report
            meaning = "(definition unavailable: method class not importable)"
        rows.append({"kind": "method", "name": name, "unit": "weight w", "direction": "", "definition": meaning})
    for metric in quality_metrics(df):
        info = metric_info(metric)
        note = {"cmmd": "; an unbiased estimate, so slightly negative values mean 'indistinguishable'",
                "drift": "; 0 by construction for a method that leaves the UNet untouched (Textual Inversion)"}.get(metric, "")
        rows.append({"kind": "metric", "name": metric_name(metric), "unit": info.unit,
                     "direction": "higher is better" if higher_is_better(metric) else "lower is better", "definition": info.description + note})
    return pd.DataFrame(rows).set_index(["kind", "name"])


def prompts_table(df: pd.DataFrame, results_dirs: list[Path]) -> pd.DataFrame:
    """Concept x prompt id -> the prompt text the sweep used (from the image manifests)."""
    texts: dict[tuple[str, str], str] = {}
    runs = df[["run_id", "concept", "sweep"]].dropna().drop_duplicates()
    for concept, g in runs.groupby("concept"):
        for r in g.itertuples():
            manifest = next((f for d in results_dirs for f in [stages.images_dir(d, r.run_id, r.sweep) / "images.json"] if f.is_file()), None)
            prompts = json.loads(manifest.read_text()).get("prompts") if manifest else None
            if prompts:
                for pid, text in prompts.items():
                    texts[(concept, pid)] = text
                break
    if not texts:
        return pd.DataFrame()
    return pd.DataFrame([{"concept": c, "prompt": pid, "text": t} for (c, pid), t in sorted(texts.items())]).set_index(["concept", "prompt"])


def instance_figure(df: pd.DataFrame, results_dirs: list[Path], out: Path, per_concept: int = 8) -> Path | None:
    """A row of training images per concept: what every method was asked to learn."""
    folders = {}
    for concept in sorted(df.concept.dropna().unique()):
        found = sorted(f for d in results_dirs for f in (Path(d) / "images" / "instance").glob(f"{concept}-*") if f.is_dir())
        if found:
            folders[concept] = sorted(found[0].glob("*.png"))[:per_concept]
    if not folders:
        return None
    cols = max(len(v) for v in folders.values())
    fig, axes = plt.subplots(len(folders), cols, figsize=(1.1 * cols + 1.6, 1.15 * len(folders) + 0.5), squeeze=False)
    for r, (concept, files) in enumerate(folders.items()):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(files):
                ax.imshow(Image.open(files[c]), interpolation="nearest")
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(concept, fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle("Instance images: what every method trained on (the same images for all of them)", fontsize=10)
    return save_figure(fig, out, "instance_images")


def loss_figure(df: pd.DataFrame, out: Path, smooth: int = 10) -> Path | None:
    """Training loss against step per method: the mean over training runs of a running mean."""
    loss = df[(df.metric == "train_loss") & df.step.notna() & (df.status == "ok")]
    if loss.empty:
        return None
    labels = arm_labels(loss.assign(sweep=None))
    col = colours(sorted(set(labels.values()), key=method_rank))
    fig, ax = plt.subplots(figsize=(7, 4))
    for (model, method, config), g in loss.groupby(["model", "method", "config"], dropna=False):
        label = label_of(labels, model, method, config)
        per_run = g.pivot_table(index="step", columns="run_id", values="value").sort_index()
        smoothed = per_run.rolling(smooth, min_periods=1).mean()
        mean = smoothed.mean(axis=1)
        ax.plot(mean.index, mean.to_numpy(), color=col[label], label=f"{label} ({per_run.shape[1]} runs)")
        ax.fill_between(mean.index, smoothed.min(axis=1), smoothed.max(axis=1), color=col[label], alpha=0.15)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"denoising loss (running mean of {smooth} steps)")
    ax.set_yscale("log")
    ax.set_title("Training loss: mean over training runs, band from lowest to highest run", fontsize=10)
    ax.legend(fontsize=8)
    return save_figure(fig, out, "loss")


# ------------------------------------------------------------------------------------------- learning curves

CURVE_METRICS = ("presence", "clip_i", "drift")


def curve_steps(full: pd.DataFrame) -> pd.DataFrame:
    """The sweep rows at weight 1 of every step a run was scored at: its checkpoints' rows (`step` set)
    and its final artifact's, given the run's last step (its loss rows count the steps it trained)."""
    last = full[full.metric == "train_loss"].groupby("run_id").step.max() + 1
    q = full[full.weight.notna() & np.isclose(full.weight.fillna(-9).astype(float), 1.0) & (full.status.fillna("ok") == "ok") & full.metric.isin(CURVE_METRICS)]
    q = q[q.run_id.isin(last.index)].copy()
    q["step"] = q.step.fillna(q.run_id.map(last)).astype("Int64")
    return q


def learning_curves(full: pd.DataFrame, settings: stats.Settings = stats.Settings()) -> pd.DataFrame:
    """Per arm, metric and training step: mean at weight 1 over training runs with its 95 % hierarchical
    bootstrap interval. Empty unless some run saved checkpoints (`train.checkpoints`)."""
    if not records.checkpoint_rows(full).any():
        return pd.DataFrame()
    q = curve_steps(full)
    out = []
    for step, g in q.groupby("step"):
        # A step's rows as a table of their own (step cleared), summarised like any sweep at weight 1.
        for metric in CURVE_METRICS:
            s = stats.summarize(g.assign(step=pd.NA), metric, 1.0, settings=settings)
            out += [{**r, "step": int(step)} for r in s[s.scope == "overall"].to_dict("records")]
    return pd.DataFrame(out)


def learning_curve_table(full: pd.DataFrame, settings: stats.Settings = stats.Settings()) -> tuple[str, pd.DataFrame]:
    """The curve as a table, and per arm whether the budget's last stretch still moved presence: the
    paired difference, run by run, between the final artifact and the checkpoint before it."""
    curves = learning_curves(full, settings)
    if curves.empty:
        return "", pd.DataFrame()
    labels = arm_labels(full)
    q = curve_steps(full)
    rows = []
    for (model, method, config, sweep), g in curves.groupby(stats.ARM, dropna=False, sort=False):
        label = label_of(labels, model, method, config, sweep)
        steps = sorted(g.step.unique())
        row = {"method": label}
        for step in steps:
            for metric in CURVE_METRICS:
                r = g[(g.step == step) & (g.metric == metric)]
                if len(r):
                    row[f"{metric_title(metric)} @ step {step}"] = format_ci(r["mean"].iloc[0], r.low.iloc[0], r.high.iloc[0])
        if len(steps) >= 2 and "presence" in set(g.metric):
            arm = q[(q.model == model) & (q.method == method) & (q.config == config) & (q.metric == "presence")]
            per_run = arm.groupby(["run_id", "step"]).value.mean().unstack()
            if steps[-2] in per_run.columns and steps[-1] in per_run.columns:
                gains = (per_run[steps[-1]] - per_run[steps[-2]]).dropna().to_numpy()
                mean, lo, hi = stats.t_interval(gains)
                row[f"presence gain, step {steps[-2]} -> {steps[-1]}"] = format_ci(mean, lo, hi)
                row["last stretch"] = ("still rising" if lo > 0 else "falling" if hi < 0 else "levelled off" if np.isfinite(lo) else "one run")
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("method", key=lambda m: m.map(method_rank), kind="stable")
    caption = ("Learning curves: presence, CLIP-I and drift at weight 1 of the artifact each training run saved part-way through its budget "
               "(train.checkpoints) and at its end, mean over training runs [95 % hierarchical bootstrap]. The same training, not retrained. "
               "Last stretch: the paired change in presence, run by run, from the last checkpoint to the final artifact [95 % t-interval]: "
               "'still rising' when the interval is above 0 (the compared budget stops a method that was still learning), "
               "'levelled off' when it includes 0, 'falling' when below.")
    return caption, table


def learning_curve_figure(full: pd.DataFrame, out: Path, settings: stats.Settings = stats.Settings()) -> Path | None:
    curves = learning_curves(full, settings)
    if curves.empty:
        return None
    labels = arm_labels(full)
    col = colours(sorted(set(labels.values()), key=method_rank))
    metrics = [m for m in CURVE_METRICS if (curves.metric == m).any()]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.8 * len(metrics), 3.4), squeeze=False, layout="constrained")
    for ax, metric in zip(axes[0], metrics):
        c = curves[curves.metric == metric]
        for (model, method, config, sweep), g in c.groupby(stats.ARM, dropna=False, sort=False):
            label = label_of(labels, model, method, config, sweep)
            g = g.sort_values("step")
            ax.plot(g.step, g["mean"], "o-", ms=3, color=col[label], label=label)
            if np.isfinite(g.low).all():
                ax.fill_between(g.step, g.low, g.high, color=col[label], alpha=0.15)
        ax.set_xscale("log", base=2)
        ticks = sorted(c.step.unique())
        ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel("training step")
        ax.set_title(f"{metric_title(metric)} at weight 1", fontsize=10)
        if metric == "presence":
            ax.set_ylim(-0.03, 1.03)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Learning curves: each run's checkpoints and final artifact, mean over training runs, bands 95 % hierarchical bootstrap", fontsize=9)
    return save_figure(fig, out, "learning_curves")


# ------------------------------------------------------------------------------------------- HTML


def embed_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def failures(df: pd.DataFrame) -> pd.DataFrame:
    f = df[df.status.fillna("ok").str.startswith("failed")]
    if f.empty:
        return f
    return f.assign(stage=f.metric.str.replace("_failed", ""), error=f.status.str.replace("failed: ", "", n=1))[["method", "concept", "train_seed", "stage", "error"]].drop_duplicates().set_index(["method", "concept", "train_seed"])


# After load, the page records how many of its images decoded (read by the headless-browser test).
DECODE_PROBE = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
                "document.body.dataset.decoded=i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length;});</script>")


def html_report(title: str, intro: str, tables: dict[str, tuple[str, pd.DataFrame]], figures: list[tuple[Path, str]], out_file: Path,
                extra: dict[str, str] | None = None) -> Path:
    """One self-contained page: tables (with captions), raw HTML blocks placed after the table of the
    same heading (`extra`), then figures with captions; images are embedded."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "th{background:#f0f0f0}img{max-width:100%;margin:1em 0}.failed td{color:#a00}pre{font-size:12px;background:#f7f7f7;padding:8px}"
             "td:last-child{text-align:left}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>"]
    for heading, (caption, table) in tables.items():
        cls = " class='failed'" if heading.startswith("Failed") else ""
        parts.append(f"<h2>{html.escape(heading)}</h2><p>{html.escape(caption)}</p><div{cls}>{table.to_html(escape=True)}</div>")
        parts.append((extra or {}).get(heading, ""))
    parts.append("<h2>Figures</h2>")
    for fig, caption in figures:
        parts.append(f"<figure><img alt='{html.escape(caption)}' src='{embed_png(fig)}'><figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append(DECODE_PROBE + "</body></html>")
    atomic_write_text(out_file, "\n".join(parts))
    return out_file


def build_report(results_dirs: list[Path], out: Path | None = None, fidelity: str = "auto", settings: stats.Settings = stats.Settings()) -> Path:
    """Everything from the tables of one or more results directories; returns the HTML file."""
    results_dirs = [Path(d) for d in results_dirs]
    out = Path(out) if out else results_dirs[0] / "report"
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    full = records.read_table(*results_dirs, checkpoints=True)  # with the learning curves' checkpoint rows
    df = records.final_rows(full)
    if df.empty:
        raise ValueError(f"no result rows under {', '.join(map(str, results_dirs))}")
    stats.check_replicates(df)
    q = stats.quality_rows(df)
    fidelity = validity.headline(df, fidelity)
    n_concepts, n_train = df.concept.nunique(), df.train_seed.nunique()
    intro = (f"{n_concepts} concept(s) ({', '.join(sorted(df.concept.dropna().unique()))}), {n_train} training seed(s), "
             f"{q.seed.nunique()} generation seed(s) per run. The unit of analysis is the training run (concept x training seed); "
             "generation seeds are averaged inside a run. Intervals: 95 % hierarchical bootstrap (concepts, then training seeds). "
             "Rows of different configs (model, training settings or method hyper-parameters; what differs is named where a method has several) are never averaged together.")
    tables: dict[str, tuple[str, pd.DataFrame]] = {}
    runs = run_records(results_dirs)
    df.attrs["config_descriptions"] = config_descriptions(runs)  # labels say 'lora rank=16', not a hash
    if not (df.metric == validity.GROUND_TRUTH).any():
        intro += (" No concept-presence oracle judged these images (it knows only the micro world's concepts): the fidelity metrics below are "
                  "similarities, validated against ground truth only in the micro world (results/benchmarks/metric_validity.md).")

    def add(heading: str, name: str, caption: str, table: pd.DataFrame) -> None:
        if len(table):
            write_table(table, out / "tables", name, caption)
            tables[heading] = (caption, table)

    add("About these numbers", "provenance", "What produced this report: code, packages, hardware, date, and how many concepts, runs and seeds "
        "stand behind every number.", provenance_table(df, runs))
    add("Definitions", "definitions", "What adapter weight w does in each method, and each metric's unit, direction and definition.", definitions_table(df, runs))
    prompt_texts = prompts_table(df, results_dirs)
    add("Prompts", "prompts", "The sweep's prompts as written (Textual Inversion reads its placeholder where the token is).", prompt_texts)
    add("Failed runs", "failed", "Runs or stages that failed, with their error; their method has fewer runs in the tables below.", failures(df))
    add("Cost", "cost", "Cost of training under identical conditions: mean over training runs [95 % interval]. Training memory is the run's own peak "
        "(CUDA: max_memory_allocated; CPU: peak of live tensors, model weights included); the process peak RSS is beside it. "
        "Other load: cores that other processes (the run's other workers included) kept busy while the run trained; "
        "times measured while threads plus other load exceeded the cores are inflated.", cost_table(df, settings))
    add("How the learning rates were chosen", "learning_rates", *learning_rates_table(df, results_dirs))
    if (q.metric == fidelity).any():
        add("Quality at weight 1", "quality", "The primary table: every metric at weight 1, mean over training runs [95 % interval], overall and per concept kind.", quality_table(df, settings))
        add(f"Per concept ({metric_name(fidelity)})", "per_concept", f"{metric_name(fidelity)} per concept at weight 0 "
            "(the base model) and 1, mean over the concept's training runs [95 % interval over training seeds].", per_concept_table(df, fidelity, settings))
        add(f"Paired differences ({metric_name(fidelity)} at weight 1)", "paired",
            "Every two methods on the training runs they share (same concept and training seed): mean difference a − b [95 % interval], "
            "the share of runs where a is better, the Wilcoxon signed-rank p-value; a verdict only where the interval excludes 0.", paired_table(df, fidelity, settings))
        add("Ranking", "ranking", f"Methods ordered by {metric_name(fidelity)} at weight 1; 'vs. next rank' says whether the paired difference "
            "to the method ranked below is resolved; 'resolved wins': how many methods it beats with a resolved difference.", ranking_table(df, fidelity, settings))
        add("Best weight (held out)", "best_weight", f"Each method's best weight by {metric_name(fidelity)}, chosen on half of the generation seeds "
            "and reported on the other half, so the choice and the number never come from the same images.", best_weight_table(df, fidelity, settings))
    add("Learning curves", "learning_curves", *learning_curve_table(full, settings))
    add("Metric validity (against the oracle)", "validity", *validity_table(df, settings))
    add("Degenerate images", "blank", "Blank or uniform images (what a NaN or collapsed generation decodes to; judged by pixels: under 1 % of "
        "pixels away from the median colour), per adapter weight, over every prompt, generation seed and training run.", blank_table(df))
    fig_dir = out / "figures"
    grids = xy_grids(df, results_dirs, fig_dir, dict(prompt_texts.text.items()) if len(prompt_texts) else {})
    figures = []
    instances = instance_figure(df, results_dirs, fig_dir)
    if instances:
        figures.append((instances, "The instance images of each concept, as every method trained on them."))
    info = infographic(df, fidelity, grids[0] if grids else None, fig_dir, settings)
    if info:
        figures.append((info, f"Summary: cost and quality at weight 1 per method, with the image grid {grids[0].stem.removeprefix('grid_')} "
                              "(shown only here; its file is in figures/ with the others)." if grids else "Summary: cost and quality at weight 1 per method."))
    for fig, caption in ((frontier_figure(df, fidelity, fig_dir, settings) if (q.metric == fidelity).any() else None,
                          f"What each method costs against what it gives ({metric_name(fidelity)} at weight 1): the ringed methods "
                          "are the choices no other method beats on both axes."),
                         (cost_figure(df, fig_dir), "Training cost per method (mean over training runs)."),
                         (curves_figure(df, fig_dir, settings), "Each metric against adapter weight; weight 0 is the base model."),
                         (tradeoff_figure(df, fig_dir), "Subject fidelity against text alignment along each method's weight path."),
                         (learning_curve_figure(full, fig_dir, settings), "Quality at weight 1 against training steps: whether each method "
                          "has levelled off at the compared budget (the table 'Learning curves' tests the last stretch)."),
                         (loss_figure(df, fig_dir), "Training loss per method against step (running mean), over all training runs.")):
        if fig:
            figures.append((fig, caption))
    figures += [(g, f"Image grid {g.stem.removeprefix('grid_')}: rows are methods, columns adapter weights; the same prompt and noise in every cell, "
                    "so a column differs only by what each method learned.") for g in (grids[1:] if info else grids)]
    return html_report("adapterbench report", intro, tables, figures, out / "report.html", extra={"About these numbers": resolved_config_html(runs)})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Rebuild the report from results directories, recomputing nothing.")
    p.add_argument("results_dirs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=None, help="default: FIRST_RESULTS_DIR/report")
    args = p.parse_args(argv)
    print(build_report(args.results_dirs, args.out))


if __name__ == "__main__":
    main()
