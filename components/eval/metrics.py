"""The eval metrics, as plain functions over strings (and, for perplexity, tensors).

Every text metric scores one (prediction, reference) pair; `MetricTotals` sums them over a stream of
examples so the eval set never has to be held in memory. Conventions:

* `exact_match`: 1 when the prediction equals the reference after stripping surrounding whitespace.
* `rouge_l`: ROUGE-L F-measure from the `rouge_score` package (its default tokenizer: lowercased,
  alphanumeric tokens only; no stemming). `evaluate.load("rouge")` is not used: it fetches a script
  from the Hub and fails offline.
* `json_valid`: 1 when the prediction parses as JSON (`parse_json`: surrounding whitespace and one
  enclosing Markdown code fence are ignored, nothing else).
* `json_field_f1` (with `json_field_precision` and `json_field_recall`): the reference and the prediction
  are flattened to leaves, (path, value) pairs such as ``parties[].role = "Licensor"``. A leaf of the
  prediction is a true positive when the reference has the same value at the same path. Lists are
  matched order-insensitively: the items of two lists are paired by an assignment that maximises the
  matched leaves (exact for lists of up to 10 items, greedy beyond), so a party counts only with its own
  role and jurisdiction, in whatever order the parties come. Scores are per example, then averaged
  (macro). An invalid-JSON prediction scores 0; an example whose reference is not JSON is left out.
* `label_accuracy`: the first line of the prediction equals the reference after case folding,
  collapsing whitespace and stripping quotes and trailing punctuation ("Positive." == "positive").
* perplexity: `exp(sum of NLL / number of tokens)` over the completion tokens of every example
  (token-weighted, so a long answer counts for its length); prompt tokens are never scored.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

# Metrics a prediction/reference pair yields, by config metric name (perplexity is scored separately).
TEXT_METRICS = {
    "rouge_l": ("rouge_l",),
    "exact_match": ("exact_match",),
    "json_valid": ("json_valid",),
    "json_field_f1": ("json_field_precision", "json_field_recall", "json_field_f1"),
    "label_accuracy": ("label_accuracy",),
}
LOWER_IS_BETTER = {"perplexity", "general_perplexity"}
_INVALID = object()
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)


# ---- single pairs ---------------------------------------------------------------------------------
def exact_match(prediction: str, reference: str) -> float:
    return float(prediction.strip() == reference.strip())


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


def parse_json(text: str) -> Any:
    """The JSON value of `text`, or `INVALID` (see `is_invalid`) when it does not parse."""
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _INVALID


def is_invalid(value: Any) -> bool:
    return value is _INVALID


def json_valid(prediction: str) -> float:
    return float(not is_invalid(parse_json(prediction)))


def flatten_json(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """(path, leaf) pairs: dict keys join with '.', list items get '[]' (order is not part of the path).

    Empty dicts and lists are leaves themselves, so `{"parties": []}` still has one field.
    """
    if isinstance(value, dict) and value:
        return [pair for k, v in value.items() for pair in flatten_json(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, list) and value:
        return [pair for v in value for pair in flatten_json(v, f"{path}[]")]
    return [(path, _leaf(value))]


def _leaf(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)  # 1 == 1.0
    return json.dumps(value, sort_keys=True)  # {} or []


def _leaves(value: Any) -> int:
    return len(flatten_json(value))


def _same_leaf(a: Any, b: Any) -> bool:
    la, lb = _leaf(a), _leaf(b)
    return type(la) is type(lb) and la == lb


def matched_leaves(pred: Any, ref: Any) -> int:
    """How many leaves of `pred` equal the leaf at the same path of `ref` (lists matched as sets)."""
    if isinstance(pred, dict) and isinstance(ref, dict) and pred and ref:
        return sum(matched_leaves(pred[k], ref[k]) for k in pred.keys() & ref.keys())
    if isinstance(pred, list) and isinstance(ref, list) and pred and ref:
        return _best_assignment([[matched_leaves(p, r) for r in ref] for p in pred])
    if isinstance(pred, dict | list) or isinstance(ref, dict | list):
        # Containers against scalars never match; two empty containers of the same kind do.
        return int(type(pred) is type(ref) and not pred and not ref)
    return int(_same_leaf(pred, ref))


def _best_assignment(score: list[list[int]]) -> int:
    """Max total score pairing rows with columns one to one (exact up to 10 on the smaller side)."""
    if len(score) > len(score[0]):
        score = [list(col) for col in zip(*score, strict=True)]
    n, m = len(score), len(score[0])
    if n > 10:  # greedy: highest-scoring pairs first
        pairs = sorted(((score[i][j], i, j) for i in range(n) for j in range(m)), reverse=True)
        used_r, used_c, total = set(), set(), 0
        for s, i, j in pairs:
            if i not in used_r and j not in used_c:
                used_r.add(i)
                used_c.add(j)
                total += s
        return total
    # exact: DP over the set of used columns (columns >= rows, rows assigned in order)
    best: dict[int, int] = {0: 0}
    for i in range(n):
        nxt: dict[int, int] = {}
        for mask, total in best.items():
            for j in range(m):
                if not mask >> j & 1:
                    key = mask | 1 << j
                    value = total + score[i][j]
                    if value > nxt.get(key, -1):
                        nxt[key] = value
        best = nxt
    return max(best.values())


@dataclass(frozen=True)
class FieldScore:
    precision: float
    recall: float
    f1: float
    matched: int
    predicted: int
    expected: int


def json_field_scores(prediction: str, reference: str) -> FieldScore | None:
    """Field-level P/R/F1 of one prediction; None when the reference is not JSON (not scorable)."""
    ref = parse_json(reference)
    if is_invalid(ref):
        return None
    expected = _leaves(ref)
    pred = parse_json(prediction)
    if is_invalid(pred):
        return FieldScore(0.0, 0.0, 0.0, 0, 0, expected)
    predicted, matched = _leaves(pred), matched_leaves(pred, ref)
    precision = matched / predicted if predicted else 0.0
    recall = matched / expected if expected else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return FieldScore(precision, recall, f1, matched, predicted, expected)


def _label(text: str) -> str:
    lines = text.strip().splitlines()
    first = lines[0] if lines else ""
    return " ".join(first.casefold().split()).strip(" \"'`.!?;:,")


def label_accuracy(prediction: str, reference: str) -> float:
    return float(_label(prediction) == _label(reference))


def score_pair(prediction: str, reference: str, metrics: Iterable[str]) -> dict[str, float]:
    """Every per-example value the configured metrics need (perplexity excluded)."""
    out: dict[str, float] = {}
    for name in metrics:
        if name == "rouge_l":
            out["rouge_l"] = rouge_l(prediction, reference)
        elif name == "exact_match":
            out["exact_match"] = exact_match(prediction, reference)
        elif name == "json_valid":
            out["json_valid"] = json_valid(prediction)
        elif name == "json_field_f1":
            s = json_field_scores(prediction, reference)
            if s is not None:
                out.update(json_field_precision=s.precision, json_field_recall=s.recall, json_field_f1=s.f1)
        elif name == "label_accuracy":
            out["label_accuracy"] = label_accuracy(prediction, reference)
    return out


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


# ---- sums over a stream ---------------------------------------------------------------------------
@dataclass
class MetricTotals:
    """Running sums of per-example values; `means()` gives each metric over the examples it scored."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}
