"""Render Ollama (Go text/template) chat templates, for the Modelfile tests.

`render_go` runs the real Go text/template when a `go` toolchain is on PATH (as Ollama does);
`render_subset` is a small Python interpreter of the subset kubetune emits (range .Messages,
if/else if/else with `eq .Role "..."`, .Role, .Content, string literals, {{- -}} trimming), used
when Go is absent. Both render with Ollama's data shape: {"Messages": [{"Role", "Content"}]}.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.S)

GO_MAIN = """package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct{ Role, Content string }

func main() {
	src, _ := os.ReadFile(os.Args[1])
	var msgs []Message
	data, _ := os.ReadFile(os.Args[2])
	if err := json.Unmarshal(data, &msgs); err != nil { panic(err) }
	t := template.Must(template.New("t").Parse(string(src)))
	if err := t.Execute(os.Stdout, map[string]any{"Messages": msgs}); err != nil { panic(err) }
}
"""


def go_available() -> bool:
    return shutil.which("go") is not None


def render_go(template: str, messages: list[dict], work: Path) -> str:
    work.mkdir(parents=True, exist_ok=True)
    (work / "main.go").write_text(GO_MAIN)
    (work / "t.tmpl").write_text(template)
    (work / "m.json").write_text(json.dumps([{"Role": m["role"], "Content": m["content"]} for m in messages]))
    env = {"GOCACHE": str(work / "gocache"), "GOPATH": str(work / "gopath"), "HOME": str(work),
           "PATH": "/usr/bin:/bin:/usr/local/go/bin:/usr/lib/go/bin", "GO111MODULE": "off"}
    out = subprocess.run(["go", "run", str(work / "main.go"), str(work / "t.tmpl"), str(work / "m.json")],
                         capture_output=True, text=True, env=env, cwd=work, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return out.stdout


def _tokens(template: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    for m in ACTION.finditer(template):
        text = template[pos:m.start()]
        if m.group(1):
            text = text.rstrip()
        if tokens and tokens[-1][0] == "trim_next":
            tokens.pop()
            text = text.lstrip()
        tokens.append(("text", text))
        tokens.append(("action", m.group(2)))
        if m.group(3):
            tokens.append(("trim_next", ""))
        pos = m.end()
    text = template[pos:]
    if tokens and tokens[-1][0] == "trim_next":
        tokens.pop()
        text = text.lstrip()
    tokens.append(("text", text))
    return tokens


def _value(expr: str, dot: dict) -> str:
    if expr.startswith('"'):
        return json.loads(expr)
    if expr in (".Role", ".Content"):
        return dot[expr[1:]]
    raise ValueError(f"unsupported expression {expr!r}")


def _cond(expr: str, dot: dict) -> bool:
    m = re.fullmatch(r'eq \.Role ("[^"]*")', expr)
    if not m:
        raise ValueError(f"unsupported condition {expr!r}")
    return dot["Role"] == json.loads(m.group(1))


def _parse(tokens: list, i: int, stops: tuple[str, ...]) -> tuple[list, int]:
    nodes = []
    while i < len(tokens):
        kind, val = tokens[i]
        if kind == "text":
            nodes.append(("text", val))
            i += 1
        elif val == "end" or val == "else" or val.startswith("else if ") or val in stops:
            return nodes, i
        elif val == "range .Messages":
            body, i = _parse(tokens, i + 1, ())
            assert tokens[i][1] == "end", tokens[i]
            nodes.append(("range", body))
            i += 1
        elif val.startswith("if "):
            branches, cond = [], val[3:]
            while True:
                body, i = _parse(tokens, i + 1, ())
                branches.append((cond, body))
                nxt = tokens[i][1]
                if nxt == "end":
                    break
                cond = nxt[len("else if "):] if nxt.startswith("else if ") else None
            nodes.append(("if", branches))
            i += 1
        else:
            nodes.append(("value", val))
            i += 1
    return nodes, i


def _exec(nodes: list, data: dict, dot: dict, out: list[str]) -> None:
    for kind, val in nodes:
        if kind == "text":
            out.append(val)
        elif kind == "value":
            out.append(_value(val, dot))
        elif kind == "range":
            for m in data["Messages"]:
                _exec(val, data, m, out)
        elif kind == "if":
            for cond, body in val:
                if cond is None or _cond(cond, dot):
                    _exec(body, data, dot, out)
                    break


def render_subset(template: str, messages: list[dict]) -> str:
    nodes, i = _parse(_tokens(template), 0, ())
    assert i == len(_tokens(template)), "unbalanced template"
    out: list[str] = []
    _exec(nodes, {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}, {}, out)
    return "".join(out)


def modelfile_template(text: str) -> str:
    """The TEMPLATE \"\"\"...\"\"\" of a Modelfile."""
    m = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M)
    assert m, "no TEMPLATE in the Modelfile"
    return m.group(1)
