"""Bookkeeping for records that do not make it into the output.

Two kinds of losses are tallied the same way (a count overall and per source, plus up to three
examples with their location and a snippet), so that stats.json and report.md can show them side by
side:

* problems with the input (malformed JSON, a wrong field type...). `prepare.policy` decides per kind
  whether the step fails on the first one or skips the record and counts it;
* deliberate drops (duplicates, over-long records, mixing, decontamination), always counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from components.common.config import ProblemPolicy
from components.common.errors import KubetuneError

EXAMPLES_PER_REASON = 3
SNIPPET_CHARS = 160

# Problem kinds that prepare.policy decides about (the field names of ProblemPolicy).
POLICY_KINDS = tuple(ProblemPolicy.model_fields)


class PrepareError(KubetuneError):
    """Bad input the step cannot or may not skip. The message names file:line and field."""


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    """A one-line excerpt of a record for reports (newlines shown as \\n)."""
    one_line = text.replace("\r", "\\r").replace("\n", "\\n")
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"


@dataclass
class Reason:
    count: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, str]] = field(default_factory=list)
    first_by_source: dict[str, str] = field(default_factory=dict)  # "where: detail", for messages


class Tally:
    """Counts of dropped (or truncated) records by reason, with a few examples of each."""

    def __init__(self) -> None:
        self.reasons: dict[str, Reason] = {}

    def add(self, reason: str, source: str, where: str, text: str = "", detail: str = "") -> None:
        entry = self.reasons.setdefault(reason, Reason())
        entry.count += 1
        entry.by_source[source] = entry.by_source.get(source, 0) + 1
        if len(entry.examples) < EXAMPLES_PER_REASON:
            example = {"where": where, "snippet": snippet(text)}
            if detail:
                example["detail"] = detail
            entry.examples.append(example)
        entry.first_by_source.setdefault(source, f"{where}: {detail}" if detail else where)

    def count(self, reason: str, source: str | None = None) -> int:
        entry = self.reasons.get(reason)
        if entry is None:
            return 0
        return entry.count if source is None else entry.by_source.get(source, 0)

    def describe(self, source: str | None = None) -> list[str]:
        """One line per reason, most frequent first: `N reason (first: file:line: field 'x': why)`,
        over all sources or for one."""
        rows = []
        for name, r in self.reasons.items():
            n = r.count if source is None else r.by_source.get(source, 0)
            if n:
                first = next(iter(r.first_by_source.values())) if source is None else r.first_by_source[source]
                rows.append((-n, name, f"{n} {name} (first: {first})"))
        return [line for _, _, line in sorted(rows)]

    def as_dict(self) -> dict[str, dict]:
        # Sorted so that stats.json is byte-identical across runs.
        return {name: {"count": r.count, "by_source": dict(sorted(r.by_source.items())),
                       "examples": r.examples}
                for name, r in sorted(self.reasons.items())}


def located(where: str, message: str, field_name: str | None = None) -> str:
    """`file:line: field 'x': message`, the one format every record-level message uses."""
    return f"{where}: field '{field_name}': {message}" if field_name else f"{where}: {message}"


class ProblemLog:
    """Applies prepare.policy to each input problem: raise PrepareError (fail) or count it (skip)."""

    def __init__(self, policy: ProblemPolicy, tally: Tally) -> None:
        self.policy = policy
        self.tally = tally

    def report(self, kind: str, source: str, where: str, message: str, *, field_name: str | None = None,
               text: str = "") -> None:
        if kind not in POLICY_KINDS:
            raise ValueError(f"unknown problem kind {kind!r}")  # a bug in this package, not bad input
        full = located(where, message, field_name)
        if getattr(self.policy, kind) == "fail":
            raise PrepareError(f"{full} (prepare.policy.{kind} is 'fail'; set it to 'skip' to skip and "
                               f"count such records)")
        self.tally.add(kind, source, where, text, detail=(f"field '{field_name}': " if field_name else "")
                       + message)
