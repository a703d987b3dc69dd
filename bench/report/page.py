"""The HTML page: the report's tables and figures in one self-contained file, rendered from templates/report.html.j2."""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path

import pandas as pd

from bench.io import atomic_write_text

log = logging.getLogger(__name__)


def resolved_config_html(runs: list[dict]) -> str:
    """The resolved config of the comparison (the first run's; the runs differ only in method and seed)."""
    if not runs:
        return ""
    import yaml

    text = yaml.safe_dump(runs[0].get("config", {}), sort_keys=False, default_flow_style=None, width=110)
    return f"<details><summary>Resolved config (as run; `run.json` of each training run has its own)</summary><pre>{html.escape(text)}</pre></details>"



def embed_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


# Read by the browser test: how many embedded images decoded, and the widest table against the page's
# text width (each table's own width, not its scrolling wrapper's), with that table's section id.
DECODE_PROBE = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
                "document.body.dataset.decoded=i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length;"
                "const t=[...document.querySelectorAll('table')].map(x=>[x.scrollWidth,(x.closest('section')||{}).id||'?']).sort((a,b)=>b[0]-a[0])[0]||[0,''];"
                "document.body.dataset.widestTable=t[0]+'/'+document.body.clientWidth+'/'+t[1];});</script>")



TEMPLATE = Path(__file__).resolve().parent / "templates" / "report.html.j2"


def table_html(table: pd.DataFrame) -> str:
    """A table as clean HTML: its index as ordinary columns (no second header row of index names)."""
    flat = table.reset_index() if not isinstance(table.index, pd.RangeIndex) else table
    html = flat.to_html(index=False, escape=True, border=0, na_rep="")
    # Numbers and intervals stay on one line; a table of sentences (definitions, provenance) wraps them.
    prose = any(flat[c].astype(str).str.len().max() > PROSE_CELL_CHARS for c in flat.columns if not pd.api.types.is_numeric_dtype(flat[c])) if len(flat) else False
    return f'<div class="prose">{html}</div>' if prose else html


PROSE_CELL_CHARS = 60  # a cell longer than this is text to wrap, not a number with its interval


def render_page(title: str, intro: str, parts: list[dict], out_file: Path) -> Path:
    """The page from templates/report.html.j2: `parts` in reading order, each {heading, sections}; a
    section has an id, heading and caption and a table (DataFrame) or a figure (PNG path, embedded), and
    optionally extra HTML after it."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(TEMPLATE.parent), autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    shown = []
    for part in parts:
        sections = []
        for s in part["sections"]:
            item = {"id": s["id"], "heading": s["heading"], "caption": s.get("caption", ""), "extra": s.get("extra", ""), "failed": s.get("failed", False)}
            if s.get("figure") is not None:
                item["figure"] = embed_png(Path(s["figure"]))
            else:
                item["table"] = table_html(s["table"])
            sections.append(item)
        if sections:
            shown.append({"heading": part["heading"], "sections": sections})
    page = env.get_template(TEMPLATE.name).render(title=title, intro=intro, parts=shown, probe=DECODE_PROBE)
    atomic_write_text(out_file, page)
    return out_file
