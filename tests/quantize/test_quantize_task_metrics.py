"""The task metrics of the quantize step: the merged model's and every GGUF's greedy answers to the first
test conversations, scored with components.common.task_metrics against the references, with each file's
change in points against the merged model, in the report, report.md and the step outcome.

The session's `quantized` run measures on the demo's contract chats (JSON answers: json_valid and
json_field_f1). A second, small run measures on conversations whose references are the merged model's
own greedy answers, so the merged model must score exactly 1 and the files' figures are only right if
they come from their real generations."""

from __future__ import annotations

import json

import pytest
from quantize_helpers import make_config

from components.common.task_metrics import FREE_TEXT_METRICS, JSON_METRICS, is_json_task, json_reference
from components.quantize import step, verify
from components.quantize.component import outcome_of


def _first_conversations(path, n: int) -> list[list[dict]]:
    conversations = []
    for line in path.read_text(encoding="utf-8").splitlines():
        messages = json.loads(line).get("messages")
        if messages and messages[-1]["role"] == "assistant":
            conversations.append(messages)
        if len(conversations) == n:
            break
    return conversations


def _rescored(answers: list[str], references: list[str], names) -> dict:
    generations = [verify.Generation(ids=[], text=a, answer=a, stopped=True) for a in answers]
    return verify.task_scores(generations, references, tuple(names))


def test_task_metrics_of_every_model_in_the_report(quantized):
    report = quantized.report
    about, task = report["eval"]["task_metrics"], report["task_metrics"]
    expected_refs = [c[-1]["content"] for c in _first_conversations(quantized.demo.chat, 3)]
    assert report["eval"]["references"] == expected_refs and about["records"] == 3
    json_refs = sum(json_reference(r) is not None for r in expected_refs)
    assert about["names"] == list(JSON_METRICS if is_json_task(json_refs, 3) else FREE_TEXT_METRICS)
    assert about["baseline"] == "merged" and set(task) == {"merged", "Q4_K_M", "Q8_0", "F16"}

    hf = report["reference"]["hf"]
    assert task["merged"] == _rescored(hf["answers"], expected_refs, about["names"])
    for e in report["files"]:
        scores = task[e["type"]]
        assert e["task_metrics"] == scores
        rescored = _rescored(e["answers"], expected_refs, about["names"])
        for name in about["names"]:
            assert {k: scores[name][k] for k in ("value", "n")} == rescored[name], (e["type"], name)
            merged = task["merged"][name]["value"]
            assert scores[name]["delta_points"] == (
                None if merged is None else round(100 * (scores[name]["value"] - merged), 2))
    assert "delta_points" not in task["merged"][about["names"][0]]

    md = (quantized.out / "report.md").read_text()
    assert "Task metrics of greedy answers" in md and "against `merged`" in md
    assert all(f"| {key} | " in md for key in task)

    outcome = outcome_of(report)
    assert outcome.lineage["task_metrics"] == task
    assert outcome.lineage["gguf"]["Q8_0"]["task_metrics"] == task["Q8_0"]
    name = about["names"][0]
    assert outcome.metrics[f"merged_{name}"] == task["merged"][name]["value"]
    assert outcome.metrics[f"q8_0_{name}_delta_points"] == task["Q8_0"][name]["delta_points"]


def test_task_metrics_come_from_the_real_generations(demo, hf_tokenizer, tmp_path):
    """References built from the merged model's own greedy answers: the first is that answer (ROUGE-L 1),
    the second unrelated, the third the answer with words added. The merged model's ROUGE-L is then the
    mean of 1 and two figures computed here from its real answers; a file's figures are its own answers'.
    Only 2 records are scored for perplexity, so the third conversation is read past them."""
    import torch
    from transformers import AutoModelForCausalLM

    from components.common.task_metrics import rouge_l

    cfg = make_config(types=["Q8_0"], eval_records=2, generate_records=3)
    prompts = [c[:-1] for c in _first_conversations(demo.chat, 3)]
    model = AutoModelForCausalLM.from_pretrained(demo.model_dir, dtype="auto").eval()
    with torch.inference_mode():
        answers = [g.answer for g in verify.generate_hf(model, hf_tokenizer, prompts, cfg.quantize.generate_tokens)]
    del model
    assert all(answers)
    references = [answers[0], "Acme Ltd paid 1,200 on 2021-03-04.", answers[2] + " and some more words"]
    data = tmp_path / "own-answers.jsonl"
    data.write_text("".join(json.dumps({"messages": p + [{"role": "assistant", "content": r}]}) + "\n"
                            for p, r in zip(prompts, references, strict=True)))

    result = step.run(cfg, demo.model_dir, tmp_path / "out", eval_data=data)
    report, task = result.report, result.report["task_metrics"]
    assert report["eval"]["records"] == 2 and report["eval"]["references"] == references
    assert report["eval"]["task_metrics"]["names"] == list(FREE_TEXT_METRICS)  # the references are not JSON
    assert report["reference"]["hf"]["answers"] == answers
    expected = (1.0 + rouge_l(answers[1], references[1]) + rouge_l(answers[2], references[2])) / 3
    assert expected < 0.9
    assert task["merged"]["rouge_l"] == {"value": round(expected, 4), "n": 3}
    assert task["merged"]["fact_recall"]["n"] == 1  # only the second reference holds facts
    assert set(task) == {"merged", "F16", "Q8_0"}  # the unquantized GGUF is measured though not published
    for e in report["files"]:
        rescored = _rescored(e["answers"], references, FREE_TEXT_METRICS)
        for name in FREE_TEXT_METRICS:
            assert {k: task[e["type"]][name][k] for k in ("value", "n")} == rescored[name], (e["type"], name)
            assert task[e["type"]][name]["delta_points"] == pytest.approx(
                100 * (task[e["type"]][name]["value"] - task["merged"][name]["value"]), abs=0.01)


def test_without_hf_reference_the_unquantized_file_is_the_baseline():
    def answers(*texts):
        return [verify.Generation(ids=[], text=t, answer=t, stopped=True) for t in texts]

    refs = ['{"a": 1}', '{"a": 2}', "Acme Ltd"]
    names = verify.task_metric_names(refs)
    assert names == JSON_METRICS  # 2 of 3 references are JSON documents
    texts = {"F16": answers('{"a": 1}', '{"a": 2}', "x"), "Q4_K_M": answers('{"a": 1}', "oops", "Acme Ltd")}
    task, baseline = step._task_metrics(refs, names, texts, None, "F16")
    assert baseline == "F16" and set(task) == {"F16", "Q4_K_M"}
    assert task["F16"]["json_valid"] == {"value": 1.0, "n": 2}  # the free-text reference is not counted
    assert task["Q4_K_M"]["json_valid"] == {"value": 0.5, "n": 2, "delta_points": -50.0}
    assert task["Q4_K_M"]["json_field_f1"] == {"value": 0.5, "n": 2, "delta_points": -50.0}
    assert step._task_metrics([], names, {}, None, "F16") == ({}, None)
