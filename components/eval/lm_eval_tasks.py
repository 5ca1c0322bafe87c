"""Optional general benchmarks through lm-evaluation-harness (`lm_eval`), for `eval.lm_eval_tasks`.

lm-eval is not a dependency: where it is not installed, or a task's data cannot be downloaded (an
offline cluster), the tasks are skipped with one logged line and the reason is recorded in
eval_results.json (`lm_eval: {status: skipped, tasks, reason}`) instead of failing the eval.
"""

from __future__ import annotations

import importlib.util
import logging

log = logging.getLogger(__name__)

# The headline number of a task's results, in order of preference.
_PREFERRED = ("acc_norm,none", "acc,none", "exact_match,strict-match", "exact_match,none", "f1,none")


def _skipped(tasks: list[str], reason: str) -> dict:
    log.warning("lm-eval tasks %s skipped: %s", ", ".join(tasks), reason)
    return {"status": "skipped", "tasks": tasks, "reason": reason}


def run(tasks: list[str], views: dict, tokenizer, batch_size: int) -> dict:
    """{status: not_requested | skipped | done, tasks, reason?, results?: {task: {base, tuned, metric}}}"""
    tasks = list(tasks)
    if not tasks:
        return {"status": "not_requested", "tasks": []}
    if importlib.util.find_spec("lm_eval") is None:
        return _skipped(tasks, "lm-eval (lm-evaluation-harness) is not installed in this image; install "
                               "lm-eval to run these tasks")
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
    except Exception as e:  # a broken install
        return _skipped(tasks, f"lm-eval cannot be imported ({type(e).__name__}: {e})")
    results: dict[str, dict] = {}
    for side in ("base", "tuned"):
        try:
            with views[side]() as model:
                lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
                out = simple_evaluate(model=lm, tasks=tasks, log_samples=False)
        except Exception as e:  # most often: the task's dataset cannot be downloaded here
            return _skipped(tasks, f"lm-eval could not run ({type(e).__name__}: {str(e)[:300]}); the task data "
                                   "is probably not reachable from here (offline?)")
        for task, values in (out or {}).get("results", {}).items():
            key = next((k for k in _PREFERRED if k in values), None)
            if key is not None:
                results.setdefault(task, {"metric": key})[side] = float(values[key])
    return {"status": "done", "tasks": tasks, "results": results}
