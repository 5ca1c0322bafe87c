"""The eval report: `eval_chart.png` (base vs tuned bars), `report.md` and a self-contained `report.html`.

Both documents show the gate verdict with the reason for every check, warnings about metrics that do
not fit the data, the metric table (base, tuned, delta, and n: the examples each metric was computed
on), how many examples were multi-turn (only their last assistant turn is evaluated), the general-set
regression, the lm-eval status and a side-by-side table of sample generations
(prompt, reference, base output, tuned output). The HTML inlines the chart as a data URI so it can be
opened anywhere (the KFP UI's sandboxed viewer cannot follow relative links).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from components.common.plots import grouped_bar_png
from components.eval.metrics import LOWER_IS_BETTER

CHART = "eval_chart.png"
MAX_CELL = 600  # characters of a prompt or output shown in a table cell


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def _delta(entry: dict) -> str:
    d = entry.get("delta")
    if d is None:
        return "n/a"
    return f"{d:+.4f}" if abs(d) < 1000 else f"{d:+.1f}"


def chart(results: dict, path: Path) -> Path:
    rates, ppl = {}, {}
    for name, entry in results["metrics"].items():
        target = ppl if name in LOWER_IS_BETTER else rates
        target[name.replace("perplexity", "ppl") if target is ppl else name] = {
            "base": entry.get("base"), "tuned": entry.get("tuned")}
    panels = {"Scores (higher is better)": rates}
    if ppl:
        panels["Perplexity (lower is better, log)"] = ppl
    return grouped_bar_png(panels, path, title="Base vs tuned", log_scale=["Perplexity (lower is better, log)"])


def _short(text: str) -> str:
    text = text or ""
    return text if len(text) <= MAX_CELL else text[:MAX_CELL] + " …"


def _md_cell(text: str) -> str:
    return html.escape(_short(text), quote=False).replace("|", "&#124;").replace("\n", "<br>") or " "


def multi_turn_line(results: dict) -> str:
    return (f"Only the last assistant turn of each conversation is evaluated: {results['multi_turn_examples']} of "
            f"{results['num_examples']} test examples are multi-turn (their earlier turns are context only).")


def markdown(results: dict, gate: dict, samples: list[dict]) -> str:
    verdict = "PASSED" if gate["passed"] else "FAILED"
    s = results["settings"]
    out = [f"# Eval: base vs tuned ({results['models']['kind']})", "",
           f"**Gate: {verdict}**", "", "| check | metric | value | threshold | result | reason |",
           "|---|---|---|---|---|---|"]
    for c in gate["checks"]:
        out.append(f"| {c['name']} | {c['metric']} | {_fmt(c['value'])} | {_fmt(c['threshold'])} | "
                   f"{'pass' if c['passed'] else 'FAIL'} | {_md_cell(c['reason'])} |")
    out.append("")
    for w in results["warnings"]:
        out += [f"**Warning:** {w}", ""]
    out += [f"Base `{results['models']['base']}`, tuned `{results['models']['tuned']}`; "
            f"{results['num_examples']} test examples from `{results['dataset']}`"
            + (f" ({results['skipped_text_records']} plain-text records skipped)"
               if results["skipped_text_records"] else "")
            + f"; greedy decoding, max_new_tokens {s['max_new_tokens']}, batch {s['batch_size']}, "
            f"{results['models']['dtype']} on {results['models']['device']}, {results['seconds']:.0f} s.", "",
            multi_turn_line(results), "",
            "| metric | base | tuned | delta | n |", "|---|---|---|---|---|"]
    for name, e in results["metrics"].items():
        arrow = " (lower is better)" if name in LOWER_IS_BETTER else ""
        out.append(f"| {name}{arrow} | {_fmt(e.get('base'))} | {_fmt(e.get('tuned'))} | {_delta(e)} | "
                   f"{e.get('n', 'n/a')} |")
    gen = results["generation"]
    out += ["", f"Generations that hit max_new_tokens without stopping: base {gen['base']['truncated']}, "
            f"tuned {gen['tuned']['truncated']} of {results['num_examples']}.", "", f"![base vs tuned]({CHART})",
            ""]
    general = results.get("general")
    if general:
        out += ["## General-capability regression", "",
                f"Perplexity on `{general['uri']}` ({general['num_examples']} examples, {general['tokens']} "
                f"reference tokens): base {_fmt(general['base'])}, tuned {_fmt(general['tuned'])}, "
                f"**{general['regression_pct']:+.2f}%**.", ""]
    lm = results["lm_eval"]
    out += ["## lm-evaluation-harness", "", _lm_eval_text(lm), ""]
    out += [f"## Sample generations ({len(samples)} of {results['num_examples']}; all in samples.jsonl)", "",
            "| # | prompt | reference | base | tuned |", "|---|---|---|---|---|"]
    for smp in samples:
        out.append(f"| {smp['index']} | {_md_cell(smp['question'])} | {_md_cell(smp['reference'])} | "
                   f"{_md_cell(smp['base'])} | {_md_cell(smp['tuned'])} |")
    return "\n".join(out) + "\n"


def _lm_eval_text(lm: dict) -> str:
    if lm["status"] == "not_requested":
        return "No tasks requested (eval.lm_eval_tasks is empty)."
    if lm["status"] == "skipped":
        return f"Skipped tasks {', '.join(lm['tasks'])}: {lm['reason']}"
    rows = [f"{t}: base {_fmt(v.get('base'))}, tuned {_fmt(v.get('tuned'))}" for t, v in lm["results"].items()]
    return "; ".join(rows)


def page(results: dict, gate: dict, samples: list[dict], chart_path: Path) -> str:
    """The same content as report.md as one HTML page, samples side by side, the chart inlined."""
    e = html.escape
    verdict = "PASSED" if gate["passed"] else "FAILED"
    color = "#1a7f37" if gate["passed"] else "#cf222e"
    img = base64.b64encode(chart_path.read_bytes()).decode() if chart_path.is_file() else ""
    checks = "".join(
        f"<tr><td>{e(c['name'])}</td><td>{e(c['metric'])}</td><td>{_fmt(c['value'])}</td>"
        f"<td>{_fmt(c['threshold'])}</td><td>{'pass' if c['passed'] else '<b>FAIL</b>'}</td>"
        f"<td>{e(c['reason'])}</td></tr>" for c in gate["checks"])
    metrics = "".join(
        f"<tr><td>{e(n)}{' (lower is better)' if n in LOWER_IS_BETTER else ''}</td><td>{_fmt(m.get('base'))}"
        f"</td><td>{_fmt(m.get('tuned'))}</td><td>{_delta(m)}</td><td>{m.get('n', 'n/a')}</td></tr>"
        for n, m in results["metrics"].items())
    warnings = "".join(f"<p><b>Warning:</b> {e(w)}</p>" for w in results["warnings"])
    rows = "".join(
        f"<tr><td>{s['index']}</td><td><pre>{e(_short(s['question']))}</pre></td>"
        f"<td><pre>{e(_short(s['reference']))}</pre></td><td><pre>{e(_short(s['base']))}</pre></td>"
        f"<td><pre>{e(_short(s['tuned']))}</pre></td></tr>" for s in samples)
    general = results.get("general")
    general_html = (f"<h2>General-capability regression</h2><p>Perplexity on <code>{e(general['uri'])}</code>: "
                    f"base {_fmt(general['base'])}, tuned {_fmt(general['tuned'])}, "
                    f"<b>{general['regression_pct']:+.2f}%</b></p>") if general else ""
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:1.5em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0;width:100%}th,td{border:1px solid #ccc;padding:4px 6px;"
             "text-align:left;vertical-align:top;font-size:13px}th{background:#f3f3f3}"
             "pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:12px}img{max-width:100%}")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>kubetune eval</title>"
        f"<style>{style}</style></head><body><h1>Eval: base vs tuned ({e(results['models']['kind'])})</h1>"
        f"<p style='font-size:1.3em;color:{color}'><b>Gate: {verdict}</b></p>"
        "<table><tr><th>check</th><th>metric</th><th>value</th><th>threshold</th><th>result</th><th>reason</th>"
        f"</tr>{checks}</table>{warnings}<p>{results['num_examples']} test examples; base <code>"
        f"{e(results['models']['base'])}</code>, tuned <code>{e(results['models']['tuned'])}</code></p>"
        f"<p>{e(multi_turn_line(results))}</p>"
        f"<table><tr><th>metric</th><th>base</th><th>tuned</th><th>delta</th><th>n</th></tr>{metrics}</table>"
        + (f"<img alt='base vs tuned' src='data:image/png;base64,{img}'>" if img else "")
        + general_html + f"<h2>lm-evaluation-harness</h2><p>{e(_lm_eval_text(results['lm_eval']))}</p>"
        f"<h2>Sample generations</h2><table><tr><th>#</th><th>prompt</th><th>reference</th><th>base</th>"
        f"<th>tuned</th></tr>{rows}</table></body></html>\n")


def write(results: dict, gate: dict, samples: list[dict], output_dir: Path) -> dict[str, Path]:
    chart_path = chart(results, output_dir / CHART)
    md = output_dir / "report.md"
    md.write_text(markdown(results, gate, samples), encoding="utf-8")
    page_path = output_dir / "report.html"
    page_path.write_text(page(results, gate, samples, chart_path), encoding="utf-8")
    return {"chart": chart_path, "markdown": md, "html": page_path}
