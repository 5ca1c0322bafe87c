"""Eval on test splits that are not (only) the JSON task the defaults were written for, with the tiny
random demo model as both base and tuned (full weights): `eval.metrics: auto` picks the metrics from the
references, every metric says how many examples it was computed on (n), JSON metrics count only
examples whose reference is JSON, a JSON metric that does not fit the data is a warning in the log and
the report, a JSON gate on a chat split fails before any model is loaded, and the report says that only
the last assistant turn of a multi-turn conversation is evaluated."""

from __future__ import annotations

import json
import logging

import pytest
from eval_helpers import read_jsonl, write_jsonl

from components.common.task_metrics import fact_recall, json_valid
from components.eval.gate import GateError
from components.eval.step import run

CONTRACT = "Extract the parties. This Agreement is made between Acme Ltd (Seller) and Bolt GmbH (Buyer)."
PARTIES = json.dumps({"parties": [{"name": "Acme Ltd", "role": "Seller"}, {"name": "Bolt GmbH", "role": "Buyer"}]})


def chat(*turns: str) -> dict:
    roles = ["user", "assistant"] * len(turns)
    return {"messages": [{"role": r, "content": t} for r, t in zip(roles, turns, strict=False)]}


# A chat task: no reference is a JSON document. Facts: a date, a name, a count; one answer has none.
# The last record is multi-turn: its first answer is JSON, but only the last one ("2") is evaluated.
CHAT_SPLIT = [chat("What is the effective date in YYYY-MM-DD format?", "2021-03-04"),
              chat("Which party is the Seller?", "Acme Ltd"),
              chat("Say goodbye politely.", "Thank you, goodbye."),
              chat(CONTRACT, PARTIES, "How many parties are named?", "2")]


def small(make_config, **eval_section):
    return make_config(max_new_tokens=8, batch_size=4, **eval_section)


def test_chat_split_gets_rouge_and_fact_recall(make_config, demo, tmp_path):
    data = write_jsonl(tmp_path / "data" / "test.jsonl", CHAT_SPLIT).parent
    cfg = small(make_config, gate={"primary_metric": "rouge_l"})  # eval.metrics left at its default: auto
    out = tmp_path / "out"
    result = run(cfg, demo.model_dir, demo.model_dir, data, out, progress=False)
    r, m = result.results, result.results["metrics"]
    assert r["settings"]["metrics"] == ["perplexity", "rouge_l", "exact_match", "fact_recall"]
    assert r["settings"]["metrics_config"] == "auto"
    assert (r["num_examples"], r["json_references"], r["fact_references"], r["multi_turn_examples"]) == (4, 0, 3, 1)
    assert r["warnings"] == []
    assert {k: v["n"] for k, v in m.items()} == {"perplexity": 4, "rouge_l": 4, "exact_match": 4, "fact_recall": 3}
    # fact_recall is the mean over the three answers with facts of what the model really generated
    samples = read_jsonl(out / "samples.jsonl")
    for side in ("base", "tuned"):
        recalls = [fact_recall(s[side], s["reference"]) for s in samples]
        assert [s[f"{side}_scores"].get("fact_recall") for s in samples] == recalls
        assert m["fact_recall"][side] == pytest.approx(sum(x for x in recalls if x is not None) / 3)
    md = (out / "report.md").read_text()
    assert ("Only the last assistant turn of each conversation is evaluated: 1 of 4 test examples are "
            "multi-turn") in md
    assert "| metric | base | tuned | delta | n |" in md and "| fact_recall | " in md
    assert "1 of 4 test examples are multi-turn" in (out / "report.html").read_text()


def test_json_metric_on_a_chat_split_is_a_warning(make_config, demo, tmp_path, caplog):
    data = write_jsonl(tmp_path / "data" / "test.jsonl", CHAT_SPLIT).parent
    cfg = small(make_config, metrics=["rouge_l", "json_valid", "json_field_f1"], gate={"primary_metric": "rouge_l"})
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="components.eval.step"):
        result = run(cfg, demo.model_dir, demo.model_dir, data, out, progress=False)
    m, warnings = result.results["metrics"], result.results["warnings"]
    assert [w.split(",")[0] for w in warnings] == ["eval.metrics includes json_valid",
                                                   "eval.metrics includes json_field_f1"]
    assert "none of the 4 test references parses as a JSON object or array" in warnings[0]
    assert "use rouge_l and fact_recall" in warnings[0]
    assert [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING] == [
        f"eval: {w}" for w in warnings]
    assert m["json_valid"] == {"base": None, "tuned": None, "delta": None, "higher_is_better": True, "n": 0}
    assert m["json_field_f1"]["n"] == 0 and m["rouge_l"]["n"] == 4
    assert f"**Warning:** {warnings[0]}" in (out / "report.md").read_text()
    assert "<b>Warning:</b> eval.metrics includes json_valid" in (out / "report.html").read_text()


def test_json_gate_on_a_chat_split_fails_before_loading_a_model(make_config, demo, tmp_path):
    data = write_jsonl(tmp_path / "data" / "test.jsonl", CHAT_SPLIT).parent
    cfg = small(make_config, gate={"primary_metric": "json_field_f1"})
    with pytest.raises(GateError, match=r"eval.gate.primary_metric is 'json_field_f1', a JSON metric, but none of "
                                        r"the 4 test references .* set eval.gate.primary_metric to rouge_l or "
                                        r"fact_recall"):
        run(cfg, demo.model_dir, demo.model_dir, data, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_json_metrics_count_only_json_references(make_config, demo, tmp_path):
    """A JSON task with some free-text answers: auto picks the JSON metrics; json_valid is averaged over
    the JSON references only, exact match and ROUGE-L over every example."""
    split = [chat(CONTRACT, PARTIES), chat(CONTRACT + " Again.", PARTIES), chat(CONTRACT + " Once more.", PARTIES),
             chat("Which party is the Buyer?", "Bolt GmbH")]
    data = write_jsonl(tmp_path / "data" / "test.jsonl", split).parent
    cfg = small(make_config, gate={"primary_metric": "json_valid"})
    out = tmp_path / "out"
    r = run(cfg, demo.model_dir, demo.model_dir, data, out, progress=False).results
    assert r["settings"]["metrics"] == ["perplexity", "rouge_l", "exact_match", "json_valid", "json_field_f1"]
    assert {k: v["n"] for k, v in r["metrics"].items()} == {
        "perplexity": 4, "rouge_l": 4, "exact_match": 4, "json_valid": 3, "json_field_precision": 3,
        "json_field_recall": 3, "json_field_f1": 3}
    samples = read_jsonl(out / "samples.jsonl")
    assert "json_valid" not in samples[3]["tuned_scores"]
    assert r["metrics"]["json_valid"]["tuned"] == pytest.approx(sum(json_valid(s["tuned"]) for s in samples[:3]) / 3)
    assert r["multi_turn_examples"] == 0 and "0 of 4 test examples are multi-turn" in (out / "report.md").read_text()
