"""stats.json, token_lengths.png and report.md: what happened to the data, for people and for lineage.

Everything here is a pure function of the counts, so the files are byte-identical across reruns (no
timestamps, no absolute temp paths beyond the input URIs the caller chose).
"""

from __future__ import annotations

import math
from pathlib import Path

# (key, what the count means): records remaining after each stage, in order.
STAGES = [
    ("read", "records read (including unparseable lines)"),
    ("valid", "passed validation"),
    ("unique", "after exact-duplicate removal"),
    ("near_unique", "after near-duplicate removal"),
    ("within_length", "after the token-length filter"),
    ("mixed", "after mixing by weight (and max_records)"),
    ("train", "train split"),
    ("test_split", "test split, before decontamination"),
    ("test", "test split, after decontamination"),
]
PERCENTILES = (50, 90, 95, 99)
PLOT_NAME = "token_lengths.png"


def percentiles(values: list[int]) -> dict[str, int]:
    """Nearest-rank percentiles (always an observed length) plus count, max and mean."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    out = {"count": len(ordered)}
    for p in PERCENTILES:
        out[f"p{p}"] = ordered[max(math.ceil(p / 100 * len(ordered)) - 1, 0)]
    out["max"] = ordered[-1]
    out["mean"] = round(sum(ordered) / len(ordered), 1)
    return out


def plot(train: list[int], test: list[int], max_seq_len: int, path: Path) -> Path:
    from components.common.plots import histogram_png  # matplotlib: imported when a plot is drawn

    return histogram_png({f"train ({len(train)})": train, f"test ({len(test)})": test}, path,
                         title="Tokens per record (prompt + completion)", xlabel="tokens",
                         vline=max_seq_len, vline_label=f"max_seq_len {max_seq_len}", ylabel="records")


def console_summary(stats: dict) -> list[str]:
    """What `kubetune prepare` prints about lost records: the bad ones prepare.policy skipped, each reason
    with its count and first location, then the deliberate removals (duplicates, length, mixing)."""
    from components.prepare.problems import POLICY_KINDS

    drops = stats["drops"]

    def first(d: dict) -> str:
        ex = d["examples"][0]
        return f"{ex['where']}: {ex['detail']}" if ex.get("detail") else ex["where"]

    def ordered(kinds) -> list[tuple[str, dict]]:
        return sorted(((k, d) for k, d in drops.items() if k in kinds), key=lambda kd: (-kd[1]["count"], kd[0]))

    lines = []
    bad = ordered(POLICY_KINDS)
    if bad:
        total = sum(d["count"] for _, d in bad)
        lines.append(f"dropped {total} bad record{'s' if total != 1 else ''} (prepare.policy: skip): "
                     + ", ".join(f"{d['count']} {k}" for k, d in bad))
        lines += [f"  {k}: {d['count']}, first {first(d)}" for k, d in bad]
    removed = ordered(set(drops) - set(POLICY_KINDS) - {"truncated"})
    if removed:
        total = sum(d["count"] for _, d in removed)
        lines.append(f"removed {total} record{'s' if total != 1 else ''}: "
                     + ", ".join(f"{d['count']} {k}" for k, d in removed) + " (examples in report.md)")
    if "truncated" in drops:
        lines.append(f"truncated {drops['truncated']['count']} record(s) to max_seq_len "
                     f"{stats['settings']['max_seq_len']}")
    return lines


def _cell(text: str) -> str:
    """Text for a table cell: a bare | would end the cell."""
    return _plain(text).replace("|", "\\|")


def _plain(text: str) -> str:
    """Text for a list item: backticks would end the inline code span snippets are shown in."""
    return str(text).replace("`", "'")


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def markdown(stats: dict) -> str:
    sources = stats["sources"]
    names = list(sources)
    settings = stats["settings"]
    out = ["# Data preparation report", "",
           f"{stats['stages']['train']} train and {stats['stages']['test']} test records from "
           f"{len(names)} source(s). max_seq_len {settings['max_seq_len']} "
           f"(length policy: {settings['length_policy']}), test ratio {settings['test_ratio']}, "
           f"seed {settings['seed']}, near-duplicate threshold {settings['near_dup_threshold']}, "
           f"decontamination {'on' if settings['decontaminate'] else 'off'}.", ""]
    if stats.get("warnings"):
        out += ["## Warnings", ""] + [f"- {_plain(w)}" for w in stats["warnings"]] + [""]
    out += ["## Records at each stage", ""]
    rows = [[key, desc, stats["stages"][key]] + [sources[n]["stages"][key] for n in names]
            for key, desc in STAGES]
    out += _table(["stage", "meaning", "total"] + names, rows)

    out += ["", "## Sources", ""]
    rows = []
    for name, s in sources.items():
        files = ", ".join(f"{f['uri']} ({f['format']}, {f['container']})" for f in s["files"])
        rows.append([name, s["weight"], f"{s['target_fraction']:.1%}", s["stages"]["mixed"],
                     f"{s['mixed_fraction']:.1%}", files])
    out += _table(["source", "weight", "target share", "records mixed", "actual share", "files"], rows)

    out += ["", "## Dropped and truncated records", ""]
    drops = stats["drops"]
    if not drops:
        out.append("Nothing was dropped.")
    else:
        rows = [[reason, d["count"]] + [d["by_source"].get(n, 0) for n in names]
                for reason, d in drops.items()]
        out += _table(["reason", "total"] + names, rows)
        for reason, d in drops.items():
            out += ["", f"**{reason}** (first {len(d['examples'])} of {d['count']}):", ""]
            for ex in d["examples"]:
                detail = f" {ex['detail']}." if ex.get("detail") else ""
                shown = f" `{_plain(ex['snippet'])}`" if ex.get("snippet") else ""
                out.append(f"- {_plain(ex['where'])}:{_plain(detail)}{shown}")

    out += ["", "## Token lengths", "",
            "Tokens of the rendered prompt + completion (or text), as the base model's tokenizer counts "
            "them.",
            ""]
    rows = [[split] + [lengths.get(k, "") for k in ("count", "p50", "p90", "p95", "p99", "max", "mean")]
            for split, lengths in stats["token_lengths"].items()]
    out += _table(["split", "records", "p50", "p90", "p95", "p99", "max", "mean"], rows)
    out += ["", f"![token lengths]({PLOT_NAME})", ""]
    return "\n".join(out)
