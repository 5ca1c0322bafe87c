"""Mixing sources by weight, the train/test split and the output order: all deterministic.

Mixing: weights are normalised to fractions p_i of the final mix. The most constrained source (the
smallest n_i / p_i) is taken whole and every other source is downsampled to n_c * p_i / p_c records.
Nothing is upsampled: repeated records would be removed again by dedup, or, when they survive, make
the model memorise the small source. `prepare.max_records` then caps the total, keeping the fractions
(largest-remainder rounding so the counts add up exactly).

Which records are kept, which go to test, and the order of the output are all decided by ranking
records by sha256(seed, purpose, content hash). That is reproducible (same input + seed gives the same
bytes), independent of the input order, and stable: adding records to a source only moves the few
records near the cut, instead of reshuffling everything as a seeded shuffle would.

The split is stratified by source: each source sends round(n_i * test_ratio) records to test, so a
5% source is in the test set too and per-source eval numbers exist.
"""

from __future__ import annotations

import hashlib
import math

from components.prepare.problems import PrepareError, Tally
from components.prepare.validate import Example


def rank(seed: int, purpose: str, ex: Example) -> str:
    return hashlib.sha256(f"{seed}:{purpose}:{ex.key}".encode()).hexdigest()


def quotas(available: dict[str, int], weights: dict[str, float], max_records: int | None) -> dict[str, int]:
    """How many records each source contributes. See the module docstring for the rule."""
    total_weight = sum(weights.values())
    fractions = {name: w / total_weight for name, w in weights.items()}
    constrained = min(available, key=lambda name: (available[name] / fractions[name], name))
    n_c, p_c = available[constrained], fractions[constrained]
    counts = {name: available[name] if name == constrained
              else min(available[name], round(n_c * fractions[name] / p_c)) for name in available}
    if max_records is None or sum(counts.values()) <= max_records:
        return counts
    exact = {name: fractions[name] * max_records for name in available}
    counts = {name: min(available[name], math.floor(q)) for name, q in exact.items()}
    by_remainder = sorted(available, key=lambda name: (-(exact[name] - math.floor(exact[name])), name))
    for name in by_remainder[: max_records - sum(counts.values())]:
        counts[name] = min(available[name], counts[name] + 1)
    return counts


def mix(by_source: dict[str, list[Example]], weights: dict[str, float], max_records: int | None,
        seed: int, tally: Tally) -> tuple[dict[str, list[Example]], dict[str, int]]:
    empty = [name for name, exs in by_source.items() if not exs]
    if empty:
        why = "; ".join(f"{name}: " + (", ".join(tally.describe(name)) or "no records") for name in empty)
        raise PrepareError(f"data source(s) {', '.join(empty)}: no records left after validation, dedup and "
                           f"the length filter, so the mix cannot honour their weights (fix the data or drop "
                           f"the source). Dropped: {why}")
    counts = quotas({name: len(exs) for name, exs in by_source.items()}, weights, max_records)
    mixed = {}
    for name, exs in by_source.items():
        ordered = sorted(exs, key=lambda ex: rank(seed, "mix", ex))
        mixed[name] = ordered[: counts[name]]
        for ex in ordered[counts[name]:]:
            tally.add("mixing_downsample", name, ex.where, ex.rendered,
                      detail=f"source '{name}' downsampled to {counts[name]} of {len(exs)} records")
    return mixed, counts


def split(mixed: dict[str, list[Example]], test_ratio: float,
          seed: int) -> tuple[list[Example], list[Example]]:
    train, test = [], []
    for exs in mixed.values():
        ordered = sorted(exs, key=lambda ex: rank(seed, "split", ex))
        n_test = round(len(ordered) * test_ratio)
        test += ordered[:n_test]
        train += ordered[n_test:]
    if not test and len(train) >= 2:
        # Tiny data: round() gave every source 0 test records. One is better than an empty eval.
        first = min(train, key=lambda ex: rank(seed, "split", ex))
        train.remove(first)
        test.append(first)
    return train, test


def shuffle(examples: list[Example], seed: int) -> list[Example]:
    """The output order: sources interleaved, reproducible, independent of the input order."""
    return sorted(examples, key=lambda ex: rank(seed, "order", ex))
