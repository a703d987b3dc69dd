"""Assertions several test files share."""

from __future__ import annotations

import numpy as np

# CPU matrix and attention kernels block their sums by batch size and thread count, so the same image made in
# another batch layout differs in the last float bits; guidance amplifies that over the denoising steps into
# a pixel level here and there, at one thread into two or three on a few pixels. A real fault (a sample given
# another sample's strength, a layer left at full strength) moves most pixels by tens or hundreds of levels.
ROUNDING_MAX_LEVELS = 3
ROUNDING_MAX_SHARE_OFF_BY_MORE_THAN_ONE = 0.01


def levels_apart(a, b) -> tuple[int, float]:
    """(largest difference in 8-bit levels, share of values more than one level apart) of two images."""
    diff = np.abs(np.asarray(a).astype(np.int16) - np.asarray(b).astype(np.int16))
    return int(diff.max()), float((diff > 1).mean())


def assert_same_image_up_to_rounding(a, b, what, *, also_allowed: tuple[int, float] = (0, 0.0)) -> None:
    """`a` and `b` (PIL images or arrays of 8-bit levels) are one image made in two batch layouts.
    `also_allowed`: a difference the reference itself shows between two of its own batch layouts (an
    extrapolated weight can make generation chaotic, so that rounding alone moves many pixels)."""
    most, share = levels_apart(a, b)
    allowed = (ROUNDING_MAX_LEVELS + also_allowed[0], ROUNDING_MAX_SHARE_OFF_BY_MORE_THAN_ONE + also_allowed[1])
    assert most <= allowed[0] and share <= allowed[1], (
        f"{what}: {most} levels apart at most, {share:.2%} of values more than one level apart "
        f"(allowed: {allowed[0]} and {allowed[1]:.2%}, rounding plus the reference's own spread across batch layouts {also_allowed})")


# A paper's preamble as the exported tables' first line names it: two columns, booktabs rules, graphicx.
LATEX_PAPER = "\\documentclass[twocolumn]{article}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n\\begin{document}\n%s\n\\end{document}\n"


def latex_errors_in_a_paper(tex, folder) -> list[str]:
    """pdflatex's error lines for `tex` (a table file) \\input into a minimal two-column paper; [] when it
    compiles. The caller skips where pdflatex is missing."""
    import subprocess
    from pathlib import Path

    doc = Path(folder) / f"{Path(tex).stem}_paper.tex"
    doc.write_text(LATEX_PAPER % f"\\input{{{tex}}}")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=folder,
                          capture_output=True, text=True, timeout=120)
    return [] if done.returncode == 0 else [line for line in done.stdout.splitlines() if line.startswith("!")][:3] or [done.stdout[-2000:]]
