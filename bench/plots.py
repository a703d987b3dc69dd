"""Plotting helpers every figure shares (the report's, mode=estimate's, mode=tune's): one backend, one
palette and method order, one way to save a figure, so the same method has the same colour everywhere."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402, F401 (the report's log axes)
import numpy as np  # noqa: E402

from bench.io import atomic_path  # noqa: E402

# Print sizes: every chart is drawn at a paper's column width (inches), with font sizes that read at that
# size in print (7-8.5 pt), so a figure goes into a two-column paper unscaled; the PDF embeds its fonts
# (TrueType, fonttype 42) and the SVG draws glyphs as paths. The PNG is the same figure for screens.
SINGLE_COLUMN = 3.4
DOUBLE_COLUMN = 7.0
matplotlib.rcParams.update({
    "font.size": 7.5, "axes.titlesize": 8, "axes.labelsize": 7.5, "xtick.labelsize": 6.5, "ytick.labelsize": 6.5,
    "legend.fontsize": 6.5, "figure.titlesize": 8.5, "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "path",
})
PNG_DPI = 220  # a double-column figure is about 1,500 px wide on screen
NO_DATE = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}  # the same figure gives the same vector file

# Okabe-Ito: distinguishable with the common forms of colour blindness.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]


def method_rank(label: str) -> tuple:
    """Methods by their class's `display_order` (methods.display_order), then by name; a family's members in
    natural order ('rank=4' before 'rank=16')."""
    from methods import display_order

    base = base_method(label)
    natural = tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", label))
    return (display_order(base), natural)


def base_method(label: str) -> str:
    """The method a label names ('lora' in 'micro: lora rank=16 (sweep ab12)')."""
    return label.split(": ")[-1].split(" ")[0]


def shipped_methods() -> list[str]:
    """Every method with a config in conf/method/, in display order."""
    from bench.paths import METHOD_CONF_DIR

    return sorted((p.stem for p in METHOD_CONF_DIR.glob("*.yaml")), key=method_rank)


def colours(labels: list[str]) -> dict[str, str]:
    """One colour per label, the same for a method in every figure whichever others it shares it with: a
    shipped method's first label takes its own palette slot (by display order: DreamBooth blue, Textual
    Inversion orange, LoRA green, the hypernetwork pink, ...); further members of a family and methods
    without a shipped config take the free slots in turn."""
    slots = {m: PALETTE[i] for i, m in enumerate(shipped_methods()[: len(PALETTE)])}
    out: dict[str, str] = {}
    for label in sorted(labels, key=method_rank):
        own = slots.get(base_method(label))
        if own is not None and own not in out.values():
            out[label] = own
    free = [c for c in PALETTE if c not in out.values() and c not in {slots.get(base_method(lb)) for lb in labels}] or PALETTE
    for i, label in enumerate(lb for lb in sorted(labels, key=method_rank) if lb not in out):
        out[label] = free[i % len(free)]
    return out


def save_figure(fig, out: Path, name: str) -> Path:
    """PNG (screens), SVG and PDF (vector, fonts embedded) of one figure, each written atomically."""
    png = out / f"{name}.png"
    for ext in ("png", "svg", "pdf"):
        with atomic_path(out / f"{name}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=PNG_DPI, bbox_inches="tight", metadata=NO_DATE.get(ext))
    plt.close(fig)
    return png


def wrapped(text: str, width: int = 110) -> str:
    """A figure title broken into lines that fit a double-column figure at the title size."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """Which (cost, quality) points no other point beats: at most the cost and at least the quality, one of
    the two strictly (lower cost is better, higher quality is better)."""
    return [not any(c2 <= c and q2 >= q and (c2 < c or q2 > q) for c2, q2 in points) for c, q in points]


def resolved_front(costs: list[float], beats) -> list[bool]:
    """Which points no other point beats with evidence: j beats i when it costs at most what i costs and
    `beats(j, i)` (its quality is better by a resolved difference). A point better only by an unresolved
    margin beats nothing, so with no resolved difference every point stays unbeaten."""
    n = len(costs)
    return [not any(j != i and costs[j] <= costs[i] and beats(j, i) for j in range(n)) for i in range(n)]


def human_bytes(n: float) -> str:
    if not np.isfinite(n):
        return ""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"
