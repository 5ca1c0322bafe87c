"""After a real short CPU fine-tune (the session's `finetuned` fixture), eval shows the tuned model
beating the base on valid-JSON rate and field F1, the gate passes, and every output is written. (An
impossible threshold on a real run: test_eval_s3.py.)"""

from __future__ import annotations

import json

from eval_helpers import read_jsonl

from components.common.task_metrics import json_reference
from components.eval import gate
from components.eval.step import flat_metrics, run

PNG = b"\x89PNG\r\n\x1a\n"


def test_tuned_beats_base_and_gate_passes(demo, prepared, finetuned, make_config, tmp_path):
    cfg = make_config(general=True, lm_eval_tasks=["hellaswag"])
    out = tmp_path / "eval"
    result = run(cfg, demo.model_dir, finetuned["dir"], prepared, out, progress=False)
    r, m = result.results, result.results["metrics"]
    print(f"\nfine-tune {finetuned['seconds']:.0f} s; " + "; ".join(
        f"{k} {v['base']:.4g} -> {v['tuned']:.4g}" for k, v in m.items()))

    assert m["json_valid"]["tuned"] >= m["json_valid"]["base"] + 0.3, m["json_valid"]
    assert m["json_field_f1"]["tuned"] >= m["json_field_f1"]["base"] + 0.05, m["json_field_f1"]
    assert m["perplexity"]["tuned"] < m["perplexity"]["base"] / 5
    assert m["rouge_l"]["tuned"] > m["rouge_l"]["base"]
    assert m["json_field_f1"]["delta"] == m["json_field_f1"]["tuned"] - m["json_field_f1"]["base"]
    assert result.passed is True and gate.read_passed(out / "gate.json") is True
    assert [c["name"] for c in result.gate["checks"]] == ["primary_improvement", "min_json_valid_rate"]
    assert all(c["passed"] and c["reason"] for c in result.gate["checks"])
    # the tuned model learned to stop at <|im_end|>: it is not cut off at max_new_tokens
    assert r["generation"]["tuned"]["truncated"] < r["num_examples"] / 4
    assert r["num_examples"] == 16 and r["models"]["kind"] == "lora"

    # the general set and lm-eval (not installed here: skipped, with the reason recorded)
    assert r["general"]["num_examples"] == 50 and r["general"]["regression_pct"] is not None
    assert r["lm_eval"] == {"status": "skipped", "tasks": ["hellaswag"], "reason": r["lm_eval"]["reason"]}
    assert "not installed" in r["lm_eval"]["reason"]

    # outputs
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["metrics"] == json.loads(json.dumps(m)) and saved["gate_passed"] is True
    flat = flat_metrics(saved)
    assert flat["tuned_json_valid"] == m["json_valid"]["tuned"] and flat["gate_passed"] == 1.0
    samples = read_jsonl(out / "samples.jsonl")
    assert len(samples) == 16 and samples[0]["reference"].startswith('{"parties"')
    # eval.metrics: auto on a JSON task; json_valid counts only the examples whose reference is JSON
    assert r["settings"]["metrics_config"] == "auto" and r["warnings"] == []
    assert r["settings"]["metrics"] == ["perplexity", "rouge_l", "exact_match", "json_valid", "json_field_f1"]
    json_refs = sum(json_reference(s["reference"]) is not None for s in samples)
    assert r["json_references"] == json_refs == m["json_valid"]["n"] == m["json_field_f1"]["n"]
    assert m["exact_match"]["n"] == m["rouge_l"]["n"] == m["perplexity"]["n"] == 16
    assert m["general_perplexity"]["n"] == 50
    assert {"prompt", "question", "reference", "base", "tuned", "base_scores", "tuned_scores"} <= set(samples[0])
    assert not any("<|im_end|>" in s["tuned"] for s in samples)
    assert (out / "eval_chart.png").read_bytes()[:8] == PNG
    md = (out / "report.md").read_text()
    assert "**Gate: PASSED**" in md and "![base vs tuned](eval_chart.png)" in md
    assert "| json_field_f1 |" in md and "General-capability regression" in md and "Skipped tasks hellaswag" in md
    assert f"{r['multi_turn_examples']} of 16 test examples are multi-turn" in md
    table = md.split("## Sample generations")[1]
    assert table.count("\n| ") == 1 + 10  # header + ten samples (prompt, reference, base, tuned)
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and page.count("<tr><td>") >= 10 + 7

