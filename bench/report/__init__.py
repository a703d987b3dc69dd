"""Tables, figures and an HTML report, rebuilt from the tidy results table alone.

    python -m bench.report RESULTS_DIR [MORE_RESULTS_DIRS ...] [--out DIR]

Nothing is recomputed: every number comes from `rows/*.parquet`, every picture from `images/`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from bench import records, stats, validity
from bench.plots import method_rank, pareto
from bench.report.figures import GRID_RULE, cost_figure, curves_figure, frontier_figure, infographic, instance_figure, learning_curve_figure, loss_figure, tradeoff_figure, xy_grids
from bench.report.labels import ReportContext, arm_labels, config_descriptions, label_of, run_records
from bench.report.page import render_page, resolved_config_html
from bench.report.tables import learning_curves
from bench.report.tables import curve_steps, format_ci, latex_text, metric_title
from bench.report.tables import best_weight_table, blank_table, cost_table, definitions_table, failures, learning_curve_table, learning_rates_table, measured_and_proxy_columns, paired_table, per_concept_table, prompts_table, provenance_table, quality_table, ranking_table, validity_table, write_table
from metrics import title as metric_name

# What other modules and the tests use from the report (the rest is internal to its modules).
__all__ = ["build_report", "main", "ReportContext", "arm_labels", "label_of", "config_descriptions", "method_rank", "pareto", "curve_steps", "format_ci", "latex_text",
           "metric_title", "best_weight_table", "cost_table", "learning_curve_table", "per_concept_table", "quality_table", "write_table"]
log = logging.getLogger(__name__)


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
    runs = run_records(results_dirs)
    ctx = ReportContext.of_runs(runs, settings)  # labels say 'lora rank=16', not a hash
    if not (df.metric == validity.GROUND_TRUTH).any():
        intro += (" No concept-presence oracle judged these images (it knows only the micro world's concepts): the fidelity metrics below are "
                  "similarities, validated against ground truth only in the micro world (results/benchmarks/metric_validity.md).")
    fig_dir = out / "figures"
    title = metric_name(fidelity)
    has_fidelity = (q.metric == fidelity).any()
    # The page in reading order: the answer first, then what it cost and how it moved, then where it came from.
    results, detail, about = [], [], []

    def table(where: list, heading: str, name: str, caption: str, frame: pd.DataFrame, export: bool = True, **extra) -> None:
        if len(frame):
            if export:
                write_table(frame, out / "tables", name, caption)
            where.append({"id": name, "heading": heading, "caption": caption, "table": frame, **extra})

    def figure(where: list, heading: str, name: str, caption: str, path) -> None:
        if path:
            where.append({"id": f"figure-{name}", "heading": heading, "caption": caption, "figure": path})

    prompt_texts = prompts_table(df, results_dirs)
    grids = xy_grids(df, results_dirs, fig_dir, dict(prompt_texts.text.items()) if len(prompt_texts) else {}, fidelity, ctx)
    grid_note = (GRID_RULE.format(metric=metric_name(fidelity)) + "; the same prompt and noise in every cell, so a column differs only by what each "
                 "method learned. Textual Inversion's weight 0 is its initializer word in place of the token, so its w=0 cell is the base model "
                 "drawing that word, not the prompt as written.")
    table(results, "Failed runs", "failed", "Runs or stages that failed, with their error; their method has fewer runs in the tables below.", failures(df), failed=True)
    if has_fidelity:
        table(results, "Ranking", "ranking", f"Methods ordered by {title} at weight 1; 'vs. next rank' says whether the paired difference "
              "to the method ranked below is resolved; 'resolved wins': how many methods it beats with a resolved difference; equal means (as printed) "
              "share a rank.", ranking_table(df, fidelity, ctx))
        quality = quality_table(df, ctx)
        measured, proxies, other = measured_and_proxy_columns(quality, df) if len(quality) else ([], [], [])
        caption = "The primary table: every metric at weight 1, mean over training runs [95 % interval], overall and per concept kind"
        if len(measured) > 2 and len(proxies) > 2:  # shown in parts, exported whole (tables/quality.*)
            write_table(quality, out / "tables", "quality", caption + ".")
            table(results, "Quality at weight 1", "quality", caption + "; first what is measured directly (the oracle's ground truth, pixel "
                  "checks), then the proxies read in a feature space or by the model (below). The exported table (tables/quality.*) holds them all.",
                  quality[measured], export=False)
            table(results, "Quality at weight 1: proxies", "quality-proxies", "The same runs' proxies at weight 1 (CLIP, Inception feature "
                  "spaces), mean over training runs [95 % interval]: how far each agrees with the oracle is in 'Metric validity'.",
                  quality[proxies], export=False)
            if len(other) > 2:
                dino = any("DINO" in c or "dino" in c for c in other)
                table(results, "Quality at weight 1: " + ("DINO and the model's own loss" if dino else "the model's own loss"), "quality-model",
                      "The same runs at weight 1" + (" in DINO's feature space (DINO-I, DINO drift, FD) and" if dino else ":")
                      + " the validation loss on fixed noise (the model's own objective on held-out images, never trained on), mean over "
                      "training runs [95 % interval]; docs/metrics.md in the repository says how each is computed.", quality[other], export=False)
        else:
            table(results, "Quality at weight 1", "quality", caption + ".", quality)
    info = infographic(df, fidelity, grids[0] if grids else None, fig_dir, ctx)
    figure(results, "Summary", "summary", f"Cost and quality at weight 1 per method, with the image grid {grids[0].stem.removeprefix('grid_')} "
           f"(shown only here; its file is in figures/ with the others): {grid_note}" if grids else "Cost and quality at weight 1 per method.", info)
    if has_fidelity:
        table(results, f"Paired differences ({title} at weight 1)", "paired",
              "Every two methods on the training runs they share (same concept and training seed): mean difference a − b [95 % interval], "
              "the share of runs where a is better (a tie counts half; ties: how many), p from the same resamples; "
              f"verdict by one rule: {stats.DECISION_RULE}.", paired_table(df, fidelity, ctx))
        table(results, f"Per concept ({title})", "per_concept", f"{title} per concept at weight 0 "
              "(the base model) and 1, mean over the concept's training runs [95 % interval over training seeds].", per_concept_table(df, fidelity, ctx))
        table(results, "Best weight (held out)", "best_weight", f"Each method's best weight by {title}, chosen on half of the generation seeds "
              "and reported on the other half, so the choice and the number never come from the same images.", best_weight_table(df, fidelity, ctx))
    curves = learning_curves(full, ctx)  # bootstrapped once, for the table and the figure
    table(results, "Learning curves", "learning_curves", *learning_curve_table(full, ctx, curves))
    figure(results, "Learning curves against training steps", "learning_curves", "Quality at weight 1 against training steps: whether each method "
           "has levelled off at the compared budget (the table 'Learning curves' tests the last stretch).", learning_curve_figure(full, fig_dir, ctx, curves))

    table(detail, "Cost", "cost", "Cost of training under identical conditions: mean over training runs [95 % interval]. Training memory is the run's own peak "
          "(CUDA: max_memory_allocated; CPU: peak of live tensors, model weights included); the process peak RSS is beside it. "
          "Other load: cores that other processes (the run's other workers included) kept busy while the run trained; "
          "times measured while threads plus other load exceeded the cores are inflated.", cost_table(df, ctx))
    if has_fidelity:
        figure(detail, "Cost against quality", "frontier", f"What each method costs against what it gives ({title} at weight 1): the ringed methods "
               "are those no method as cheap beats by a resolved paired difference; none is ringed when no difference is resolved.", frontier_figure(df, fidelity, fig_dir, ctx))
    figure(detail, "Training cost", "cost", "Training cost per method (mean over training runs).", cost_figure(df, fig_dir, ctx))
    figure(detail, "Metrics against adapter weight", "curves", "Each metric against adapter weight; weight 0 is the base model.", curves_figure(df, fig_dir, ctx))
    figure(detail, "Fidelity against text alignment", "tradeoff", "Subject fidelity against text alignment along each method's weight path.", tradeoff_figure(df, fig_dir, ctx))
    figure(detail, "Training loss", "loss", "Training loss per method against step (running mean), over all training runs.", loss_figure(df, fig_dir, ctx=ctx))
    table(detail, "Metric validity (against the oracle)", "validity", *validity_table(df, ctx))
    table(detail, "Degenerate images", "blank", "Blank or uniform images (what a NaN or collapsed generation decodes to; judged by pixels: under 1 % of "
          "pixels away from the median colour), per adapter weight, over every prompt, generation seed and training run.", blank_table(df, ctx))
    figure(detail, "Instance images", "instances", "The instance images of each concept, as every method trained on them.", instance_figure(df, results_dirs, fig_dir))
    for g in (grids[1:] if info else grids):
        name = g.stem.removeprefix("grid_")
        figure(detail, f"Image grid {name}", f"grid-{name}", f"Image grid {name}: rows are methods, columns adapter weights; {grid_note}", g)

    table(about, "Provenance", "provenance", "What produced this report: code, packages, hardware, date, and how many concepts, runs and seeds "
          "stand behind every number.", provenance_table(df, runs), extra=resolved_config_html(runs))
    table(about, "Definitions", "definitions", "What adapter weight w does in each method, and each metric's unit, direction and definition.", definitions_table(df, runs))
    table(about, "Prompts", "prompts", "The sweep's prompts as written (Textual Inversion reads its placeholder where the token is).", prompt_texts)
    table(about, "How the learning rates were chosen", "learning_rates", *learning_rates_table(df, results_dirs, ctx))
    parts = [{"heading": "Results", "sections": results}, {"heading": "Cost, curves and images", "sections": detail},
             {"heading": "About these numbers", "sections": about}]
    return render_page("adapterbench report", intro, parts, out / "report.html")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.report", description="Rebuild the report from results directories, recomputing nothing.")
    p.add_argument("results_dirs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=None, help="default: FIRST_RESULTS_DIR/report")
    args = p.parse_args(argv)
    print(build_report(args.results_dirs, args.out))
