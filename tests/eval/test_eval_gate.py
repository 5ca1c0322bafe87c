"""The gate over eval results: pass, fail with a reason, perplexity's direction, and thresholds on
metrics that are not computed (a clear error, raised before any model is loaded)."""

from __future__ import annotations

import json

import pytest

from components.common.config import config_from_dict
from components.eval import gate
from components.eval.gate import GateError


def make_cfg(**eval_section):
    return config_from_dict({"model": {"name": "m", "base": "/nonexistent"}, "data": {"sources": [{"uri": "x"}]},
                             "storage": {"root": "/tmp/x"}, "eval": eval_section})


def results(**metrics):
    return {"metrics": {k: {"base": b, "tuned": t, "delta": t - b} for k, (b, t) in metrics.items()},
            "general": None}


def test_gate_passes_and_every_check_has_a_reason(tmp_path):
    cfg = make_cfg(gate={"primary_metric": "json_field_f1", "min_primary_improvement": 0.1,
                         "min_json_valid_rate": 0.8})
    verdict = gate.evaluate(cfg, results(json_field_f1=(0.2, 0.7), json_valid=(0.1, 0.9)))
    assert verdict["passed"] is True
    assert [c["name"] for c in verdict["checks"]] == ["primary_improvement", "min_json_valid_rate"]
    primary = verdict["checks"][0]
    assert primary["value"] == pytest.approx(0.5) and primary["threshold"] == 0.1 and primary["passed"]
    assert set(primary) == {"name", "metric", "threshold", "value", "passed", "reason"}
    gate.write(verdict, tmp_path / "gate.json")
    assert gate.read_passed(tmp_path / "gate.json") is True


def test_impossible_threshold_fails_with_reason():
    cfg = make_cfg(gate={"primary_metric": "json_field_f1", "min_primary_improvement": 2.0,
                         "min_json_valid_rate": 0.95})
    verdict = gate.evaluate(cfg, results(json_field_f1=(0.2, 0.7), json_valid=(0.1, 0.9)))
    assert verdict["passed"] is False
    primary, valid = verdict["checks"]
    assert not primary["passed"] and "improvement +0.5 (tuned - base) < the required 2" in primary["reason"]
    assert not valid["passed"] and "0.900 < the required 0.95" in valid["reason"]
    json.dumps(verdict)  # JSON-serialisable as is


def test_perplexity_improvement_means_lower():
    cfg = make_cfg(metrics=["perplexity"], gate={"primary_metric": "perplexity", "min_primary_improvement": 1.0})
    passed = gate.evaluate(cfg, results(perplexity=(12.0, 8.0)))
    assert passed["passed"] and passed["checks"][0]["value"] == pytest.approx(4.0)
    assert not gate.evaluate(cfg, results(perplexity=(8.0, 12.0)))["passed"]


def test_general_regression_check():
    cfg = make_cfg(gate={"primary_metric": "json_valid", "max_general_ppl_regression_pct": 10.0})
    cfg.data.general_eval = "/some/general.jsonl"
    r = results(json_valid=(0.0, 1.0), general_perplexity=(20.0, 23.0))
    r["general"] = {"regression_pct": 15.0}
    verdict = gate.evaluate(cfg, r)
    check = verdict["checks"][1]
    assert not verdict["passed"] and check["name"] == "general_ppl_regression" and check["value"] == 15.0
    assert "+15.00% > the allowed 10%" in check["reason"]


def test_threshold_on_metric_not_computed_is_a_clear_error():
    cfg = make_cfg(metrics=["rouge_l", "json_valid"], gate={"primary_metric": "json_field_f1"})
    with pytest.raises(GateError, match=r"primary_metric is 'json_field_f1', which is not computed: "
                                        r"eval.metrics is \[rouge_l, json_valid\]"):
        gate.required_metrics(cfg)
    cfg = make_cfg(metrics=["json_field_f1"], gate={"min_json_valid_rate": 0.5})
    with pytest.raises(GateError, match="min_json_valid_rate needs the metric 'json_valid'"):
        gate.required_metrics(cfg)
    cfg = make_cfg(gate={"max_general_ppl_regression_pct": 5})
    with pytest.raises(GateError, match="data.general_eval is not set"):
        gate.required_metrics(cfg)
    # ... and on results that lack it (or where it came out empty), naming what was computed
    cfg = make_cfg(gate={"primary_metric": "json_field_f1"})
    with pytest.raises(GateError, match=r"'json_field_f1', but it was not computed; computed: \[json_valid\]"):
        gate.evaluate(cfg, results(json_valid=(0.1, 0.2)))
    empty = results(json_valid=(0.1, 0.2))
    empty["metrics"]["json_field_f1"] = {"base": None, "tuned": None, "delta": None}
    with pytest.raises(GateError, match="came out empty"):
        gate.evaluate(cfg, empty)


def test_auto_metrics_need_no_list_check_but_the_data_must_fit():
    cfg = make_cfg(gate={"primary_metric": "json_field_f1", "min_json_valid_rate": 0.5})
    assert cfg.eval.metrics == "auto"
    gate.required_metrics(cfg)  # auto always computes what the gate reads
    assert gate.gate_metrics(cfg) == ["json_field_f1", "json_valid"]
    gate.fits_data(cfg, examples=16, json_references=1, fact_references=0)
    # a chat test split (no JSON reference) under the JSON default: fail, naming the setting and the way out
    with pytest.raises(GateError, match=r"eval.gate.primary_metric is 'json_field_f1', a JSON metric, but none of "
                                        r"the 16 test references parses as a JSON object or array.*set "
                                        r"eval.gate.primary_metric to rouge_l or fact_recall"):
        gate.fits_data(cfg, examples=16, json_references=0, fact_references=16)
    cfg = make_cfg(gate={"primary_metric": "rouge_l", "min_json_valid_rate": 0.5})
    with pytest.raises(GateError, match=r"eval.gate.min_json_valid_rate is set, but none of the 4 test references"):
        gate.fits_data(cfg, examples=4, json_references=0, fact_references=4)
    cfg = make_cfg(gate={"primary_metric": "fact_recall"})
    gate.fits_data(cfg, examples=4, json_references=0, fact_references=1)
    with pytest.raises(GateError, match=r"'fact_recall', but none of the 4 test references holds a fact"):
        gate.fits_data(cfg, examples=4, json_references=4, fact_references=0)


def test_eval_metrics_config_is_auto_or_a_list_of_known_metrics():
    from components.common.config import ConfigError

    assert make_cfg(metrics=["rouge_l", "fact_recall"]).eval.metrics == ["rouge_l", "fact_recall"]
    with pytest.raises(ConfigError, match=r"eval.metrics: expected 'auto' or .*got \"all\""):
        make_cfg(metrics="all")
    with pytest.raises(ConfigError, match=r"eval.metrics.0: expected 'perplexity', .* or 'fact_recall'"):
        make_cfg(metrics=["bleu"])
