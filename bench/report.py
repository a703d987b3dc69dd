"""Tables, figures and an HTML report, rebuilt from the tidy results table alone.

    python -m bench.report RESULTS_DIR [MORE_RESULTS_DIRS ...] [--out DIR]

Nothing is recomputed: every number comes from `rows/*.parquet`, every picture from `images/`.
"""

from __future__ import annotations

import argparse
import base64
import html
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from bench import records  # noqa: E402
from bench.io import atomic_path, atomic_write_text  # noqa: E402
from bench.sweep import image_path  # noqa: E402
from metrics import higher_is_better, is_frechet  # noqa: E402

log = logging.getLogger(__name__)

# Okabe-Ito: distinguishable with the common forms of colour blindness.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
METHOD_ORDER = ["dreambooth", "textual_inversion", "lora", "hypernetwork"]
COST_METRICS = {  # metric -> (column title, scale, format)
    "peak_mem": ("peak memory (MiB)", 1.0, "{:,.0f}"),
    "train_time": ("train time (s)", 1.0, "{:,.1f}"),
    "steps_per_s": ("steps/s", 1.0, "{:,.2f}"),
    "trainable_params": ("trainable params", 1.0, "{:,.0f}"),
    "artifact_bytes": ("file size (MB)", 1e-6, "{:,.3f}"),
}
QUALITY_TITLES = {"clip_t": "CLIP-T", "clip_i": "CLIP-I", "cmmd": "CMMD", "drift": "drift", "diversity": "diversity"}


def quality_metrics(df: pd.DataFrame) -> dict[str, tuple[str, bool]]:
    """The quality metrics present, as metric -> (title, higher is better), with every Fréchet distance
    (fd_<space>, fid_inception) found."""
    fds = sorted(m for m in df.metric.dropna().unique() if is_frechet(m))
    found = [m for m in QUALITY_TITLES if (df.metric == m).any()]
    return {m: (QUALITY_TITLES.get(m, m.replace("_", " ")), higher_is_better(m)) for m in found + fds}


# ------------------------------------------------------------------------------------------- numbers


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and a 95 % percentile-bootstrap interval; the interval is NaN with fewer than 2 values."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    boots = rng.choice(values, size=(n_boot, len(values)), replace=True).mean(axis=1)
    return mean, float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def ordered(methods) -> list[str]:
    known = [m for m in METHOD_ORDER if m in set(methods)]
    return known + sorted(set(methods) - set(known))


def cost_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The successful training runs' cost rows (one number per run and cost metric)."""
    return df[df.metric.isin(COST_METRICS) & df.step.isna() & (df.status == "ok")]


def cost_table(df: pd.DataFrame) -> pd.DataFrame:
    """Method x cost, the mean over training runs (seeds) with a 95 % interval where there are several."""
    cost = cost_rows(df)
    rows = []
    for method in ordered(cost.method.unique()):
        row = {"method": method}
        for metric, (title, scale, fmt) in COST_METRICS.items():
            per_run = cost[(cost.method == method) & (cost.metric == metric)].groupby("seed", dropna=False).value.mean() * scale
            row[title] = format_ci(*bootstrap_ci(per_run.to_numpy()), fmt)
        rows.append(row)
    return pd.DataFrame(rows).set_index("method") if rows else pd.DataFrame()


def format_ci(mean: float, lo: float, hi: float, fmt: str = "{:.3f}") -> str:
    if not np.isfinite(mean):
        return ""
    return fmt.format(mean) if not np.isfinite(lo) else f"{fmt.format(mean)} [{fmt.format(lo)}, {fmt.format(hi)}]"


def per_seed_means(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One value per (method, weight, training run, generation seed): the unit the intervals resample."""
    m = df[(df.metric == metric) & df.weight.notna()]
    return m.groupby(["method", "weight", "run_id", "seed"], dropna=False).value.mean().reset_index()


def best_weights(df: pd.DataFrame) -> dict[str, float]:
    """Each method's best weight: the one with the highest mean CLIP-I (subject fidelity)."""
    ci = df[df.metric == "clip_i"].groupby(["method", "weight"]).value.mean()
    return {m: float(ci[m].idxmax()) for m in ci.index.get_level_values(0).unique()}


def quality_table(df: pd.DataFrame) -> pd.DataFrame:
    """Method x metric at weight 1 and at each method's best weight, mean [95 % interval over seeds]."""
    best = best_weights(df)
    rows = []
    for method in ordered(best):
        for label, weight in (("1.0", 1.0), (f"best ({best[method]:g})", best[method])):
            row = {"method": method, "weight": label}
            for metric, (title, hib) in quality_metrics(df).items():
                vals = per_seed_means(df, metric)
                vals = vals[(vals.method == method) & np.isclose(vals.weight, weight)].value.to_numpy()
                row[f"{title} {'↑' if hib else '↓'}"] = format_ci(*bootstrap_ci(vals))
            rows.append(row)
    return pd.DataFrame(rows).set_index(["method", "weight"]) if rows else pd.DataFrame()


def write_table(table: pd.DataFrame, out: Path, name: str, caption: str) -> dict[str, Path]:
    """Markdown, CSV and LaTeX versions of one table."""
    paths = {"md": out / f"{name}.md", "csv": out / f"{name}.csv", "tex": out / f"{name}.tex"}
    atomic_write_text(paths["md"], f"{caption}\n\n{table.to_markdown()}\n")
    atomic_write_text(paths["csv"], table.to_csv())
    latex = table.to_latex(escape=True, caption=caption, label=f"tab:{name}")
    atomic_write_text(paths["tex"], latex)
    return paths


# ------------------------------------------------------------------------------------------- figures


def save_figure(fig, out: Path, name: str) -> Path:
    png = out / f"{name}.png"
    for ext in ("png", "svg"):
        with atomic_path(out / f"{name}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return png


def colours(methods: list[str]) -> dict[str, str]:
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)}


def cost_figure(df: pd.DataFrame, out: Path) -> Path | None:
    cost = cost_rows(df)
    if cost.empty:
        return None
    methods = ordered(cost.method.unique())
    col = colours(methods)
    panels = [("artifact_bytes", "file size (bytes, log)", True), ("peak_mem", "peak memory (MiB)", False), ("train_time", "train time (s)", False), ("trainable_params", "trainable parameters (log)", True)]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
    for ax, (metric, title, log_scale) in zip(axes, panels):
        means = [cost[(cost.method == m) & (cost.metric == metric)].value.mean() for m in methods]
        ax.bar(range(len(methods)), means, color=[col[m] for m in methods])
        ax.set_xticks(range(len(methods)), [m.replace("_", "\n") for m in methods], fontsize=8)
        ax.set_title(title, fontsize=10)
        if log_scale:
            ax.set_yscale("log")
    fig.suptitle("Training cost per method (same data, steps, batch and seed)")
    return save_figure(fig, out, "cost")


def curves_figure(df: pd.DataFrame, out: Path) -> Path | None:
    known = quality_metrics(df)
    metrics = [m for m in known if m != "diversity"]
    if not metrics:
        return None
    methods = ordered(df[df.metric.isin(metrics)].method.unique())
    col = colours(methods)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        vals = per_seed_means(df, metric)
        for m in methods:
            rows = []
            for w, g in vals[vals.method == m].groupby("weight"):
                rows.append((w, *bootstrap_ci(g.value.to_numpy())))
            if not rows:
                continue
            w, mean, lo, hi = map(np.array, zip(*rows))
            ax.plot(w, mean, "o-", color=col[m], label=m, ms=3)
            if np.isfinite(lo).all():
                ax.fill_between(w, lo, hi, color=col[m], alpha=0.2)
        title, hib = known[metric]
        ax.axvline(0, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{title} ({'higher' if hib else 'lower'} is better)", fontsize=10)
        ax.set_xlabel("adapter weight")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Metrics against adapter weight (bands: 95 % bootstrap interval over seeds)")
    return save_figure(fig, out, "curves")


def tradeoff_figure(df: pd.DataFrame, out: Path) -> Path | None:
    t, i = per_seed_means(df, "clip_t"), per_seed_means(df, "clip_i")
    if t.empty or i.empty:
        return None
    methods = ordered(t.method.unique())
    col = colours(methods)
    fig, ax = plt.subplots(figsize=(6, 4.6))
    for m in methods:
        tm = t[t.method == m].groupby("weight").value.mean()
        im = i[i.method == m].groupby("weight").value.mean()
        w = tm.index.intersection(im.index)
        ax.plot(tm[w], im[w], "-", color=col[m], alpha=0.7, label=m)
        ax.scatter(tm[w], im[w], color=col[m], s=14 + 30 * np.clip(np.abs(w.to_numpy()), 0, 1.5))
        for weight in (w.min(), 1.0, w.max()):
            if weight in w:
                ax.annotate(f"{weight:g}", (tm[weight], im[weight]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("CLIP-T: text alignment (higher is better)")
    ax.set_ylabel("CLIP-I: subject fidelity (higher is better)")
    ax.set_title("Fidelity vs text alignment along each method's weight path")
    ax.legend(fontsize=8)
    return save_figure(fig, out, "tradeoff")


def xy_grids(df: pd.DataFrame, images_dirs: list[Path], out: Path) -> list[Path]:
    """Per prompt: methods x weights, seed 0 (the first seed found), labelled."""
    sweep = df[df.metric == "clip_i"]
    paths = []
    for pid in sorted(sweep.prompt_id.dropna().unique()):
        sub = sweep[sweep.prompt_id == pid]
        methods, weights = ordered(sub.method.unique()), sorted(sub.weight.unique())
        seed = int(sub.seed.min())
        fig, axes = plt.subplots(len(methods), len(weights), figsize=(1.2 * len(weights) + 1.2, 1.25 * len(methods) + 0.6), squeeze=False)
        for r, m in enumerate(methods):
            for c, w in enumerate(weights):
                ax = axes[r][c]
                ax.set_xticks([])
                ax.set_yticks([])
                found = [image_path(d, m, pid, seed, w) for d in images_dirs]
                found = [f for f in found if f.is_file()]
                if found:
                    ax.imshow(Image.open(found[0]), interpolation="nearest")
                if r == 0:
                    ax.set_title(f"w={w:g}", fontsize=8)
                if c == 0:
                    ax.set_ylabel(m.replace("_", "\n"), fontsize=8)
        fig.suptitle(f"{pid}, seed {seed}: methods x weights", fontsize=9)
        paths.append(save_figure(fig, out, f"grid_{pid}"))
    return paths


def infographic(df: pd.DataFrame, cost: pd.DataFrame, grid: Path | None, out: Path) -> Path | None:
    if cost.empty:
        return None
    fig = plt.figure(figsize=(11, 8.5))
    fig.suptitle("adapterbench: DreamBooth vs Textual Inversion vs LoRA vs hypernetworks, measured", fontsize=13, weight="bold")
    ax = fig.add_axes([0.03, 0.62, 0.94, 0.28])
    ax.axis("off")
    best = best_weights(df) if (df.metric == "clip_i").any() else {}
    headline = []
    for m in cost.index:
        ci1 = df[(df.method == m) & (df.metric == "clip_i") & np.isclose(df.weight, 1.0)].value.mean()
        ct1 = df[(df.method == m) & (df.metric == "clip_t") & np.isclose(df.weight, 1.0)].value.mean()
        dr1 = df[(df.method == m) & (df.metric == "drift") & np.isclose(df.weight, 1.0)].value.mean()
        headline.append([m, *cost.loc[m, ["file size (MB)", "peak memory (MiB)", "train time (s)"]].tolist(), f"{ci1:.3f}", f"{ct1:.1f}", f"{dr1:.3f}", f"{best.get(m, float('nan')):g}"])
    table = ax.table(cellText=headline, colLabels=["method", "file MB", "peak MiB", "train s", "CLIP-I@1", "CLIP-T@1", "drift@1", "best w"], loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.6)
    if grid is not None:
        ax2 = fig.add_axes([0.05, 0.02, 0.9, 0.6])
        ax2.imshow(Image.open(grid))
        ax2.axis("off")
    return save_figure(fig, out, "infographic")


# ------------------------------------------------------------------------------------------- HTML


def embed_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def html_report(title: str, tables: dict[str, tuple[str, pd.DataFrame]], figures: list[Path], out_file: Path) -> Path:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "th{background:#f0f0f0}img{max-width:100%;margin:1em 0}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for heading, (caption, table) in tables.items():
        parts.append(f"<h2>{html.escape(heading)}</h2><p>{html.escape(caption)}</p>{table.to_html(escape=True)}")
    parts.append("<h2>Figures</h2>")
    for fig in figures:
        parts.append(f"<figure><img alt='{html.escape(fig.stem)}' src='{embed_png(fig)}'><figcaption>{html.escape(fig.stem)}</figcaption></figure>")
    parts.append("</body></html>")
    atomic_write_text(out_file, "\n".join(parts))
    return out_file


def build_report(results_dirs: list[Path], out: Path | None = None) -> Path:
    """Everything from the tables of one or more results directories; returns the HTML file."""
    results_dirs = [Path(d) for d in results_dirs]
    out = Path(out) if out else results_dirs[0] / "report"
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    df = records.read_table(*results_dirs)
    if df.empty:
        raise ValueError(f"no result rows under {', '.join(map(str, results_dirs))}")
    cost = cost_table(df)
    tables = {}
    if not cost.empty:
        caption = "Cost of training each method under identical conditions: mean [95 % bootstrap interval over training seeds]."
        write_table(cost, out / "tables", "cost", caption)
        tables["Cost"] = (caption, cost)
    if (df.metric == "clip_i").any():
        quality = quality_table(df)
        caption = "Quality at weight 1 and at each method's best weight (highest CLIP-I): mean [95 % bootstrap interval over seeds]."
        write_table(quality, out / "tables", "quality", caption)
        tables["Quality"] = (caption, quality)
    fig_dir = out / "figures"
    grids = xy_grids(df, [d / "images" for d in results_dirs], fig_dir)
    figures = [f for f in (cost_figure(df, fig_dir), curves_figure(df, fig_dir), tradeoff_figure(df, fig_dir)) if f]
    info = infographic(df, cost, grids[0] if grids else None, fig_dir)
    figures = ([info] if info else []) + figures + grids
    return html_report("adapterbench report", tables, figures, out / "report.html")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Rebuild the report from results directories, recomputing nothing.")
    p.add_argument("results_dirs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=None, help="default: FIRST_RESULTS_DIR/report")
    args = p.parse_args(argv)
    print(build_report(args.results_dirs, args.out))


if __name__ == "__main__":
    main()
