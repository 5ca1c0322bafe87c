"""Running the pipeline on a laptop: the KFP local SubprocessRunner, the same pipeline function.

Every step runs as a subprocess of this Python (use_venv=False: the kubetune venv already holds
what the steps need). KFP's local runner ignores the cluster settings (GPUs, secrets, PVCs) and says
so in a warning; the steps read S3 through the standard AWS environment, as in a cluster.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from components.common import storage
from components.common.config import KubetuneConfig
from components.common.errors import KubetuneError
from components.common.lifecycle import OUTCOME_FILE
from components.common.steps import STEP_NAMES

log = logging.getLogger("kubetune.local")

@dataclass
class LocalRun:
    run_id: str
    run_root: str
    wall_seconds: float
    step_seconds: dict[str, float] = field(default_factory=dict)  # the steps' own time (step_outcome.json)
    outcomes: dict[str, dict] = field(default_factory=dict)
    release: dict | None = None
    mlflow_run_url: str | None = None  # the run's MLflow page, when it was tracked

    @property
    def overhead_seconds(self) -> float:
        """Wall time not spent inside a step: KFP orchestration, process start, imports, S3 transfers."""
        return self.wall_seconds - sum(self.step_seconds.values())


def new_run_id() -> str:
    return f"local-{datetime.now(UTC):%Y%m%d-%H%M%S}"


def with_retries(cfg: KubetuneConfig, retries: int) -> KubetuneConfig:
    """The config to build the local pipeline from, every step retried `retries` times. KFP's local
    runner honours retries with the pipeline's backoff (a minute and more), which on a laptop only
    delays a deterministic failure's report: so 0 by default. A retried train step resumes from its
    newest checkpoint (the same run id), as on a cluster."""
    from pipelines.steps import specs

    local_cfg = cfg.model_copy(deep=True)
    for spec in specs():
        local_cfg.cluster.steps[spec.name] = spec.options(local_cfg).model_copy(update={"retries": retries})
    return local_cfg


def without_retries(cfg: KubetuneConfig) -> KubetuneConfig:
    return with_retries(cfg, 0)


def run_local(cfg: KubetuneConfig, *, pipeline_root: str | Path = ".kubetune/kfp-local", run_id: str | None = None,
              scheduled: bool = False, retries: int = 0) -> LocalRun:
    """Run the whole pipeline locally and collect what each step reported. retries: how many times
    the local runner retries a failed step (a preempted or killed train step then resumes from its
    last checkpoint in S3); 0, the default, reports a failure at once."""
    if retries < 0:
        raise KubetuneError(f"retries={retries}: expected 0 or more")
    from kfp import local

    from pipelines.finetune import build_pipeline

    run_id = run_id or new_run_id()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(Path(pipeline_root).resolve()),
               raise_on_error=True)
    pipeline = build_pipeline(with_retries(cfg, retries))
    started = time.monotonic()
    try:
        pipeline(config=cfg.model_dump_json(), run_id=run_id, scheduled=scheduled)
    except RuntimeError as e:  # KFP local wraps a failed task in RuntimeError; the step logged why
        raise KubetuneError(f"local run {run_id} failed: {e}") from None
    result = LocalRun(run_id=run_id, run_root=storage.join_uri(cfg.storage.root, "runs", run_id),
                      wall_seconds=time.monotonic() - started)
    for step in STEP_NAMES:
        outcome = _read_outcome(storage.join_uri(result.run_root, step))
        if outcome is not None:
            result.outcomes[step] = outcome
            result.step_seconds[step] = 0.0 if outcome.get("cached_from") else outcome.get("seconds", 0.0)
    if "publish" in result.outcomes:
        uri = result.outcomes["publish"]["flags"]["release_uri"]
        from components.common.release import read_release

        result.release = read_release(uri)
    from components.common.tracking import run_url

    result.mlflow_run_url = run_url(cfg, run_id)
    return result


def _read_outcome(uri: str) -> dict | None:
    manifest = storage.read_manifest(uri)
    if manifest is None:
        return None
    return json.loads((storage.fetch_dir(uri) / OUTCOME_FILE).read_text())
