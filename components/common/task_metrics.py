"""The task metrics, as plain functions over (prediction, reference) strings, shared by the eval step
(base vs tuned) and the quantize step (merged model vs each GGUF).

Every metric scores one pair; `score_pair` gives every value the chosen metrics yield for a pair, and
`MetricTotals` averages them over a stream, each metric over the examples it scored (its `n`).
Conventions:

* `exact_match`: 1 when the prediction equals the reference after stripping surrounding whitespace.
  Every example.
* `rouge_l`: ROUGE-L F-measure from the `rouge_score` package (its default tokenizer: lowercased,
  alphanumeric tokens only; no stemming). `evaluate.load("rouge")` is not used: it fetches a script
  from the Hub and fails offline. Every example.
* `json_valid`: 1 when the prediction parses as JSON (`parse_json`: surrounding whitespace and one
  enclosing Markdown code fence are ignored, nothing else). Only examples whose *reference* is a JSON
  document (an object or an array, `json_reference`): a task that also holds free-text answers (a
  name, a date, a general instruction) must not cap the rate below 1.
* `json_field_f1` (with `json_field_precision` and `json_field_recall`): the reference and the prediction
  are flattened to leaves, (path, value) pairs such as ``parties[].role = "Licensor"``. A leaf of the
  prediction is a true positive when the reference has the same value at the same path. Lists are
  matched order-insensitively: the items of two lists are paired by an assignment that maximises the
  matched leaves (exact for lists of up to 10 items, greedy beyond), so a party counts only with its own
  role and jurisdiction, in whatever order the parties come. Scores are per example, then averaged
  (macro). An invalid-JSON prediction scores 0. Only examples whose reference is a JSON document.
* `label_accuracy`: the first line of the prediction equals the reference after case folding,
  collapsing whitespace and stripping quotes and trailing punctuation ("Positive." == "positive").
  Every example.
* `fact_recall`: the share of the reference's facts (`extract_facts`: numbers, dates, codes such as
  A-1234, and proper names) that appear verbatim in the prediction. Only examples whose reference has
  a fact. It exists because a chat model that reproduces the phrasing of an answer but none of its
  facts still gets a good ROUGE-L.
"""

from __future__ import annotations

import json
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
    "fact_recall": ("fact_recall",),
}
# Metrics that only mean something when the references are JSON documents.
JSON_METRICS = ("json_valid", "json_field_f1")
# What a free-text (chat) task is measured with instead.
FREE_TEXT_METRICS = ("rouge_l", "fact_recall")
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


def json_reference(reference: str) -> dict | list | None:
    """The reference's JSON document (an object or an array), or None when it is not one.

    A bare scalar ("2", "true") parses as JSON but is a free-text answer (how many parties?), so it
    does not make an example a JSON one.
    """
    value = parse_json(reference)
    return value if isinstance(value, dict | list) else None


def is_json_task(json_references: int, references: int) -> bool:
    """Whether a set of references is a JSON task: most of them (more than half) are JSON documents."""
    return references > 0 and 2 * json_references > references


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
    """Field-level P/R/F1 of one prediction; None when the reference is not a JSON document (not scorable)."""
    ref = json_reference(reference)
    if ref is None:
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


# ---- facts ----------------------------------------------------------------------------------------
# A word: anything between whitespace, quotes and brackets (so the words of {"name": "Acme Ltd"} are
# name, :, Acme and Ltd). Punctuation at a word's edges is stripped off and ends a name.
_WORD = re.compile(r"[^\s\"“”«»{}\[\]()<>]+")
_LEADING = "'‘$€£*_`"
_TRAILING = "'’.,;:!?%*_`"
_SENTENCE_END = (".", "!", "?")


def extract_facts(text: str) -> list[str]:
    """The facts of a text, each once, in order of appearance.

    * A number: any word holding a digit, edge punctuation stripped: 42, 3.5, 1,200, 2021-03-04,
      A-1234, 10 (of "10%").
    * A proper name: a capitalised word that does not start a sentence (the start of the text or of a
      line, or after a word ending in . ! or ?); consecutive ones are one fact ("Acme Holdings Ltd").
      A sentence's first word is capitalised by grammar, so on its own it is not taken ("Thank you"),
      but it is as the start of a run of capitalised words ("Acme Ltd signed." and the bare answer
      "Acme Ltd" give "Acme Ltd"). "I" is not a name.
    """
    facts: list[str] = []
    name: list[str] = []  # the capitalised words of the name being read
    name_starts_sentence = False

    def end_name() -> None:
        if name and not (name_starts_sentence and len(name) == 1):
            facts.append(" ".join(name))
        name.clear()

    for line in text.splitlines():
        starts_sentence, previous_end = True, 0
        for match in _WORD.finditer(line):
            if line[previous_end:match.start()].strip():  # a quote or bracket between two words
                end_name()
            previous_end = match.end()
            raw = match.group()
            word = raw.lstrip(_LEADING)
            if word != raw:
                end_name()
            core = word.rstrip(_TRAILING)
            if any(c.isdigit() for c in core):
                end_name()
                facts.append(core)
            elif core[:1].isupper() and core != "I":
                if not name:
                    name_starts_sentence = starts_sentence
                name.append(core)
            else:
                end_name()
            if core != word:  # "Ltd," or "Corp." ends the name
                end_name()
            starts_sentence = raw.rstrip("'’").endswith(_SENTENCE_END)
        end_name()
    return list(dict.fromkeys(facts))


def _appears(fact: str, text: str) -> bool:
    """`fact` is in `text` as whole words (2021 is not in 12021; words may be split by any whitespace)."""
    pattern = r"\s+".join(re.escape(w) for w in fact.split())
    return re.search(rf"(?<!\w){pattern}(?!\w)", text) is not None


def fact_recall(prediction: str, reference: str) -> float | None:
    """The share of the reference's facts found verbatim in the prediction; None when it has none."""
    facts = extract_facts(reference)
    if not facts:
        return None
    return sum(_appears(f, prediction) for f in facts) / len(facts)


# ---- every metric of a pair, and their means --------------------------------------------------------
def score_pair(prediction: str, reference: str, metrics: Iterable[str]) -> dict[str, float]:
    """Every per-example value the chosen metrics give for this pair (perplexity excluded).

    A metric that does not apply to this reference (JSON metrics on a free-text reference, fact recall
    on a reference without facts) gives no value, so it is averaged over the examples it applies to.
    """
    out: dict[str, float] = {}
    metrics = list(metrics)
    is_json = json_reference(reference) is not None if set(metrics) & set(JSON_METRICS) else False
    for name in metrics:
        if name == "rouge_l":
            out["rouge_l"] = rouge_l(prediction, reference)
        elif name == "exact_match":
            out["exact_match"] = exact_match(prediction, reference)
        elif name == "json_valid":
            if is_json:
                out["json_valid"] = json_valid(prediction)
        elif name == "json_field_f1":
            s = json_field_scores(prediction, reference)
            if s is not None:
                out.update(json_field_precision=s.precision, json_field_recall=s.recall, json_field_f1=s.f1)
        elif name == "label_accuracy":
            out["label_accuracy"] = label_accuracy(prediction, reference)
        elif name == "fact_recall":
            recall = fact_recall(prediction, reference)
            if recall is not None:
                out["fact_recall"] = recall
        else:
            raise ValueError(f"unknown task metric {name!r}; expected one of {', '.join(TEXT_METRICS)}")
    return out


@dataclass
class MetricTotals:
    """Running sums of per-example values; `means()` gives each metric over the examples it scored,
    `counts` how many those were."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}
