"""Edit a YAML file and keep its comments and formatting: ruamel.yaml's round trip, with the file's own
indentation.

ruamel.yaml keeps comments, key order, quotes and flow styles, but it writes one indentation style,
set before dumping. `RoundTrip` finds the file's style by trying the usual ones (mapping indent 2 or
4, block sequences flush or indented) and keeping the one whose dump of the unchanged document is
closest to the original text (identical, for files written in one consistent style). An edit then
changes only the lines it touches; `changed_lines` says how well the style was matched.
"""

from __future__ import annotations

import difflib
import io

from ruamel.yaml import YAML

# (mapping indent, sequence indent, sequence dash offset) candidates, most common first.
STYLES = ((2, 4, 2), (2, 2, 0), (4, 4, 0), (4, 6, 2), (4, 4, 2), (2, 3, 1))


def _yaml(style: tuple[int, int, int]) -> YAML:
    y = YAML()  # round trip
    y.preserve_quotes = True
    y.width = 4096  # never re-wrap long scalars (URIs, comments)
    mapping, sequence, offset = style
    y.indent(mapping=mapping, sequence=sequence, offset=offset)
    return y


def changed_lines(a: str, b: str) -> int:
    return sum(1 for line in difflib.unified_diff(a.splitlines(), b.splitlines(), n=0, lineterm="")
               if line[:1] in "+-" and not line.startswith(("+++", "---")))


class RoundTrip:
    """Load `text` once; `data` is the editable document, `dump()` writes it back in the file's style."""

    def __init__(self, text: str):
        self.text = text
        best = None
        for style in STYLES:
            y = _yaml(style)
            data = y.load(text)
            out = io.StringIO()
            y.dump(data, out)
            score = changed_lines(text, out.getvalue())
            if best is None or score < best[0]:
                best = (score, style)
            if score == 0:
                break
        self.style_mismatch = best[0]  # lines a no-op round trip would change (0: exact)
        self.style = best[1]
        self.yaml = _yaml(self.style)
        self.data = self.yaml.load(text)

    def dump(self, data=None) -> str:
        out = io.StringIO()
        self.yaml.dump(self.data if data is None else data, out)
        return out.getvalue()

    def load(self, text: str):
        """Parse another text with the same settings (line numbers of the result's keys: `.lc`)."""
        return self.yaml.load(text)


def unified_diff(old: str, new: str, path: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        fromfile=f"a/{path}", tofile=f"b/{path}"))
