"""The eval metrics against hand-computed values: field-level P/R/F1 (partial matches, list order,
invalid JSON), ROUGE-L, exact match, label accuracy, and perplexity over completion tokens only."""

from __future__ import annotations

import json
import math

import pytest
import torch

from components.eval.metrics import (
    MetricTotals,
    PerplexityTotal,
    completion_nll,
    exact_match,
    flatten_json,
    json_field_scores,
    json_valid,
    label_accuracy,
    parse_json,
    rouge_l,
    score_pair,
)

REF = {"parties": [{"name": "Acme Ltd", "role": "Seller", "jurisdiction": "England"},
                   {"name": "Bolt GmbH", "role": "Buyer", "jurisdiction": "Germany"}],
       "effective_date": "2021-04-01"}


def dump(x) -> str:
    return json.dumps(x, separators=(",", ":"))


def test_flatten_paths_and_leaves():
    assert flatten_json(REF) == [
        ("parties[].name", "Acme Ltd"), ("parties[].role", "Seller"), ("parties[].jurisdiction", "England"),
        ("parties[].name", "Bolt GmbH"), ("parties[].role", "Buyer"), ("parties[].jurisdiction", "Germany"),
        ("effective_date", "2021-04-01")]
    assert flatten_json({"a": {"b": 1, "c": []}}) == [("a.b", 1.0), ("a.c", "[]")]


def test_field_f1_exact_and_order_insensitive():
    s = json_field_scores(dump(REF), dump(REF))
    assert (s.precision, s.recall, s.f1, s.matched, s.expected) == (1.0, 1.0, 1.0, 7, 7)
    swapped = {**REF, "parties": REF["parties"][::-1]}
    assert json_field_scores(dump(swapped), dump(REF)).f1 == 1.0


def test_field_f1_partial_match_by_hand():
    # 7 reference leaves. Prediction: Acme's role wrong, Bolt missing its jurisdiction, a wrong date,
    # and an extra key. Leaves predicted: 3 + 2 + 1 + 1 = 7; matched: name+jur (Acme) + name+role
    # (Bolt) = 4. P = 4/7, R = 4/7, F1 = 4/7.
    pred = {"parties": [{"name": "Bolt GmbH", "role": "Buyer"},
                        {"name": "Acme Ltd", "role": "Buyer", "jurisdiction": "England"}],
            "effective_date": "2021-04-02", "extra": "x"}
    s = json_field_scores(dump(pred), dump(REF))
    assert (s.matched, s.predicted, s.expected) == (4, 7, 7)
    assert s.precision == pytest.approx(4 / 7) and s.recall == pytest.approx(4 / 7)
    assert s.f1 == pytest.approx(4 / 7)


def test_field_f1_binds_fields_to_their_object():
    # Every value exists somewhere in the reference, but the roles are on the wrong parties: a
    # per-path bag of values would score 7/7; object matching gives names + jurisdictions + date = 5.
    pred = {"parties": [{"name": "Acme Ltd", "role": "Buyer", "jurisdiction": "England"},
                        {"name": "Bolt GmbH", "role": "Seller", "jurisdiction": "Germany"}],
            "effective_date": "2021-04-01"}
    s = json_field_scores(dump(pred), dump(REF))
    assert s.matched == 5 and s.f1 == pytest.approx(5 / 7)


def test_field_f1_recall_only_loss_and_precision_only_loss():
    one_party = {"parties": [REF["parties"][0]], "effective_date": "2021-04-01"}
    s = json_field_scores(dump(one_party), dump(REF))
    assert (s.precision, s.recall) == (1.0, pytest.approx(4 / 7))
    assert s.f1 == pytest.approx(2 * (4 / 7) / (1 + 4 / 7))
    s = json_field_scores(dump(REF), dump(one_party))
    assert (s.precision, s.recall) == (pytest.approx(4 / 7), 1.0)


def test_invalid_json_prediction_and_reference():
    s = json_field_scores('{"parties": [', dump(REF))
    assert (s.precision, s.recall, s.f1, s.expected) == (0.0, 0.0, 0.0, 7)
    assert json_field_scores(dump(REF), "not json") is None  # unscorable example: left out
    assert json_valid('{"a": 1}') == 1.0 and json_valid('{"a": 1') == 0.0 and json_valid("") == 0.0
    assert json_valid('```json\n{"a": 1}\n```') == 1.0  # one enclosing code fence is tolerated
    assert json_valid('Sure! {"a": 1}') == 0.0
    assert parse_json(" [1, 2] ") == [1, 2]


def test_numbers_and_types():
    assert json_field_scores('{"n": 1.0}', '{"n": 1}').f1 == 1.0
    assert json_field_scores('{"n": "1"}', '{"n": 1}').f1 == 0.0
    assert json_field_scores('{"b": 1}', '{"b": true}').f1 == 0.0


def test_rouge_l_by_hand():
    # LCS("the cat sat on the mat", "the cat on the mat") = 5 tokens: P = 5/6, R = 5/5.
    assert rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(2 * (5 / 6) / (5 / 6 + 1))
    assert rouge_l("identical text", "identical text") == 1.0
    assert rouge_l("", "something") == 0.0


def test_exact_match_and_label_accuracy():
    assert exact_match("  {\"a\":1}\n", "{\"a\":1}") == 1.0
    assert exact_match("{\"a\": 1}", "{\"a\":1}") == 0.0
    assert label_accuracy("Positive.", "positive") == 1.0
    assert label_accuracy('"Negative"\nbecause ...', "negative") == 1.0
    assert label_accuracy("neutral", "positive") == 0.0


def test_score_pair_and_totals_average_only_scored_examples():
    totals = MetricTotals()
    totals.add(score_pair(dump(REF), dump(REF), ["json_valid", "json_field_f1", "exact_match"]))
    totals.add(score_pair("oops", "not json either", ["json_valid", "json_field_f1", "exact_match"]))
    means = totals.means()
    assert means["json_valid"] == 0.5 and means["exact_match"] == 0.5
    assert means["json_field_f1"] == 1.0 and totals.counts["json_field_f1"] == 1


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
