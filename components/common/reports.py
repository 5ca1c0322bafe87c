"""Step reports for people: Markdown files with PNG plots, rendered to self-contained HTML.

Steps write `report.md` next to their PNGs (readable locally and on GitHub). The KFP UI shows
artifacts in a sandboxed viewer that cannot follow relative links, so for it the report is rendered
to one HTML document with every image inlined as a data URI.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

from markdown_it import MarkdownIt

_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_STYLE = """<style>
body{font-family:system-ui,sans-serif;max-width:980px;margin:1.5em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;
vertical-align:top;font-size:13px}th{background:#f3f3f3}img{max-width:100%}code,pre{background:#f6f6f6}
pre{padding:8px;overflow-x:auto}
</style>"""


def inline_images(markdown: str, base_dir: Path) -> str:
    """Replace ![alt](relative.png) links with data URIs of the files under base_dir."""

    def replace(match: re.Match) -> str:
        alt, target = match.groups()
        path = base_dir / target
        if target.startswith(("http:", "https:", "data:")) or not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f"![{alt}](data:image/png;base64,{data})"

    return _IMAGE.sub(replace, markdown)


def markdown_to_html(markdown: str, title: str) -> str:
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>{_STYLE}</head>"
            f"<body>{body}</body></html>")


def report_html(report_md: Path, title: str) -> str:
    """A step's report.md as one self-contained HTML page (images inlined)."""
    return markdown_to_html(inline_images(report_md.read_text(), report_md.parent), title)
