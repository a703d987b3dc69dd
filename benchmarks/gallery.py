"""The gallery under docs/: what the default run's report looks like, for a reader who has not installed
anything. One command regenerates it from a finished run:

    python benchmarks/gallery.py --results results/default [--write]

Writes docs/report_page.png (the report page as headless Chromium renders it at 1,400 px, its first
screens) and docs/summary.png (the report's summary figure). Needs Chromium (Debian: apt-get install
chromium); the report itself does not.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def chromium() -> str:
    found = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if found is None:
        sys.exit("gallery: no Chromium on this machine (Debian: apt-get install chromium)")
    return found


def screenshot(html: Path, png: Path, width: int = 1400, height: int = 2600) -> None:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
               f"--window-size={width},{height}", "--virtual-time-budget=5000", f"--screenshot={png}", html.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0 or not png.is_file():
        sys.exit(f"gallery: Chromium could not render {html} ({proc.returncode}): {proc.stderr[-1000:]}")


def main(argv: list[str] | None = None) -> None:
    from bench.models import skip_bitsandbytes

    skip_bitsandbytes()  # a benchmark never trains with 8-bit AdamW: no bitsandbytes import, no console line about it
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=ROOT / "results" / "default", help="a finished run's results dir (its report/ is shown)")
    p.add_argument("--write", action="store_true", help="write docs/report_page.png and docs/summary.png (else into a temporary folder)")
    args = p.parse_args(argv)
    report = args.results.resolve() / "report"
    html, summary = report / "report.html", report / "figures" / "infographic.png"
    if not html.is_file():
        sys.exit(f"gallery: {html} does not exist; run the comparison first (python run.py results_dir={args.results})")
    out = DOCS if args.write else Path(tempfile.mkdtemp(prefix="gallery_"))
    out.mkdir(parents=True, exist_ok=True)
    screenshot(html, out / "report_page.png")
    if summary.is_file():
        shutil.copyfile(summary, out / "summary.png")
    print(f"gallery: {out / 'report_page.png'}" + (f", {out / 'summary.png'}" if summary.is_file() else ""))


if __name__ == "__main__":
    main()
