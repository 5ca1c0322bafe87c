"""The eval step's own metrics: perplexity over completion tokens, and the lower-is-better set.

The text metrics (exact_match, rouge_l, json_valid, json_field_f1, label_accuracy, fact_recall, the
registry `TEXT_METRICS`, `score_pair`, `MetricTotals`) live in `components.common.task_metrics`, which
the quantize step shares; they are imported here so `components.eval.metrics` keeps offering them.

* perplexity: `exp(sum of NLL / number of tokens)` over the completion tokens of every example
  (token-weighted, so a long answer counts for its length); prompt tokens are never scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from components.common.task_metrics import (  # noqa: F401  (re-exported)
    FREE_TEXT_METRICS,
    JSON_METRICS,
    TEXT_METRICS,
    FieldScore,
    MetricTotals,
    exact_match,
    extract_facts,
    fact_recall,
    flatten_json,
    is_invalid,
    is_json_task,
    json_field_scores,
    json_reference,
    json_valid,
    label_accuracy,
    matched_leaves,
    parse_json,
    rouge_l,
    score_pair,
)

LOWER_IS_BETTER = {"perplexity", "general_perplexity"}


# ---- perplexity -----------------------------------------------------------------------------------
def completion_nll(logits, input_ids, completion_mask) -> tuple[float, int]:
    """(sum of NLL, token count) of one sequence's completion tokens.

    `logits`: (T, V) for positions 0..T-1; `input_ids`, `completion_mask`: (T,). Token t is predicted
    by the logits at t-1, so only tokens t >= 1 with completion_mask[t] set are scored; the prompt's
    tokens, and the probabilities the model gives them, do not enter. Computed in float32.
    """
    import torch

    target = input_ids[1:]
    mask = completion_mask[1:].bool()
    if not bool(mask.any()):
        return 0.0, 0
    logp = torch.log_softmax(logits[:-1][mask].float(), dim=-1)
    nll = -logp.gather(-1, target[mask].unsqueeze(-1)).sum()
    return float(nll), int(mask.sum())


@dataclass
class PerplexityTotal:
    nll: float = 0.0
    tokens: int = 0

    def add(self, nll: float, tokens: int) -> None:
        self.nll += nll
        self.tokens += tokens

    @property
    def value(self) -> float | None:
        if not self.tokens:
            return None
        return math.exp(self.nll / self.tokens) if self.nll / self.tokens < 700 else math.inf


# ---- which metrics ----------------------------------------------------------------------------------
# eval.metrics: auto. These for every task; then the JSON metrics for a JSON task (most references are
# JSON documents), else fact_recall; then whatever the gate reads.
AUTO_METRICS = ("perplexity", "rouge_l", "exact_match")


def choose_metrics(configured: str | list[str], *, examples: int, json_references: int,
                   gate_metrics: list[str]) -> list[str]:
    """The metrics eval computes: `eval.metrics` as configured, or what `auto` picks for this test split."""
    if configured != "auto":
        return list(configured)
    task = JSON_METRICS if is_json_task(json_references, examples) else ("fact_recall",)
    chosen = [*AUTO_METRICS, *task]
    return chosen + [m for m in gate_metrics if m not in chosen]
