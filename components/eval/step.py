"""The eval step: `run(cfg, base_dir, tuned_dir, dataset_dir, output_dir)` over local directories.

Compares the base model with the tuned one (a LoRA adapter on it, or full weights) on the prepared
test split in one run, then checks the gate. Outputs in `output_dir`:

    eval_results.json   base, tuned, delta and n (examples scored) for every metric, the general-set
                        regression, lm-eval, warnings about metrics that do not fit the data
    gate.json           {"passed", "checks": [{name, metric, threshold, value, passed, reason}]}
    samples.jsonl       every example: prompt, reference, base and tuned outputs, per-example scores
    report.md/.html     side by side, with eval_chart.png and a table of sample generations
    eval_chart.png      base vs tuned bars

The metrics are `eval.metrics`, or with `auto` (the default) chosen from the test split before any
model is loaded (`metrics.choose_metrics`): JSON metrics when most references are JSON documents,
fact_recall otherwise. Of a multi-turn conversation only the last assistant turn is evaluated; the
report says how many there were.

Memory does not grow with the eval set: examples are streamed from the file in batches of
`eval.batch_size`, per-example results go to disk as they come, and only sums are kept.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from components.common.config import KubetuneConfig
from components.eval import data, gate, lm_eval_tasks, models, report
from components.eval.generate import batched, generate, score_completions, stop_token_ids
from components.eval.metrics import (
    JSON_METRICS,
    LOWER_IS_BETTER,
    TEXT_METRICS,
    MetricTotals,
    PerplexityTotal,
    choose_metrics,
    score_pair,
)

log = logging.getLogger(__name__)
SIDES = ("base", "tuned")


@dataclass
class EvalResult:
    passed: bool  # the gate verdict: what the pipeline branches on
    results: dict  # eval_results.json
    gate: dict  # gate.json
    output_dir: Path
    files: dict[str, Path] = field(default_factory=dict)


def _bar(total: int | None, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", disable=not progress, leave=False)


def _context_limit(model, max_new_tokens: int) -> int | None:
    n = getattr(model.config, "max_position_embeddings", None)
    return max(16, n - max_new_tokens) if n else None


def _score_side(side: str, model, tokenizer, source: data.ExampleSource, n: int, cfg: KubetuneConfig,
                metrics: list[str], work: Path, general_path: Path | None, progress: bool) -> dict:
    """One model over the test split (and the general set): per-example lines to work/<side>.*.jsonl.

    Returns each metric's mean and, in `counts`, how many examples it was computed on."""
    e = cfg.eval
    chosen = [m for m in metrics if m in TEXT_METRICS]
    stop_ids = stop_token_ids(tokenizer, model)
    limit = getattr(model.config, "max_position_embeddings", None)
    out: dict = {"truncated": 0, "new_tokens": 0, "counts": {}}
    ppl = PerplexityTotal()
    if "perplexity" in metrics:
        scored = 0
        with open(work / f"{side}.ppl.jsonl", "w") as f, _bar(n, f"{side}: perplexity", progress) as bar:
            for batch in batched(source, e.batch_size):
                for nll, tokens in score_completions(model, tokenizer, [(x.ppl_prompt, x.ppl_completion)
                                                                        for x in batch], max_tokens=limit):
                    ppl.add(nll, tokens)
                    scored += tokens > 0
                    f.write(json.dumps({"nll": nll, "tokens": tokens}) + "\n")
                bar.update(len(batch))
        out["perplexity"] = ppl.value
        out["counts"]["perplexity"] = scored
    totals = MetricTotals()
    with open(work / f"{side}.gen.jsonl", "w") as f, _bar(n, f"{side}: generation", progress) as bar:
        for batch in batched(source, e.batch_size):
            gens = generate(model, tokenizer, [x.gen_prompt for x in batch], max_new_tokens=e.max_new_tokens,
                            stop_ids=stop_ids, max_prompt_tokens=_context_limit(model, e.max_new_tokens))
            for x, g in zip(batch, gens, strict=True):
                values = score_pair(g.text, x.reference, chosen)
                totals.add(values)
                out["truncated"] += not g.stopped
                out["new_tokens"] += g.new_tokens
                f.write(json.dumps({"output": g.text, "new_tokens": g.new_tokens, "stopped": g.stopped,
                                    "scores": values}) + "\n")
            bar.update(len(batch))
    out.update(totals.means())
    out["counts"].update(totals.counts)
    if general_path is not None:
        general = PerplexityTotal()
        count = 0
        with _bar(None, f"{side}: general perplexity", progress) as bar:
            for batch in batched(data.general_pairs(general_path, tokenizer), e.batch_size):
                for nll, tokens in score_completions(model, tokenizer, batch, max_tokens=limit):
                    general.add(nll, tokens)
                count += len(batch)
                bar.update(len(batch))
        out.update(general_perplexity=general.value, general_tokens=general.tokens, general_examples=count)
        out["counts"]["general_perplexity"] = count
    return out


def _finite(v):
    return v if v is None or (isinstance(v, float) and math.isfinite(v)) or not isinstance(v, float) else None


def _metric_names(chosen: list[str], general: bool) -> list[str]:
    names = []
    for m in chosen:
        names += ["perplexity"] if m == "perplexity" else list(TEXT_METRICS[m])
    return names + (["general_perplexity"] if general else [])


def _results(chosen: list[str], sides: dict, general_uri: str | None) -> tuple[dict, dict | None]:
    metrics = {}
    for name in _metric_names(chosen, general_uri is not None):
        b, t = _finite(sides["base"].get(name)), _finite(sides["tuned"].get(name))
        # n: the examples the metric was computed on; the same for both sides (it depends on the reference)
        metrics[name] = {"base": b, "tuned": t, "delta": None if b is None or t is None else t - b,
                         "higher_is_better": name not in LOWER_IS_BETTER,
                         "n": sides["tuned"]["counts"].get(name, 0)}
    general = None
    if general_uri is not None:
        b, t = metrics["general_perplexity"]["base"], metrics["general_perplexity"]["tuned"]
        general = {"uri": general_uri, "num_examples": sides["base"]["general_examples"],
                   "tokens": sides["base"]["general_tokens"], "base": b, "tuned": t,
                   "regression_pct": None if not b or t is None else 100.0 * (t - b) / b}
    return metrics, general


def _write_samples(source: data.ExampleSource, work: Path, cfg: KubetuneConfig, path: Path, keep: int) -> list:
    """Join the test split with both sides' per-example lines, one line at a time, into samples.jsonl."""
    files = {f"{side}.{kind}": work / f"{side}.{kind}.jsonl" for side in SIDES for kind in ("gen", "ppl")}
    handles = {k: open(p) for k, p in files.items() if p.is_file()}
    kept = []
    try:
        with open(path, "w", encoding="utf-8") as out:
            for x in source:
                rec = {"index": x.index, "id": x.id, "source": x.source, "question": x.question,
                       "prompt": x.gen_prompt, "reference": x.reference}
                for side in SIDES:
                    g = json.loads(handles[f"{side}.gen"].readline())
                    rec[side] = g["output"]
                    rec[f"{side}_scores"] = g["scores"]
                    rec[f"{side}_stopped"] = g["stopped"]
                    if f"{side}.ppl" in handles:
                        p = json.loads(handles[f"{side}.ppl"].readline())
                        rec[f"{side}_nll"], rec["completion_tokens"] = p["nll"], p["tokens"]
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                if len(kept) < keep:
                    kept.append(rec)
    finally:
        for h in handles.values():
            h.close()
    return kept


def metric_warnings(chosen: list[str], counts: data.SplitCounts) -> list[str]:
    """One line per chosen metric that has nothing to score in this test split (it comes out empty)."""
    warnings = []
    for m in chosen:
        if m in JSON_METRICS and counts.json_references == 0:
            warnings.append(f"eval.metrics includes {m}, but none of the {counts.examples} test references parses "
                            f"as a JSON object or array, so {m} is not computed (n = 0); for a chat or free-text "
                            "task use rouge_l and fact_recall (eval.metrics: auto picks them)")
        elif m == "fact_recall" and counts.fact_references == 0:
            warnings.append(f"eval.metrics includes fact_recall, but none of the {counts.examples} test references "
                            "holds a fact (a number, a date, a code or a proper name), so it is not computed (n = 0)")
    return warnings


def flat_metrics(results: dict) -> dict[str, float]:
    """eval_results.json as flat name -> number pairs (KFP Metrics): base_x, tuned_x, delta_x, ..."""
    flat: dict[str, float] = {}
    for name, entry in results["metrics"].items():
        for side in ("base", "tuned", "delta"):
            if entry.get(side) is not None:
                flat[f"{side}_{name}"] = float(entry[side])
    if results.get("general") and results["general"].get("regression_pct") is not None:
        flat["general_ppl_regression_pct"] = float(results["general"]["regression_pct"])
    flat["gate_passed"] = float(bool(results.get("gate_passed")))
    return flat


def run(cfg: KubetuneConfig, base_dir: Path, tuned_dir: Path, dataset_dir: Path, output_dir: Path, *,
        general_path: Path | None = None, base_uri: str | None = None, tuned_uri: str | None = None,
        dataset_uri: str | None = None, progress: bool = True) -> EvalResult:
    """Evaluate base vs tuned on the test split, write the outputs, return the gate verdict."""
    t0 = time.monotonic()
    base_dir, tuned_dir, dataset_dir, output_dir = map(Path, (base_dir, tuned_dir, dataset_dir, output_dir))
    gate.required_metrics(cfg)  # cheap checks first: a bad threshold must not cost a model load
    test_path = data.find_test_split(dataset_dir)
    kind = models.tuned_kind(tuned_dir)
    tokenizer = models.load_tokenizer(cfg, tuned_dir, base_dir)
    source = data.ExampleSource(test_path, tokenizer, cfg.eval.max_examples)
    counts = source.count()
    n = counts.examples
    gate.fits_data(cfg, n, counts.json_references, counts.fact_references)
    chosen = choose_metrics(cfg.eval.metrics, examples=n, json_references=counts.json_references,
                            gate_metrics=gate.gate_metrics(cfg))
    warnings = metric_warnings(chosen, counts)
    for w in warnings:
        log.warning("eval: %s", w)
    general_uri = cfg.data.general_eval
    if general_uri and general_path is None:
        from components.common import storage

        general_path = storage.fetch_file(general_uri)
    log.info("eval: %d test examples (%d plain-text records skipped; %d with a JSON reference, %d multi-turn, "
             "of which only the last assistant turn is evaluated), tuned = %s, metrics %s%s", n,
             counts.text_records, counts.json_references, counts.multi_turn, kind, ", ".join(chosen),
             " (auto)" if cfg.eval.metrics == "auto" else "")
    output_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="kubetune-eval-"))
    try:
        sides: dict[str, dict] = {}
        with models.model_views(cfg, base_dir, tuned_dir, base_uri or str(base_dir)) as views:
            for side in SIDES:
                with views[side]() as model:
                    sides[side] = _score_side(side, model, tokenizer, source, n, cfg, chosen, work,
                                              Path(general_path) if general_path else None, progress)
            lm = lm_eval_tasks.run(cfg.eval.lm_eval_tasks, views, tokenizer, cfg.eval.batch_size)
        samples = _write_samples(source, work, cfg, output_dir / "samples.jsonl", cfg.eval.num_samples_in_report)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    metrics, general = _results(chosen, sides, general_uri)
    results = {
        "metrics": metrics, "general": general, "lm_eval": lm, "num_examples": n,
        "skipped_text_records": counts.text_records, "json_references": counts.json_references,
        "fact_references": counts.fact_references, "multi_turn_examples": counts.multi_turn,
        "warnings": warnings, "dataset": dataset_uri or str(test_path),
        "models": {"kind": kind, "base": base_uri or str(base_dir), "tuned": tuned_uri or str(tuned_dir),
                   "device": views["device"], "dtype": views["dtype"]},
        "generation": {s: {"truncated": sides[s]["truncated"], "mean_new_tokens": sides[s]["new_tokens"] / n}
                       for s in SIDES},
        "settings": {"metrics": chosen, "metrics_config": cfg.eval.metrics,
                     "max_new_tokens": cfg.eval.max_new_tokens, "batch_size": cfg.eval.batch_size,
                     "max_examples": cfg.eval.max_examples, "decoding": "greedy"},
    }
    verdict = gate.evaluate(cfg, results)
    results["gate_passed"] = verdict["passed"]
    results["seconds"] = round(time.monotonic() - t0, 2)
    files = {"results": output_dir / "eval_results.json", "gate": gate.write(verdict, output_dir / "gate.json"),
             "samples": output_dir / "samples.jsonl"}
    files["results"].write_text(json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    files.update(report.write(results, verdict, samples, output_dir))
    for c in verdict["checks"]:
        log.info("gate %s: %s", "pass" if c["passed"] else "FAIL", c["reason"])
    log.info("eval done in %.0f s: gate %s", results["seconds"], "PASSED" if verdict["passed"] else "FAILED")
    return EvalResult(passed=verdict["passed"], results=results, gate=verdict, output_dir=output_dir, files=files)
