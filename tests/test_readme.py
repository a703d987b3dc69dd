"""The README stays a first screen that tells the truth about the tree: its Layout names every top-level
entry and nothing that is gone, its method and metric tables name every method config and registered
metric, and every link of it and of docs/ leads to a file (and a heading) that exists."""

from __future__ import annotations

import re
from pathlib import Path

import metrics

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Generated or tool-made entries a clean clone does not have (.gitignore), and git's own.
NOT_IN_TREE = {".git", "__pycache__", ".pytest_cache", "outputs", "multirun", ".venv", ".benchmarks"}
MAX_README_LINES = 120


def section(text: str, title: str) -> str:
    match = re.search(rf"(?ms)^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def table_first_column(block: str) -> set[str]:
    rows = [line for line in block.splitlines() if line.startswith("| `")]
    return {re.match(r"\| `([^`]+)`", row).group(1) for row in rows}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def top_level_entries() -> set[str]:
    return {p.name for p in ROOT.iterdir() if p.name not in NOT_IN_TREE and not p.name.endswith(".egg-info") and (not p.name.startswith(".") or p.name == ".ci")}


def test_readme_fits_a_first_screen():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; details belong in docs/*.md"


def test_layout_names_every_top_level_entry_and_only_existing_ones():
    layout = section(README.read_text(), "Layout")
    block = layout.split("```")[1]
    # An entry is the first word of a line that is not indented: `bench/`, `run.py`, `.ci/run`.
    named = {line.split()[0].rstrip("/").split("/")[0] for line in block.splitlines() if line.strip() and not line[0].isspace()}
    assert named, "the Layout block names nothing"
    missing = top_level_entries() - named
    assert not missing, f"README Layout does not name {sorted(missing)}"
    gone = {n for n in named if not (ROOT / n).exists()}
    assert not gone, f"README Layout names {sorted(gone)}, which do not exist"
    # The sub-folders the bench/ entry names exist, and every sub-package of bench/ is named.
    bench_text = block[block.index("bench/"):block.index("methods/")]
    subfolders = set(re.findall(r"\b(\w+)/", bench_text)) - {"bench", "tests"}
    packages = {p.name for p in (ROOT / "bench").iterdir() if p.is_dir() and p.name not in NOT_IN_TREE}
    assert subfolders == packages, f"bench/ in the Layout names {sorted(subfolders)}; the tree has {sorted(packages)}"


def test_method_table_names_every_method_config():
    text = README.read_text()
    methods = section(text, "Methods")
    shipped = {p.stem for p in (ROOT / "conf" / "method").glob("*.yaml")}
    named = table_first_column(methods) | set(re.findall(r"`(\w+)`", methods.split("Also through peft:")[1].split("(")[0]))
    assert named == shipped, f"README's Methods names {sorted(named)}; conf/method has {sorted(shipped)}"


def test_metric_table_names_every_registered_metric():
    named = table_first_column(section(README.read_text(), "Metrics"))
    registered = {info.name for info in metrics.REGISTRY}
    assert named == registered, f"README's Metrics names {sorted(named)}; metrics.REGISTRY has {sorted(registered)}"


def test_every_docs_page_is_linked_and_every_link_resolves():
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    readme_links = set()
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"\w+://", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            assert file.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
            if anchor:
                headings = {slug(h) for h in re.findall(r"(?m)^#+ (.*)$", file.read_text())}
                assert anchor in headings, f"{page.relative_to(ROOT)} links to {target}: no such heading in {file.name}"
            if page == README:
                readme_links.add(file)
    unlinked = [p.name for p in pages[1:] if p not in readme_links]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"
