"""The report's figures (matplotlib PNG and SVG), from the tidy table, the statistics functions and the stored images."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bench import stages, stats
from bench.plots import DOUBLE_COLUMN, SINGLE_COLUMN, colours, human_bytes, matplotlib, method_rank, plt, resolved_front, save_figure, wrapped
from metrics import higher_is_better
from metrics import title as metric_name
from bench.report.labels import ReportContext, label_of
from bench.report.tables import CURVE_METRICS, cost_rows, learning_curves, metric_title, quality_metrics

log = logging.getLogger(__name__)


def arm_means(df: pd.DataFrame, metric: str, ctx: ReportContext = ReportContext()) -> dict[str, float]:
    """Label -> mean over runs of a run-level metric (cost)."""
    labels = ctx.labels(df.assign(sweep=None))
    rows = cost_rows(df)
    rows = rows[rows.metric == metric]
    out = {label_of(labels, *k): g.groupby("concept").value.mean().mean() for k, g in rows.groupby(["model", "method", "config"])}
    return dict(sorted(out.items(), key=lambda kv: method_rank(kv[0])))



def cost_figure(df: pd.DataFrame, out: Path, ctx: ReportContext = ReportContext()) -> Path | None:
    if cost_rows(df).empty:
        return None
    panels = [("artifact_bytes", "file size (bytes, log)", True), ("peak_mem", "training memory (MiB, tensors)", False), ("train_time", "train time (s)", False), ("trainable_params", "trainable parameters (log)", True)]
    fig, axes = plt.subplots(1, 4, figsize=(DOUBLE_COLUMN, 2.4), layout="constrained")  # the title clear of the panels' titles
    for ax, (metric, title, log_scale) in zip(axes, panels):
        means = arm_means(df, metric, ctx)
        col = colours(list(means))
        ax.bar(range(len(means)), list(means.values()), color=[col[m] for m in means])
        ax.set_xticks(range(len(means)), [m.replace("_", " ") for m in means], fontsize=6, rotation=30, ha="right", rotation_mode="anchor")
        ax.set_title(title)
        if log_scale:
            ax.set_yscale("log")
    fig.suptitle("Training cost per method: mean over training runs (same data, steps, batch and seeds)")
    return save_figure(fig, out, "cost")



def curves_figure(df: pd.DataFrame, out: Path, ctx: ReportContext = ReportContext()) -> Path | None:
    known = quality_metrics(df)
    metrics = [m for m in known if m != "diversity"]
    if not metrics:
        return None
    labels = ctx.labels(df)
    col = colours(sorted(set(labels.values()), key=method_rank))
    weights = sorted(stats.quality_rows(df).weight.unique())
    # At most four panels a row: one row of seven shrinks every label to unreadable in a report's width.
    cols = min(4, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(DOUBLE_COLUMN, 1.75 * rows + 0.3), squeeze=False, layout="constrained")
    for ax, metric in zip(axes.flat, metrics):
        curves: dict[str, list] = {}
        for w in weights:
            for r in stats.summarize(df, metric, float(w), settings=ctx.settings).itertuples():
                if r.scope == "overall":
                    curves.setdefault(label_of(labels, r.model, r.method, r.config, r.sweep), []).append((w, r.mean, r.low, r.high))
        for label in sorted(curves, key=method_rank):
            w, mean, lo, hi = map(np.array, zip(*curves[label]))
            ax.plot(w, mean, "o-", color=col[label], label=label, ms=3)
            if np.isfinite(lo).all():
                ax.fill_between(w, lo, hi, color=col[label], alpha=0.2)
        ax.axvline(0, color="grey", lw=0.8, ls=":")
        ax.set_title(metric_title(metric))
        ax.set_xlabel("adapter weight")
    spare = list(axes.flat[len(metrics):])
    for ax in spare[1:]:
        ax.remove()
    if spare:  # the legend in an empty cell, off the data
        spare[0].axis("off")
        spare[0].legend(*axes.flat[0].get_legend_handles_labels(), loc="center")
    else:
        axes.flat[0].legend()
    fig.suptitle("Metrics against adapter weight: mean over training runs, bands 95 % hierarchical bootstrap")
    return save_figure(fig, out, "curves")



def tradeoff_figure(df: pd.DataFrame, out: Path, ctx: ReportContext = ReportContext()) -> Path | None:
    q = stats.quality_rows(df)
    if not ((q.metric == "clip_t").any() and (q.metric == "clip_i").any()):
        return None
    labels = ctx.labels(df)
    col = colours(sorted(set(labels.values()), key=method_rank))
    fig, ax = plt.subplots(figsize=(SINGLE_COLUMN, 2.9), layout="constrained")
    for arm, g in sorted(q.groupby(stats.ARM, dropna=False), key=lambda kv: method_rank(label_of(labels, *kv[0]))):
        label = label_of(labels, *arm)
        per = {m: g[g.metric == m].groupby(["weight", "concept", "train_seed"]).value.mean().groupby(["weight", "concept"]).mean().groupby("weight").mean() for m in ("clip_t", "clip_i")}
        w = per["clip_t"].index.intersection(per["clip_i"].index)
        tm, im = per["clip_t"][w], per["clip_i"][w]
        ax.plot(tm, im, "-", color=col[label], alpha=0.7, label=label)
        ax.scatter(tm, im, color=col[label], s=6 + 14 * np.clip(np.abs(w.to_numpy()), 0, 1.5))
        for weight in (w.min(), 1.0, w.max()):
            if weight in w:
                ax.annotate(f"{weight:g}", (tm[weight], im[weight]), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel("CLIP-T: text alignment (higher is better)")
    ax.set_ylabel("CLIP-I: subject fidelity (higher is better)")
    ax.set_title("Fidelity vs text alignment along each method's\nweight path (numbers: weight; mean over runs)")
    ax.legend()
    return save_figure(fig, out, "tradeoff")


FRONTIER_COSTS = [("artifact_bytes", "file size (log)", True), ("peak_mem", "training memory (MiB)", False), ("train_time", "train time (s)", False)]



def frontier_figure(df: pd.DataFrame, fidelity: str, out: Path, ctx: ReportContext = ReportContext()) -> Path | None:
    """Quality at weight 1 (mean, 95 % interval) against each cost, one point per method config. A method
    is beaten when another costs at most as much and is better by a resolved paired difference
    (stats.DECISION_RULE); the unbeaten are ringed and joined, and only when some difference is resolved:
    a front drawn from overlapping intervals would claim what the runs do not show."""
    summary = stats.summarize(df, fidelity, 1.0, settings=ctx.settings)
    if summary.empty or cost_rows(df).empty:
        return None
    summary = summary[summary.scope == "overall"]
    pairs = stats.paired(df, fidelity, 1.0, settings=ctx.settings)
    better: set[tuple] = set()  # (better arm, worse arm), arms as (model, method, config)
    if not pairs.empty:
        for r in pairs[(pairs.scope == "overall") & pairs.resolved].itertuples():
            a, b = (r.model, r.method_a, r.config_a), (r.model, r.method_b, r.config_b)
            better.add((a, b) if (r.diff > 0) == higher_is_better(fidelity) else (b, a))
    labels = ctx.labels(df.assign(sweep=None))
    higher = higher_is_better(fidelity)
    fig, axes = plt.subplots(1, len(FRONTIER_COSTS), figsize=(DOUBLE_COLUMN, 2.7), squeeze=False, layout="constrained")
    arms = sorted({(r.model, r.method, r.config) for r in summary.itertuples()}, key=lambda a: method_rank(label_of(labels, *a)))
    col = colours([label_of(labels, *a) for a in arms])
    for ax, (metric, title, log_scale) in zip(axes[0], FRONTIER_COSTS):
        costs = arm_means(df, metric, ctx)  # per label: mean over concepts of the mean over training runs, as the cost figure
        points = []
        for arm in arms:
            q = summary[(summary.model == arm[0]) & (summary.method == arm[1]) & (summary.config == arm[2])]
            if label_of(labels, *arm) not in costs or q.empty:
                continue
            points.append((arm, costs[label_of(labels, *arm)], *q[["mean", "low", "high"]].iloc[0].to_numpy(dtype=float)))
        if not points:
            continue
        best = resolved_front([cost for _, cost, *_ in points], lambda j, i: (points[j][0], points[i][0]) in better)
        if not better:
            best = [False] * len(points)
        for (arm, cost, mean, lo, hi), on_front in zip(points, best):
            label = label_of(labels, *arm)
            ax.errorbar([cost], [mean], yerr=[[mean - lo], [hi - mean]] if np.isfinite([lo, hi]).all() else None, fmt="o", ms=4, color=col[label], capsize=2, label=label)
            if on_front:
                ax.scatter([cost], [mean], s=90, facecolors="none", edgecolors="black", linewidths=0.9)
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
    axes[0][0].set_ylabel(f"{metric_name(fidelity)} at weight 1\n({'higher' if higher else 'lower'} is better)")
    axes[0][0].legend()
    rule = (f"ringed: no method as cheap is better by a resolved paired difference (≥ {stats.MIN_CONCEPTS} concepts, interval excludes 0)" if better else
            f"no difference in quality is resolved (needs ≥ {stats.MIN_CONCEPTS} concepts and an interval that excludes 0): no method is shown beaten")
    fig.suptitle(wrapped(f"Cost against quality: mean over training runs, bars 95 % interval; {rule}"))
    return save_figure(fig, out, "frontier")



def instance_files(concept: str, results_dirs: list[Path]) -> list[Path]:
    """The concept's training images as the run stored them (images/instance/<concept>-<hash>/)."""
    found = sorted(f for d in results_dirs for f in (Path(d) / "images" / "instance").glob(f"{concept}-*") if f.is_dir())
    return sorted(found[0].glob("*.png")) if found else []


GRID_RULE = ("each row shows its method's median training run of the concept (by {metric} at weight 1 over its runs; the lower "
             "median for an even count) at the first generation seed; the top row shows training images")


def median_run(sub: pd.DataFrame, metric: str) -> str | None:
    """The run whose `metric` at weight 1 (mean over its prompts and seeds) is the median of the arm's runs (the
    lower one of an even count); ties broken by training seed."""
    at_one = sub[(sub.metric == metric) & np.isclose(sub.weight.astype(float), 1.0)]
    if at_one.empty:
        return None
    per_run = at_one.groupby(["run_id", "train_seed"]).value.mean().reset_index().sort_values(["value", "train_seed"], kind="stable")
    return str(per_run.run_id.iloc[(len(per_run) - 1) // 2])


def xy_grids(df: pd.DataFrame, results_dirs: list[Path], out: Path, texts: dict | None = None, fidelity: str = "clip_i", ctx: ReportContext = ReportContext()) -> list[Path]:
    """Per concept and prompt: methods x weights, each row its method's median run (GRID_RULE), every cell
    labelled, the concept's training images above (`texts`: (concept, prompt id) -> prompt text, for titles)."""
    q = stats.quality_rows(df)
    metric = fidelity if (q.metric == fidelity).any() else "clip_i"
    labels = ctx.labels(df)
    paths = []
    shown: dict[tuple, tuple] = {}  # (concept, arm) -> (the median run, its training seed)
    for (concept, pid), sub in q[q.metric == "clip_i"].groupby(["concept", "prompt_id"], sort=True):
        arms = sorted({tuple(a) for a in sub[stats.ARM].itertuples(index=False)}, key=lambda a: method_rank(label_of(labels, *a)))
        weights = sorted(sub.weight.unique())
        seed = int(sub.seed.min())
        instances = instance_files(concept, results_dirs)[: len(weights)]
        top = 1 if instances else 0
        fig, axes = plt.subplots(len(arms) + top, len(weights), figsize=(1.25 * len(weights) + 1.5, 1.35 * (len(arms) + top) + 0.9),
                                 squeeze=False, layout="constrained")
        for c in range(len(weights)):
            ax = axes[0][c]
            if top and c < len(instances):
                ax.imshow(Image.open(instances[c]), interpolation="nearest")
                ax.set_title("training image", fontsize=6)
            if top:
                ax.set_xticks([])
                ax.set_yticks([])
                if c >= len(instances):
                    ax.axis("off")
        for r, arm in enumerate(arms):
            if (concept, arm) not in shown:  # one choice per concept and arm, whatever the prompt
                arm_rows = q[(q.concept == concept) & (q[stats.ARM] == pd.Series(arm, index=stats.ARM)).all(axis=1)]
                run = median_run(arm_rows, metric)
                shown[(concept, arm)] = (run, arm_rows[arm_rows.run_id == run].train_seed.iloc[0] if run else None)
            run, train_seed = shown[(concept, arm)]
            for c, w in enumerate(weights):
                ax = axes[r + top][c]
                ax.set_xticks([])
                ax.set_yticks([])
                found = [f for d in results_dirs for f in [stages.image_file(d, run, arm[3], pid, seed, w)] if run and f.is_file()]
                if found:
                    ax.imshow(Image.open(found[0]), interpolation="nearest")
                ax.set_title(f"w={w:g}", fontsize=6)
                if c == 0:
                    ax.set_ylabel(f"{label_of(labels, *arm)}\n(seed {train_seed})".replace("_", " "), fontsize=7)
        prompt = f"'{texts[(concept, pid)]}'" if texts and (concept, pid) in texts else pid.replace("_", " ")
        fig.suptitle(f"{concept}, {prompt}: methods x adapter weights (generation seed {seed})", fontsize=9)
        paths.append(save_figure(fig, out, f"grid_{concept}_{pid}"))
    return paths


def infographic(df: pd.DataFrame, fidelity: str, grid: Path | None, out: Path, ctx: ReportContext = ReportContext()) -> Path | None:
    """The page's main figure: per method, the headline quality and drift at weight 1 (mean, 95 % interval)
    and what it cost (file, training memory, time), one panel each in the method colours every figure
    uses, beside the image grid of the first concept."""
    if cost_rows(df).empty:
        return None
    labels = ctx.labels(df)
    cost = {m: arm_means(df, m, ctx) for m in ("artifact_bytes", "peak_mem", "train_time")}
    methods = sorted(cost["train_time"], key=method_rank)
    col = colours(methods)
    panels: list[tuple[str, dict, bool]] = []
    for metric in (fidelity, "drift"):
        s = stats.summarize(df, metric, 1.0, settings=ctx.settings)
        s = s[s.scope == "overall"] if len(s) else s
        values = {label_of(labels, r.model, r.method, r.config, r.sweep): (r.mean, r.low, r.high) for r in s.itertuples()}
        if values:
            better = "higher" if higher_is_better(metric) else "lower"
            panels.append((f"{metric_name(metric)} at weight 1 ({better} is better), mean [95 % interval]", values, False))
    for metric, title, log_scale in (("artifact_bytes", "file size (log)", True), ("peak_mem", "training memory (MiB)", False), ("train_time", "train time (s)", False)):
        panels.append((title, {m: (v, np.nan, np.nan) for m, v in cost[metric].items()}, log_scale))
    fig = plt.figure(figsize=(DOUBLE_COLUMN, 0.5 + 0.85 * len(panels)), layout="constrained")
    gs = fig.add_gridspec(len(panels), 2, width_ratios=[1, 1.05] if grid is not None else [1, 0.001])
    y = np.arange(len(methods))
    for i, (title, values, log_scale) in enumerate(panels):
        ax = fig.add_subplot(gs[i, 0])
        mean = np.array([values.get(m, (np.nan,) * 3)[0] for m in methods], dtype=float)
        lo = np.array([values.get(m, (np.nan,) * 3)[1] for m in methods], dtype=float)
        hi = np.array([values.get(m, (np.nan,) * 3)[2] for m in methods], dtype=float)
        ax.barh(y, np.nan_to_num(mean), color=[col[m] for m in methods], height=0.7)
        has_ci = np.isfinite(lo) & np.isfinite(hi)
        if has_ci.any():
            ax.errorbar(mean[has_ci], y[has_ci], xerr=[mean[has_ci] - lo[has_ci], hi[has_ci] - mean[has_ci]], fmt="none", ecolor="black", capsize=1.5, lw=0.6)
        for yy, v, h in zip(y, mean, hi):
            if np.isfinite(v):
                text = human_bytes(v) if log_scale else (f"{v:.2f}" if abs(v) < 10 else f"{v:,.0f}")
                ax.annotate(text, (max(v, h) if np.isfinite(h) else v, yy), xytext=(2, 0), textcoords="offset points", va="center", fontsize=5.5)
        ax.set_yticks(y, [m.replace("_", " ") for m in methods], fontsize=6)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=6.5, loc="left")
        ax.tick_params(axis="x", labelsize=5.5)
        ax.spines[["top", "right"]].set_visible(False)
        if log_scale:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: human_bytes(v)))
        finite = np.concatenate([mean[np.isfinite(mean)], hi[np.isfinite(hi)]])
        if finite.size and not log_scale:
            ax.set_xlim(min(0.0, finite.min()), finite.max() * 1.18 or 1.0)
    if grid is not None:
        axg = fig.add_subplot(gs[:, 1])
        axg.imshow(Image.open(grid), interpolation="antialiased")  # a downscaled grid: nearest would drop its labels' strokes
        axg.axis("off")
    fig.suptitle("Quality and cost per method at weight 1 (mean over training runs), and one concept's images", weight="bold")
    return save_figure(fig, out, "infographic")



def instance_figure(df: pd.DataFrame, results_dirs: list[Path], out: Path, per_concept: int = 8) -> Path | None:
    """A row of training images per concept: what every method was asked to learn."""
    folders = {}
    for concept in sorted(df.concept.dropna().unique()):
        files = instance_files(concept, results_dirs)
        if files:
            folders[concept] = files[:per_concept]
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
    fig.suptitle("Instance images: what every method trained on (the same images for all of them)")
    return save_figure(fig, out, "instance_images")



def loss_figure(df: pd.DataFrame, out: Path, smooth: int = 10, ctx: ReportContext = ReportContext()) -> Path | None:
    """Training loss against step per method: the mean over training runs of a running mean."""
    loss = df[(df.metric == "train_loss") & df.step.notna() & (df.status == "ok")]
    if loss.empty:
        return None
    labels = ctx.labels(loss.assign(sweep=None))
    col = colours(sorted(set(labels.values()), key=method_rank))
    fig, ax = plt.subplots(figsize=(SINGLE_COLUMN, 2.6), layout="constrained")
    for (model, method, config), g in sorted(loss.groupby(["model", "method", "config"], dropna=False), key=lambda kv: method_rank(label_of(labels, *kv[0]))):
        label = label_of(labels, model, method, config)
        per_run = g.pivot_table(index="step", columns="run_id", values="value").sort_index()
        smoothed = per_run.rolling(smooth, min_periods=1).mean()
        mean = smoothed.mean(axis=1)
        ax.plot(mean.index, mean.to_numpy(), color=col[label], label=f"{label} ({per_run.shape[1]} runs)")
        ax.fill_between(mean.index, smoothed.min(axis=1), smoothed.max(axis=1), color=col[label], alpha=0.15)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"denoising loss (running mean of {smooth} steps)")
    ax.set_yscale("log")
    ax.set_title("Training loss: mean over training runs,\nband from lowest to highest run")
    ax.legend()
    return save_figure(fig, out, "loss")



def learning_curve_figure(full: pd.DataFrame, out: Path, ctx: ReportContext = ReportContext(), curves: pd.DataFrame | None = None) -> Path | None:
    curves = learning_curves(full, ctx) if curves is None else curves
    if curves.empty:
        return None
    labels = ctx.labels(full)
    col = colours(sorted(set(labels.values()), key=method_rank))
    metrics = [m for m in CURVE_METRICS if (curves.metric == m).any()]
    fig, axes = plt.subplots(1, len(metrics), figsize=(DOUBLE_COLUMN, 2.4), squeeze=False, layout="constrained")
    for ax, metric in zip(axes[0], metrics):
        c = curves[curves.metric == metric]
        for (model, method, config, sweep), g in sorted(c.groupby(stats.ARM, dropna=False, sort=False), key=lambda kv: method_rank(label_of(labels, *kv[0]))):
            label = label_of(labels, model, method, config, sweep)
            g = g.sort_values("step")
            ax.plot(g.step, g["mean"], "o-", ms=3, color=col[label], label=label)
            if np.isfinite(g.low).all():
                ax.fill_between(g.step, g.low, g.high, color=col[label], alpha=0.15)
        ax.set_xscale("log", base=2)
        ticks = sorted(c.step.unique())
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("training step")
        ax.set_title(f"{metric_title(metric)} at weight 1")
        if metric == "presence":
            ax.set_ylim(-0.03, 1.03)
    axes[0][0].legend()
    fig.suptitle(wrapped("Learning curves: each run's checkpoints and final artifact, mean over training runs, bands 95 % hierarchical bootstrap"))
    return save_figure(fig, out, "learning_curves")
