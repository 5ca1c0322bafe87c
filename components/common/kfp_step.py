"""The KFP front door of a step: KFP input artifacts in, the shared lifecycle, KFP outputs out.

A component (components/<step>/component.py) is a thin @dsl.component whose body calls `kfp_main`
with its SPEC and its `execute`. KFP passes only small manifest files between steps; this module
reads them (`resolve_inputs(..., artifact_files=True)`), runs the step through the same lifecycle as
the CLI (`components.common.lifecycle.run_and_publish`, so both doors produce the same manifest,
lineage and cache key), and fills the component's outputs: the manifest artifact, Metrics, and the
report as HTML for the KFP UI.
"""

from __future__ import annotations

import logging
from pathlib import Path

from components.common import storage
from components.common.config import KubetuneConfig
from components.common.errors import KubetuneError
from components.common.lifecycle import Execute, Published, StepOutcome, resolve_inputs, run_and_publish
from components.common.steps import StepSpec

log = logging.getLogger("kubetune.step")


def write_kfp_outputs(published: Published, local: Path, *, artifact, metrics=None, html=None,
                      title: str = "") -> None:
    """Fill the KFP output artifacts (duck-typed: anything with .path/.uri/.metadata/.log_metric)."""
    manifest, outcome = published.manifest, published.outcome
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(manifest.to_json())
    artifact.metadata.update({"uri": manifest.uri, "content_hash": manifest.content_hash(),
                              "producer": manifest.producer, "cached_from": outcome.cached_from or ""})
    if metrics is not None:
        for name, value in outcome.metrics.items():
            metrics.log_metric(name, float(value))
    if html is not None and outcome.report:
        from components.common.reports import report_html

        Path(html.path).parent.mkdir(parents=True, exist_ok=True)
        Path(html.path).write_text(report_html(local / outcome.report, title or manifest.producer))


def kfp_main(spec: StepSpec, execute: Execute, *, config: str, run_id: str, job_id: str, inputs: dict,
             output, metrics=None, html=None) -> StepOutcome:
    """The body of every component: `inputs` maps names to KFP input artifacts (manifest JSON files),
    `output`/`metrics`/`html` are the component's KFP output artifacts. The run's outputs go to
    `<storage.root>/runs/<run id>/<step>/` (the run id: the `run_id` parameter, else KFP's job id)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = KubetuneConfig.model_validate_json(config)
    run_id = run_id or job_id
    output_uri = storage.join_uri(cfg.storage.root, "runs", run_id, spec.name)
    title = f"kubetune {spec.name}: {cfg.model.name}"

    def fill_outputs(published: Published, local: Path) -> None:
        write_kfp_outputs(published, local, artifact=output, metrics=metrics, html=html, title=title)

    try:
        resolved = resolve_inputs({name: a.path for name, a in inputs.items()}, artifact_files=True)
        published = run_and_publish(spec, cfg, resolved, execute, run_id=run_id, output_uri=output_uri,
                                    on_output=fill_outputs, kfp_run_id=job_id)
    except KubetuneError as e:
        log.error("%s failed: %s", spec.name, e)  # one clear line in the pod log, then the traceback
        raise
    log.info("%s: done in %.1f s (step only); output %s", spec.name, published.outcome.seconds,
             published.manifest.uri)
    return published.outcome
