"""The short summary printed at the end of a local run or the demo."""

from __future__ import annotations

from components.common import storage
from pipelines.local import LocalRun

# eval_results.json metrics worth a line in the summary, in this order.
HEADLINE = ("json_valid", "json_field_f1", "exact_match", "rouge_l", "perplexity")


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def summary_lines(result: LocalRun) -> list[str]:
    lines = [f"run {result.run_id}: {result.wall_seconds:.0f} s wall, steps {sum(result.step_seconds.values()):.0f} s,"
             f" orchestration overhead {result.overhead_seconds:.0f} s"]
    for step, seconds in result.step_seconds.items():
        cached = result.outcomes[step].get("cached_from")
        lines.append(f"  {step:<9} {seconds:7.1f} s" + (f"  (cached: {cached})" if cached else ""))
    if "prepare" in result.outcomes and "train" not in result.outcomes:
        lines.append("no new data since the latest release: nothing trained or published")
    release = result.release
    if "eval" in result.outcomes and release is None:
        lines.append("the eval gate FAILED: nothing merged or published (see the eval report)")
    if release is not None:
        evaluation = release["eval"]
        lines.append(f"{'metric':<16}{'base':>14}{'tuned':>14}{'delta':>14}")
        for name in HEADLINE:
            m = evaluation.get("metrics", evaluation).get(name)
            if isinstance(m, dict) and "base" in m:
                lines.append(f"{name:<16}{_fmt(m['base']):>14}{_fmt(m['tuned']):>14}{_fmt(m.get('delta', '')):>14}")
        lines.append(f"gate: {'passed' if release['gate'].get('passed') else 'FAILED'}")
        lines.append(f"release: {release['uri']}")
        for entry in release["artifacts"].get("gguf", {}).get("files", []):
            if entry["path"].endswith(".gguf"):
                lines.append(f"  gguf {entry['path']}: {entry['size'] / 1e6:.1f} MB")
    for step, outcome in result.outcomes.items():  # in pipeline order
        if outcome.get("report") and not outcome.get("cached_from"):
            lines.append(f"{step} report: {storage.join_uri(result.run_root, step, outcome['report'])}")
    return lines


def print_summary(result: LocalRun) -> None:
    print("\n".join(["", "=" * 72, *summary_lines(result), "=" * 72]))
