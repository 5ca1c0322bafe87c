"""The promotion gate: config thresholds checked against eval_results.json, written as gate.json.

    {"passed": bool, "checks": [{"name", "metric", "threshold", "value", "passed", "reason"}]}

Checks (each only when its threshold is set; the primary check always runs):

* `primary_improvement`: the improvement of `gate.primary_metric`, tuned over base, is at least
  `gate.min_primary_improvement`. Improvement is signed so that positive is better: tuned - base for
  rates and scores, base - tuned for perplexity.
* `general_ppl_regression`: the general set's perplexity rises by at most
  `gate.max_general_ppl_regression_pct` percent (100 * (tuned - base) / base); needs `data.general_eval`.
* `min_json_valid_rate`: the tuned model's valid-JSON rate is at least `gate.min_json_valid_rate`.

A threshold on a metric that eval does not compute is a `GateError` naming the metric and what is
computed: `required_metrics` checks the config before any model is loaded, `fits_data` checks that
the test split gives the gate's metrics something to score (a JSON metric needs JSON references,
fact_recall references with facts), also before any model is loaded, and `evaluate` checks the
results again (a metric can still come out empty).
"""

from __future__ import annotations

import json
from pathlib import Path

from components.common.config import KubetuneConfig
from components.common.errors import KubetuneError
from components.eval.metrics import JSON_METRICS, LOWER_IS_BETTER


class GateError(KubetuneError):
    """A gate threshold refers to a metric that is not computed."""


def gate_metrics(cfg: KubetuneConfig) -> list[str]:
    """The metrics the gate's thresholds read (general_perplexity aside)."""
    g = cfg.eval.gate
    return [g.primary_metric] + (["json_valid"] if g.min_json_valid_rate is not None else [])


def required_metrics(cfg: KubetuneConfig) -> None:
    """Fail fast (before any model is loaded) when a threshold names a metric eval will not compute.

    With `eval.metrics: auto` the gate's metrics are always computed, so only the general set is checked.
    """
    g, configured = cfg.eval.gate, cfg.eval.metrics
    if configured != "auto":
        chosen = list(configured)
        if g.primary_metric not in chosen:
            raise GateError(f"eval.gate.primary_metric is {g.primary_metric!r}, which is not computed: "
                            f"eval.metrics is [{', '.join(chosen)}]; add it to eval.metrics or choose one of those")
        if g.min_json_valid_rate is not None and "json_valid" not in chosen:
            raise GateError(f"eval.gate.min_json_valid_rate needs the metric 'json_valid', which is not computed: "
                            f"eval.metrics is [{', '.join(chosen)}]; add json_valid or unset the threshold")
    if g.max_general_ppl_regression_pct is not None and not cfg.data.general_eval:
        raise GateError("eval.gate.max_general_ppl_regression_pct needs the metric 'general_perplexity', which "
                        "is not computed: data.general_eval is not set; name a {prompt, reference} JSONL there "
                        "or unset the threshold")


def fits_data(cfg: KubetuneConfig, examples: int, json_references: int, fact_references: int) -> None:
    """Fail before any model is loaded when a gate metric has nothing to score in the test split: a JSON
    metric and no reference is a JSON document, or fact_recall and no reference has a fact."""
    g = cfg.eval.gate
    if g.primary_metric in JSON_METRICS and json_references == 0:
        raise GateError(f"eval.gate.primary_metric is {g.primary_metric!r}, a JSON metric, but none of the "
                        f"{examples} test references parses as a JSON object or array, so it has nothing to "
                        "score; for a chat or free-text task set eval.gate.primary_metric to rouge_l or "
                        "fact_recall")
    if g.min_json_valid_rate is not None and json_references == 0:
        raise GateError(f"eval.gate.min_json_valid_rate is set, but none of the {examples} test references "
                        "parses as a JSON object or array, so json_valid has nothing to score; unset it for a "
                        "chat or free-text task")
    if g.primary_metric == "fact_recall" and fact_references == 0:
        raise GateError(f"eval.gate.primary_metric is 'fact_recall', but none of the {examples} test references "
                        "holds a fact (a number, a date, a code or a proper name), so it has nothing to score; "
                        "choose another eval.gate.primary_metric, e.g. rouge_l")


def _value(results: dict, metric: str, side: str, threshold_name: str) -> float:
    entry = results.get("metrics", {}).get(metric)
    value = entry.get(side) if entry else None
    if value is None:
        computed = sorted(k for k, v in results.get("metrics", {}).items() if v.get(side) is not None)
        why = "it came out empty" if entry else "it was not computed"
        raise GateError(f"eval.gate.{threshold_name} refers to the metric {metric!r}, but {why}; computed: "
                        f"[{', '.join(computed)}]")
    return float(value)


def _check(name: str, metric: str, threshold: float, value: float, passed: bool, reason: str) -> dict:
    return {"name": name, "metric": metric, "threshold": threshold, "value": value, "passed": bool(passed),
            "reason": reason}


def evaluate(cfg: KubetuneConfig, results: dict) -> dict:
    """The gate verdict for eval results (the dict written as eval_results.json)."""
    g = cfg.eval.gate
    checks = []
    m = g.primary_metric
    base = _value(results, m, "base", "primary_metric")
    tuned = _value(results, m, "tuned", "primary_metric")
    lower = m in LOWER_IS_BETTER
    gain = base - tuned if lower else tuned - base
    ok = gain >= g.min_primary_improvement
    how = "base - tuned, lower is better" if lower else "tuned - base"
    checks.append(_check(
        "primary_improvement", m, g.min_primary_improvement, gain, ok,
        f"{m}: base {base:.4g} -> tuned {tuned:.4g}, improvement {gain:+.4g} ({how}) "
        f"{'>=' if ok else '<'} the required {g.min_primary_improvement:g}"))
    if g.max_general_ppl_regression_pct is not None:
        pct = results.get("general", {}).get("regression_pct") if results.get("general") else None
        if pct is None:
            _value(results, "general_perplexity", "tuned", "max_general_ppl_regression_pct")
            raise GateError("eval.gate.max_general_ppl_regression_pct: the general perplexity regression was "
                            "not computed")
        ok = pct <= g.max_general_ppl_regression_pct
        gb = results["metrics"]["general_perplexity"]
        checks.append(_check(
            "general_ppl_regression", "general_perplexity", g.max_general_ppl_regression_pct, pct, ok,
            f"general-set perplexity: base {gb['base']:.4g} -> tuned {gb['tuned']:.4g}, {pct:+.2f}% "
            f"{'<=' if ok else '>'} the allowed {g.max_general_ppl_regression_pct:g}%"))
    if g.min_json_valid_rate is not None:
        rate = _value(results, "json_valid", "tuned", "min_json_valid_rate")
        ok = rate >= g.min_json_valid_rate
        checks.append(_check(
            "min_json_valid_rate", "json_valid", g.min_json_valid_rate, rate, ok,
            f"tuned valid-JSON rate {rate:.3f} {'>=' if ok else '<'} the required {g.min_json_valid_rate:g}"))
    return {"passed": all(c["passed"] for c in checks), "checks": checks}


def write(gate: dict, path: Path) -> Path:
    path.write_text(json.dumps(gate, indent=2) + "\n", encoding="utf-8")
    return path


def read_passed(path: Path | str) -> bool:
    """What the pipeline branches on: gate.json's `passed` (the KFP wrapper's output parameter)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return bool(data["passed"])
