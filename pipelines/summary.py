"""The short summary printed at the end of a local run or the demo."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

from components.common import storage
from pipelines.local import LocalRun

# eval_results.json metrics worth a line in the summary, in this order.
HEADLINE = ("json_valid", "json_field_f1", "exact_match", "rouge_l", "perplexity")

# The eval step's per-example file in its published output: one JSON line per test example with
# "index", "question", "reference", "base" and "tuned" (the two models' greedy outputs), among others.
SAMPLES_FILE = "samples.jsonl"
SAMPLES_SHOWN = 3
MAX_WIDTH = 100  # wider lines are hard to compare by eye, even on a wide terminal
ANSWER_LINES = 3  # an answer longer than this many wrapped lines is cut, with " …"
ANSWERS = ("reference", "base", "tuned")
LABEL_WIDTH = 4 + max(map(len, ANSWERS)) + 2  # "    reference  ", then the answer


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


@dataclass
class EvalSamples:
    """The first examples of the eval step's samples.jsonl, or why there are none to show."""

    uri: str
    samples: list[dict]
    total: int = 0  # examples in the file
    skipped: str | None = None  # why the section is skipped (no file, a bad line): one line instead


def eval_output_uri(result: LocalRun) -> str | None:
    """The eval step's published output for this run (the earlier output when the step was cached)."""
    outcome = result.outcomes.get("eval")
    if outcome is None:
        return None
    return outcome.get("cached_from") or storage.join_uri(result.run_root, "eval")


def read_eval_samples(result: LocalRun, count: int = SAMPLES_SHOWN) -> EvalSamples | None:
    """The first `count` examples of the run's eval samples, through the storage layer (S3 must still be
    reachable); None when no eval step ran (e.g. no new data). A missing or malformed file is not an
    error here: the run itself succeeded, so the summary says so in one line and goes on."""
    eval_uri = eval_output_uri(result)
    if eval_uri is None:
        return None
    samples_uri = storage.join_uri(eval_uri, SAMPLES_FILE)
    manifest = storage.read_manifest(eval_uri)
    if manifest is None or SAMPLES_FILE not in {entry.path for entry in manifest.files}:
        return EvalSamples(samples_uri, [], skipped=f"the eval output {eval_uri} has no {SAMPLES_FILE}")
    samples, total = [], 0
    with open(storage.fetch_file(samples_uri), encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            total += 1
            if len(samples) == count:
                continue  # only counting from here on
            try:
                sample = json.loads(line)
            except ValueError as e:
                sample, problem = None, f"not JSON ({e})"
            else:
                problem = None if isinstance(sample, dict) else f"a JSON {type(sample).__name__}"
            if problem:
                return EvalSamples(samples_uri, [], skipped=f"{samples_uri} line {line_number} is {problem}; "
                                                           "expected one JSON object per example")
            samples.append(sample)
    if not samples:
        return EvalSamples(samples_uri, [], skipped=f"{samples_uri} has no examples")
    return EvalSamples(samples_uri, samples, total)


def _wrapped(text, width: int, max_lines: int) -> list[str]:
    """text cut into lines of exactly `width` characters (the last shorter), at most max_lines of them.
    Fixed-width cuts rather than word wrapping: the answers are mostly compact JSON, and cutting the
    reference, base and tuned answers at the same columns lines them up character by character.
    Whitespace (newlines too) is collapsed to single spaces; the full text is in samples.jsonl."""
    flat = " ".join(str(text).split()) if text is not None else ""
    if not flat:
        return ["(empty)"]
    lines = [flat[start:start + width] for start in range(0, len(flat), width)]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][:width - 2] + " …"
    return lines


def side_by_side_lines(samples: list[dict], *, total: int, width: int = MAX_WIDTH,
                       answer_lines: int = ANSWER_LINES) -> list[str]:
    """For each example: its input on one line, then the reference, base and tuned answers one under
    the other, wrapped to `width` columns, so the three can be compared line by line."""
    text_width = max(20, width - LABEL_WIDTH)
    lines = [f"{len(samples)} of {total} test examples (reference, base, tuned):"]
    for number, sample in enumerate(samples):
        question = _wrapped(sample.get("question", sample.get("prompt")), max(20, width - 10), 1)[0]
        lines.append(f"  #{sample.get('index', number)}: {question}")
        for answer in ANSWERS:
            wrapped = _wrapped(sample.get(answer), text_width, answer_lines)
            lines.append(f"    {answer:<{LABEL_WIDTH - 4}}{wrapped[0]}")
            lines += [" " * LABEL_WIDTH + rest for rest in wrapped[1:]]
    return lines


def samples_lines(samples: EvalSamples | None, width: int = MAX_WIDTH) -> list[str]:
    if samples is None:  # no eval step in this run: nothing to compare
        return []
    if samples.skipped:
        return [f"test examples: skipped, {samples.skipped}"]
    return side_by_side_lines(samples.samples, total=samples.total, width=width)


def terminal_width() -> int:
    return min(MAX_WIDTH, shutil.get_terminal_size((MAX_WIDTH, 24)).columns)


def summary_lines(result: LocalRun, samples: EvalSamples | None = None, width: int = MAX_WIDTH) -> list[str]:
    """The summary; `samples` (read_eval_samples) adds the side-by-side test examples."""
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
    lines += samples_lines(samples, width)
    for step, outcome in result.outcomes.items():  # in pipeline order
        if outcome.get("report") and not outcome.get("cached_from"):
            lines.append(f"{step} report: {storage.join_uri(result.run_root, step, outcome['report'])}")
    return lines


def print_summary(result: LocalRun, samples: EvalSamples | None = None) -> None:
    """Print the summary. Without `samples` the eval samples are read now, so S3 must still be up; the
    demo reads them before it stops its own S3 server and passes them in."""
    if samples is None:
        samples = read_eval_samples(result)
    width = terminal_width()
    print("\n".join(["", "=" * width, *summary_lines(result, samples, width), "=" * width]))
