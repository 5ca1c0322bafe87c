"""The task metrics against hand-computed values: field-level P/R/F1 (partial matches, list order,
invalid JSON), JSON metrics scored only where the reference is JSON, ROUGE-L, exact match, label
accuracy, and fact recall (the facts of real answers, and an answer that keeps the phrasing but
loses the facts)."""

from __future__ import annotations

import json

import pytest

from components.common.task_metrics import (
    MetricTotals,
    exact_match,
    extract_facts,
    fact_recall,
    flatten_json,
    is_json_task,
    json_field_scores,
    json_reference,
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
    metrics = ["json_valid", "json_field_f1", "exact_match"]
    totals.add(score_pair(dump(REF), dump(REF), metrics))
    totals.add(score_pair("oops", dump(REF), metrics))
    # Free-text references (a follow-up answer: a name, a date, a count): JSON metrics do not apply,
    # even when the model answers with JSON and even when the reference is a bare JSON scalar.
    totals.add(score_pair('{"a": 1}', "Bolt GmbH", metrics))
    totals.add(score_pair("2021-04-01", "2021-04-01", metrics))
    totals.add(score_pair("2", "2", metrics))
    means = totals.means()
    assert totals.counts == {"json_valid": 2, "json_field_precision": 2, "json_field_recall": 2,
                             "json_field_f1": 2, "exact_match": 5}
    assert means["json_valid"] == 0.5 and means["json_field_f1"] == 0.5
    assert means["exact_match"] == pytest.approx(3 / 5)


def test_json_reference_is_an_object_or_array():
    assert json_reference(dump(REF)) == REF and json_reference("[1, 2]") == [1, 2]
    assert json_reference('```json\n{"a": 1}\n```') == {"a": 1}
    assert json_reference("2") is None and json_reference('"Acme"') is None and json_reference("Acme Ltd") is None
    assert json_field_scores("2", "2") is None  # a bare scalar reference is a free-text answer
    assert is_json_task(9, 16) and not is_json_task(8, 16) and not is_json_task(0, 0)


def test_score_pair_rejects_an_unknown_metric():
    with pytest.raises(ValueError, match="unknown task metric 'bleu'"):
        score_pair("a", "a", ["bleu"])


# ---- fact recall ----------------------------------------------------------------------------------
def test_facts_of_real_answers():
    assert extract_facts("Your order A-1234 shipped on 2021-03-04 to Jane Doe in Berlin.") == [
        "A-1234", "2021-03-04", "Jane Doe", "Berlin"]
    # numbers lose edge punctuation and symbols; a capitalised run is one fact; a comma ends it
    assert extract_facts("The price is $1,200.50 (10% off) for Acme Holdings Ltd, Bolt GmbH and me.") == [
        "1,200.50", "10", "Acme Holdings Ltd", "Bolt GmbH"]
    # a sentence's first word alone is grammar, not a name; a run that starts a sentence is a name
    assert extract_facts("Thank you. Please call Jane.") == ["Jane"]
    assert extract_facts("Acme Ltd signed it. I agree.") == ["Acme Ltd"]
    assert extract_facts("Bolt GmbH") == ["Bolt GmbH"] and extract_facts("England") == []
    assert extract_facts("3") == ["3"] and extract_facts("v3.5 and 3.5 and 3.5") == ["v3.5", "3.5"]
    # quotes and brackets separate words, so the values of a JSON answer are facts too
    assert extract_facts('{"name": "Acme Ltd", "date": "2021-04-01"}') == ["Acme Ltd", "2021-04-01"]
    assert extract_facts("no facts in this one, really.") == []


def test_fact_recall_counts_verbatim_whole_word_matches():
    ref = "Your order A-1234 shipped on 2021-03-04 to Jane Doe in Berlin."
    assert fact_recall(ref, ref) == 1.0
    # 2 of 4 facts: the date and the city; "A-12345" is not A-1234 and "Jane  Smith" is not Jane Doe
    assert fact_recall("Order A-12345 went to Jane Smith in Berlin on 2021-03-04", ref) == 0.5
    assert fact_recall("Jane\nDoe", "Jane Doe is here") == 1.0  # any whitespace between the words
    assert fact_recall("in 12021", "in 2021") == 0.0  # a number inside another is not that number
    assert fact_recall("anything", "no facts here.") is None  # nothing to recall: left out


def test_rouge_l_high_but_fact_recall_low():
    """A chat model that keeps the reference's phrasing and gets every fact wrong: ROUGE-L says good."""
    ref = ("Thank you for contacting us. Your order A-1234 has been shipped on 2021-03-04 and will arrive "
           "within a few business days. Please contact Jane Doe if you have any questions.")
    pred = ("Thank you for contacting us. Your order B-9876 has been shipped on 2020-11-30 and will arrive "
            "within a few business days. Please contact John Roe if you have any questions.")
    assert extract_facts(ref) == ["A-1234", "2021-03-04", "Jane Doe"]
    assert rouge_l(pred, ref) > 0.75  # rouge_score splits A-1234 and dates into tokens, most of them wrong
    assert fact_recall(pred, ref) == 0.0
    values = score_pair(pred, ref, ["rouge_l", "fact_recall"])
    assert values["rouge_l"] > 0.75 and values["fact_recall"] == 0.0
    assert "fact_recall" not in score_pair(pred, "Thank you, goodbye.", ["fact_recall"])
