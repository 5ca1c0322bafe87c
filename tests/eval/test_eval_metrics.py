"""The eval step's own metrics: perplexity over completion tokens only, token-weighted; the metrics
`eval.metrics: auto` picks for a JSON task and for a chat task; and the text metrics still importable
from components.eval.metrics (they live in components.common.task_metrics, tested in tests/common)."""

from __future__ import annotations

import math

import pytest
import torch

from components.common import task_metrics
from components.eval import metrics
from components.eval.metrics import PerplexityTotal, choose_metrics, completion_nll


def test_text_metrics_are_the_common_ones():
    for name in ("score_pair", "MetricTotals", "TEXT_METRICS", "json_field_scores", "rouge_l", "fact_recall"):
        assert getattr(metrics, name) is getattr(task_metrics, name), name


def test_auto_metrics_follow_the_references():
    json_task = choose_metrics("auto", examples=16, json_references=14, gate_metrics=["json_field_f1"])
    assert json_task == ["perplexity", "rouge_l", "exact_match", "json_valid", "json_field_f1"]
    chat = choose_metrics("auto", examples=16, json_references=2, gate_metrics=["rouge_l"])
    assert chat == ["perplexity", "rouge_l", "exact_match", "fact_recall"]
    # what the gate reads is always computed, even when it is not what auto would pick
    assert choose_metrics("auto", examples=16, json_references=2, gate_metrics=["json_field_f1", "json_valid"]) == [
        "perplexity", "rouge_l", "exact_match", "fact_recall", "json_field_f1", "json_valid"]
    # a configured list is taken as it is
    assert choose_metrics(["rouge_l"], examples=16, json_references=16, gate_metrics=["rouge_l"]) == ["rouge_l"]


def _nll(logits, ids, mask):
    return completion_nll(torch.as_tensor(logits), torch.as_tensor(ids), torch.as_tensor(mask))


def test_completion_nll_scores_completion_tokens_only():
    torch.manual_seed(0)
    vocab, ids = 7, [1, 4, 2, 5, 3, 6]
    mask = [0, 0, 0, 1, 1, 1]  # prompt = 3 tokens, completion = 3 tokens
    logits = torch.randn(len(ids), vocab)
    nll, n = _nll(logits, ids, mask)
    assert n == 3
    # By hand: token t is predicted by the logits at t - 1.
    expected = -sum(torch.log_softmax(logits[t - 1], -1)[ids[t]].item() for t in (3, 4, 5))
    assert nll == pytest.approx(expected, rel=1e-6)
    # Changing how likely the prompt tokens are (the logits at positions 0 and 1 predict prompt tokens
    # 1 and 2) must not change the score; changing the logits that predict the completion must.
    changed = logits.clone()
    changed[0] += torch.randn(vocab) * 5
    changed[1, ids[2]] += 10.0
    assert _nll(changed, ids, mask)[0] == pytest.approx(nll, rel=1e-6)
    changed[3, ids[4]] += 3.0
    assert _nll(changed, ids, mask)[0] < nll - 1e-3


def test_perplexity_is_token_weighted():
    total = PerplexityTotal()
    total.add(nll=1.0 * 1, tokens=1)  # one token at NLL 1
    total.add(nll=3.0 * 9, tokens=9)  # nine tokens at NLL 3
    assert total.value == pytest.approx(math.exp((1 + 27) / 10))
    per_example_mean = (math.exp(1) + math.exp(3)) / 2
    assert total.value != pytest.approx(per_example_mean)
    assert PerplexityTotal().value is None
