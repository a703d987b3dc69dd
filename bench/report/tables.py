"""The report's tables, each from the tidy table and the statistics functions (`bench.stats`), and their Markdown, CSV and LaTeX files."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from bench import provenance, records, stages, stats, validity
from bench.io import atomic_write_text
from bench.plots import human_bytes, method_rank
from metrics import QUALITY, higher_is_better, is_frechet
from metrics import info as metric_info
from metrics import title as metric_name
from bench.report.labels import ReportContext, label_of, ordered

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



def cost_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Run-level cost rows of successful runs (one number per run and cost metric; class-image time is
    per concept, shared by every training seed)."""
    return df[df.metric.isin(COST_METRICS) & df.step.isna() & df.weight.isna() & (df.status == "ok")]



def cost_table(df: pd.DataFrame, ctx: ReportContext = ReportContext()) -> pd.DataFrame:
    """Arm x cost: the mean over training runs with a 95 % interval (concepts, then seeds)."""
    cost = cost_rows(df)
    labels = ctx.labels(df.assign(sweep=None))
    rows = []
    for (model, method, config), g in sorted(cost.groupby(["model", "method", "config"], dropna=False), key=lambda kv: method_rank(label_of(labels, *kv[0]))):
        row = {"method": label_of(labels, model, method, config), "runs": int(g.run_id.nunique())}
        for metric, (title, scale, fmt) in COST_METRICS.items():
            m = g[g.metric == metric]
            if m.empty:
                continue
            groups = [x.value.to_numpy() * scale for _, x in m.groupby("concept")]
            row[title] = format_ci(*stats.hierarchical_bootstrap(groups, ctx.settings), fmt)
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



NUMBER = r"[-−]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?"
NUMERIC_CELL = re.compile(rf"^({NUMBER})(?: \[({NUMBER}), ({NUMBER})\])?$")


def latex_cell(value) -> str:
    """One table cell as LaTeX: a number or 'estimate [low, high]' in math mode (a true minus sign,
    thousands separators without math's comma space), anything else as escaped text."""
    if not isinstance(value, str):
        return "" if value is None or (isinstance(value, float) and not np.isfinite(value)) else str(value)
    m = NUMERIC_CELL.match(value.strip())
    if not m:
        return latex_text(value)

    def number(text: str) -> str:
        return re.sub(r"(?<=\d),(?=\d)", "{,}", text.replace("−", "-"))

    estimate, low, high = m.groups()
    return f"${number(estimate)}$" if low is None else f"${number(estimate)}$ $[{number(low)}, {number(high)}]$"


def _unsigned_zero(text: str) -> str:
    """'-0.000' (a float error's tiny negative, e.g. 1 - cos of identical images) reads as a real sign: '0.000'."""
    return text[1:] if text.startswith("-") and float(text) == 0 else text



def metric_title(metric: str) -> str:
    return f"{metric_name(metric)} {'↑' if higher_is_better(metric) else '↓'}"



def quality_table(df: pd.DataFrame, ctx: ReportContext = ReportContext()) -> pd.DataFrame:
    """Arm x scope x metric at weight 1: mean [interval] over training runs, with n."""
    labels = ctx.labels(df)
    parts = [stats.summarize(df, metric, 1.0, settings=ctx.settings) for metric in quality_metrics(df)]
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



def measured_and_proxy_columns(table: pd.DataFrame, df: pd.DataFrame) -> tuple[list[str], list[str], list[str]]:
    """The quality table's columns in three groups, each with the counts: metrics measured directly (the
    oracle's ground truth, pixel checks), proxies in CLIP's (or Inception's) feature space, and proxies in
    DINO's space or the model's own loss. One table of all was wider than a 1,400 px page; a reader wants
    the ground truth first anyway."""
    from metrics import info

    counts = [c for c in ("concepts", "runs") if c in table.columns]
    by = {metric_title(m): i.measured_by for m in quality_metrics(df) if (i := info(m)) is not None}
    measured = [c for c in table.columns if by.get(c) in ("oracle", "pixels")]
    other = [c for c in table.columns if by.get(c) in ("dino", "model")]
    clip = [c for c in table.columns if c not in measured and c not in other and c not in counts]
    return counts + measured, counts + clip, (counts + other if other else [])


def blank_table(df: pd.DataFrame, ctx: ReportContext = ReportContext()) -> pd.DataFrame:
    """Arm x weight: blank (degenerate) images as 'count / images', over every prompt, seed and run."""
    b = df[(df.metric == "blank") & (df.status == "ok")]
    if b.empty:
        return b
    labels = ctx.labels(df)
    rows: dict[str, dict[str, str]] = {}
    for (*arm, weight), g in b.groupby([*stats.ARM, "weight"], dropna=False, sort=True):
        rows.setdefault(label_of(labels, *arm), {})[f"weight {weight:g}"] = f"{int(g.value.sum())} / {len(g)}"
    order = sorted(rows, key=method_rank)
    return pd.DataFrame([rows[k] for k in order], index=pd.Index(order, name="method"))



def validity_table(df: pd.DataFrame, ctx: ReportContext = ReportContext()) -> tuple[str, pd.DataFrame]:
    """(caption, table): each proxy metric's rank agreement with the oracle's presence rate."""
    t = validity.agreement(df, ctx.settings)
    if t.empty:
        return "", t
    table = pd.DataFrame({
        "metric": [metric_title(m) for m in t.metric],
        "Spearman rho with presence": [format_ci(r.rho, r.low, r.high) for r in t.itertuples()],
        "rho within concept (mean)": [format_ci(r.rho_within, r.within_low, r.within_high) for r in t.itertuples()],
        "cells": t.cells, "concepts": t.concepts,
        "agrees with ground truth": [f"needs ≥ {stats.MIN_CONCEPTS} concepts" if pd.isna(a) else ("yes" if a else "no") for a in t.agrees],
    }).set_index("metric")
    bad = [metric_title(m) for m, a in zip(t.metric, t.agrees) if not pd.isna(a) and not a]
    undecided = t.agrees.isna().all()
    caption = (f"Rank agreement of each proxy metric with the oracle's presence rate (ground truth: is the concept's shape or fill drawn?) over "
               f"every (method, concept, weight) cell; lower-is-better metrics (FD, CMMD, the validation loss) are negated so that agreement is positive. Interval: concepts resampled. "
               f"A metric agrees when rho >= {validity.AGREES} and its interval excludes 0, judged from {stats.MIN_CONCEPTS} concepts on "
               "(fewer have too few distinct resamples to place an interval's ends: no interval, no verdict). "
               + ("Too few concepts here for a verdict; results/benchmarks/metric_validity.md has the suite's." if undecided else
                  f"Not agreeing here: {', '.join(bad)}; read them as similarity, not as evidence the concept is drawn." if bad else "Every proxy agrees here."))
    return caption, table



def per_concept_table(df: pd.DataFrame, metric: str, ctx: ReportContext = ReportContext()) -> pd.DataFrame:
    """Concept x method: `metric` at weight 0 and 1, mean over that concept's training runs [interval]."""
    labels = ctx.labels(df)
    rows = {}
    for weight in (0.0, 1.0):
        units = stats.unit_values(df, metric, weight)
        for (concept, kind, *arm), g in units.groupby(["concept", "kind", *stats.ARM], dropna=False, sort=True):
            label = label_of(labels, *arm)
            row = rows.setdefault((concept, kind), {})
            row[f"{label} @{weight:g}"] = format_ci(*stats.hierarchical_bootstrap([g.value.to_numpy()], ctx.settings))
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.names = ["concept", "kind"]
    order = sorted(table.columns, key=lambda c: (method_rank(c.rsplit(" @", 1)[0]), c.rsplit(" @", 1)[1]))
    return table[order]



def paired_table(df: pd.DataFrame, metric: str, ctx: ReportContext = ReportContext()) -> pd.DataFrame:
    """Every two arms on the runs they share, at weight 1: difference a - b [interval], a's win rate, p."""
    p = stats.paired(df, metric, 1.0, settings=ctx.settings)
    if p.empty:
        return p
    labels = ctx.labels(df)
    rows = []
    for r in p.itertuples():
        rows.append({
            "scope": r.scope,
            "a": label_of(labels, r.model, r.method_a, r.config_a, r.sweep),
            "b": label_of(labels, r.model, r.method_b, r.config_b, r.sweep),
            "pairs": r.n_pairs,
            f"a − b ({metric_name(metric)})": format_ci(r.diff, r.low, r.high),
            "a wins": f"{100 * r.a_wins:.0f} %",
            "ties": r.ties,
            "p": "" if not np.isfinite(r.p) else f"{r.p:.3f}",
            "verdict": f"{r.better} better" if r.resolved else stats.verdict_words(r),
        })
    return pd.DataFrame(rows).set_index(["scope", "a", "b"])



def ranking_table(df: pd.DataFrame, metric: str, ctx: ReportContext = ReportContext()) -> pd.DataFrame:
    summary = stats.summarize(df, metric, 1.0, settings=ctx.settings)
    if summary.empty:
        return summary
    r = stats.ranking(summary, stats.paired(df, metric, 1.0, settings=ctx.settings), metric)
    labels = ctx.labels(df)
    r["method"] = [label_of(labels, x.model, x.method, x.config, x.sweep) for x in r.itertuples()]
    r[metric_title(metric)] = [format_ci(x.mean, x.low, x.high) for x in r.itertuples()]
    r = r.rename(columns={"vs_next": "vs. next rank", "beats_resolved": "resolved wins", "n_runs": "runs"})
    return r.set_index(["scope", "rank"])[["method", metric_title(metric), "runs", "vs. next rank", "resolved wins"]]



def best_weight_table(df: pd.DataFrame, fidelity: str, ctx: ReportContext = ReportContext()) -> pd.DataFrame:
    """Each arm's best weight, chosen on the selection seeds, and its quality on the report seeds."""
    best = stats.best_weights(df, fidelity)
    if best.empty:
        return best
    labels = ctx.labels(df)

    def arm(r) -> tuple:
        return tuple(str(getattr(r, k)) for k in stats.ARM)

    at_best = {}  # (metric, arm) -> (mean, low, high) over the report seeds (stats.at_best_weight)
    for metric in dict.fromkeys((fidelity, "clip_i", "clip_t", "drift")):
        s = stats.at_best_weight(df, metric, best, ctx.settings)
        for r in (s[s.scope == "overall"].itertuples() if len(s) else []):
            at_best[(metric, arm(r))] = (r.mean, r.low, r.high)
    rows = []
    for b in best.itertuples():
        row = {"method": label_of(labels, b.model, b.method, b.config, b.sweep),
               "best weight": f"{b.best_weight:g}" if np.isfinite(b.best_weight) else "none: every weight scores the same",
               "chosen on seeds": ", ".join(map(str, b.selected_on)), "reported on seeds": ", ".join(map(str, b.reported_on))}
        for metric in dict.fromkeys((fidelity, "clip_i", "clip_t", "drift")):
            if (metric, arm(b)) in at_best:
                row[metric_title(metric)] = format_ci(*at_best[(metric, arm(b))])
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")



_NUMBER = r"-?[\d,]*\.?\d+(?:e[-+]?\d+)?(?: ?(?:B|KB|MB|GB))?"
_CELL = re.compile(rf"^(?P<mean>{_NUMBER})(?: \[(?P<low>{_NUMBER}), (?P<high>{_NUMBER})\])?$")
_BYTES = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}


def _number(text: str) -> float:
    """'1,234.5' -> 1234.5; '3.2 MB' -> 3.2e6 (the units `human_bytes` prints)."""
    value, _, unit = text.replace(",", "").partition(" ")
    if not unit and text[-2:] in _BYTES and not text[-2:-1].isdigit():
        value, unit = text[:-2], text[-2:]
    return float(value) * _BYTES.get(unit, 1)


def numeric(table: pd.DataFrame) -> pd.DataFrame:
    """The table for re-plotting: every column whose cells all read 'mean [low, high]' (or a bare number)
    becomes three numeric columns, `col`, `col low`, `col high`; other columns stay as they are."""
    out = {}
    for col in table.columns:
        cells = table[col]
        # Missing cells (NaN, None, <NA>; pandas' string dtype keeps them missing through astype(str)) are blanks.
        text = pd.Series([str(c).strip() if isinstance(c, str) or pd.notna(c) else "" for c in cells], index=cells.index)
        matches = text.map(lambda t: _CELL.match(t) if t not in ("", "nan", "<NA>", "None") else None)
        filled = text[~text.isin(["", "nan", "<NA>", "None"])]
        if (cells.dtype == object or pd.api.types.is_string_dtype(cells)) and len(filled) and all(matches[i] is not None for i in filled.index):
            out[col] = [_number(m["mean"]) if m else float("nan") for m in matches]
            out[f"{col} low"] = [_number(m["low"]) if m and m["low"] else float("nan") for m in matches]
            out[f"{col} high"] = [_number(m["high"]) if m and m["high"] else float("nan") for m in matches]
        else:
            out[col] = cells.to_list()
    return pd.DataFrame(out)


def write_table(table: pd.DataFrame, out: Path, name: str, caption: str) -> dict[str, Path]:
    """Markdown and LaTeX versions of one table as shown, and a CSV whose intervals are numbers (`numeric`)."""
    paths = {"md": out / f"{name}.md", "csv": out / f"{name}.csv", "tex": out / f"{name}.tex"}
    flat = table.reset_index() if any(n is not None for n in table.index.names) else table
    atomic_write_text(paths["md"], f"{caption}\n\n{flat.to_markdown(index=False)}\n")
    atomic_write_text(paths["csv"], numeric(flat).to_csv(index=False))
    # pandas escapes the cells but not the caption ('95 %' would comment out the rest of the line and
    # leave \caption{ open); Unicode arrows and minus signs do not compile under pdflatex.
    # The flat table (index as columns): a MultiIndex gave \cline between booktabs rules and an empty
    # header row. Wide tables span both columns of a two-column paper (table*), and every tabular shrinks
    # to the line width when wider (never grows).
    cells = flat.rename(columns=lambda c: latex_text(str(c))).map(latex_cell)
    latex = cells.to_latex(index=False, escape=False, caption=latex_text(caption), label=f"tab:{name}")
    latex = latex.replace("\\begin{tabular}", "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%\n\\begin{tabular}", 1)
    latex = latex.replace("\\end{tabular}\n", "\\end{tabular}}\n", 1)
    if len(flat.columns) > LATEX_ONE_COLUMN_MAX:
        latex = latex.replace("\\begin{table}", "\\begin{table*}", 1).replace("\\end{table}", "\\end{table*}", 1)
    atomic_write_text(paths["tex"], "% \\usepackage{booktabs,graphicx}\n" + latex)
    return paths


LATEX_ONE_COLUMN_MAX = 5  # columns that fit one column of a two-column paper; wider tables span both



def learning_rates_table(df: pd.DataFrame, results_dirs: list[Path], ctx: ReportContext = ReportContext()) -> tuple[str, pd.DataFrame]:
    """Each arm's learning rate (from its runs' run.json) beside the one `mode=tune` chose, if any."""
    import json

    from bench.paths import TUNING_JSON

    tuned = json.loads(TUNING_JSON.read_text()) if TUNING_JSON.is_file() else None
    labels = ctx.labels(df.assign(sweep=None))
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
        rows.append({"kind": "method", "name": name, "unit": "weight w", "direction": "", "definition": meaning, "images per run and weight": ""})
    per_image = images_per_run(df)
    for metric in quality_metrics(df):
        info = metric_info(metric)
        note = {"cmmd": "; an unbiased estimate, so slightly negative values mean 'indistinguishable'",
                "drift": "; 0 by construction for a method that leaves the UNet untouched (Textual Inversion)"}.get(metric, "")
        rows.append({"kind": "metric", "name": metric_name(metric), "unit": info.unit,
                     "direction": "higher is better" if higher_is_better(metric) else "lower is better", "definition": info.description + note,
                     "images per run and weight": per_image.get(metric, "")})
    return pd.DataFrame(rows).set_index(["kind", "name"])


def images_per_run(df: pd.DataFrame) -> dict[str, str]:
    """Per metric, how many images stand behind one run's value at one weight (docs/metrics.md): the
    rows a per-image metric has per run and weight, and for a set-level one (FD, CMMD: one row) the subject
    images it compares as a set with the instance images. A range where runs differ."""
    final = df[df.step.isna() & df.weight.notna() & (df.status.fillna("ok") == "ok")] if "step" in df else df
    counts = final.groupby(["metric", "run_id", "weight"]).size()
    subject = counts.get("clip_i") if "clip_i" in counts.index.get_level_values(0) else None

    def span(values) -> str:
        lo, hi = int(values.min()), int(values.max())
        return f"{lo}" if lo == hi else f"{lo}-{hi}"

    out = {}
    for metric in counts.index.get_level_values(0).unique():
        per_run = counts.loc[metric]
        if metrics_is_set_level(metric) and subject is not None:
            out[metric] = f"{span(subject)} generated vs the instance images, as sets"
        elif metric == "diversity":
            out[metric] = f"{span(per_run)} prompts, each over its generation seeds"
        else:
            out[metric] = span(per_run)
    return out


def metrics_is_set_level(metric: str) -> bool:
    """Metrics with one value per run and weight computed from the whole set of subject images."""
    from metrics import is_frechet

    return metric == "cmmd" or is_frechet(metric)



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


CURVE_METRICS = ("presence", "clip_i", "drift", "val_loss")



def curve_steps(full: pd.DataFrame) -> pd.DataFrame:
    """The sweep rows at weight 1 of every step a run was scored at: its checkpoints' rows (`step` set)
    and its final artifact's, given the run's last step (its loss rows count the steps it trained)."""
    last = full[full.metric == "train_loss"].groupby("run_id").step.max() + 1
    q = full[full.weight.notna() & np.isclose(full.weight.fillna(-9).astype(float), 1.0) & (full.status.fillna("ok") == "ok") & full.metric.isin(CURVE_METRICS)]
    q = q[q.run_id.isin(last.index)].copy()
    q["step"] = q.step.fillna(q.run_id.map(last)).astype("Int64")
    return q



def learning_curves(full: pd.DataFrame, ctx: ReportContext = ReportContext()) -> pd.DataFrame:
    """Per arm, metric and training step: mean at weight 1 over training runs with its 95 % hierarchical
    bootstrap interval. Empty unless some run saved checkpoints (`train.checkpoints`)."""
    if not records.checkpoint_rows(full).any():
        return pd.DataFrame()
    q = curve_steps(full)
    out = []
    for step, g in q.groupby("step"):
        # A step's rows as a table of their own (step cleared), summarised like any sweep at weight 1.
        for metric in CURVE_METRICS:
            s = stats.summarize(g.assign(step=pd.NA), metric, 1.0, settings=ctx.settings)
            out += [{**r, "step": int(step)} for r in s[s.scope == "overall"].to_dict("records")]
    return pd.DataFrame(out)



def learning_curve_table(full: pd.DataFrame, ctx: ReportContext = ReportContext(), curves: pd.DataFrame | None = None) -> tuple[str, pd.DataFrame]:
    """The curve as a table, and per arm whether the budget's last stretch still moved presence: the
    paired difference, run by run, between the final artifact and the checkpoint before it."""
    curves = learning_curves(full, ctx) if curves is None else curves  # `curves`: already computed (the report's figure uses them too)
    if curves.empty:
        return "", pd.DataFrame()
    labels = ctx.labels(full)
    q = curve_steps(full)
    # One row per arm and step (the metrics as columns): steps as columns made a table twice a page wide.
    rows = []
    for (model, method, config, sweep), g in sorted(curves.groupby(stats.ARM, dropna=False, sort=False),
                                                    key=lambda kv: method_rank(label_of(labels, *kv[0]))):
        label = label_of(labels, model, method, config, sweep)
        steps = sorted(g.step.unique())
        arm_rows = []
        for step in steps:
            row = {"method": label, "step": int(step)}
            for metric in CURVE_METRICS:
                r = g[(g.step == step) & (g.metric == metric)]
                if len(r):
                    row[metric_title(metric)] = format_ci(r["mean"].iloc[0], r.low.iloc[0], r.high.iloc[0])
            arm_rows.append(row)
        if len(steps) >= 2 and "presence" in set(g.metric):
            arm = q[(q.model == model) & (q.method == method) & (q.config == config) & (q.metric == "presence")]
            per_run = arm.groupby(["run_id", "step"]).value.mean().unstack()
            if steps[-2] in per_run.columns and steps[-1] in per_run.columns:
                gains = (per_run[steps[-1]] - per_run[steps[-2]]).dropna().to_numpy()
                mean, lo, hi = stats.t_interval(gains)
                arm_rows[-1]["presence change from the step before"] = format_ci(mean, lo, hi)
                arm_rows[-1]["last stretch"] = ("still rising" if lo > 0 else "falling" if hi < 0 else "no resolved change" if np.isfinite(lo) else "one run")
        rows += arm_rows
    table = pd.DataFrame(rows).set_index(["method", "step"]).fillna("")
    caption = ("Learning curves: presence, CLIP-I, drift and the validation loss at weight 1 of the artifact each training run saved part-way through its budget "
               "(train.checkpoints) and at its end, mean over training runs [95 % hierarchical bootstrap]. The same training, not retrained. "
               "Last stretch (on each method's last row): the paired change in presence, run by run, from the last checkpoint to the final artifact [95 % t-interval]: "
               "'still rising' when the interval is above 0 (the compared budget stops a method that was still learning), "
               "'no resolved change' when it includes 0 (not evidence of a plateau: with few runs a real rise can hide in it), 'falling' when below.")
    return caption, table



def failures(df: pd.DataFrame) -> pd.DataFrame:
    f = df[df.status.fillna("ok").str.startswith("failed")]
    if f.empty:
        return f
    return f.assign(stage=f.metric.str.replace("_failed", ""), error=f.status.str.replace("failed: ", "", n=1))[["method", "concept", "train_seed", "stage", "error"]].drop_duplicates().set_index(["method", "concept", "train_seed"])
