"""The one wrapper every KFP component calls: manifests in, step, manifests out.

A component (components/<step>/component.py) is a thin @dsl.component whose body calls `run_step`
with a step function `execute(cfg, inputs, output_dir) -> StepOutcome`. Around it, this module does
the same things for every step:

1. Resolve the input artifacts: each is a small JSON manifest naming an S3 (or file://) URI.
2. Fetch those directories into the content-addressed cache, verifying every sha256.
3. Explicit caching: the same step, config sections and input content (manifest hashes) as an
   earlier complete run reuse that run's output instead of recomputing (off per step by config).
4. Run the step into a local staging directory.
5. Publish the outputs under `<root>/runs/<run-id>/<step>/`, writing the output manifest last.
6. Write the KFP outputs: the manifest artifact, Metrics, and the report as HTML for the KFP UI.

Nothing here imports a step: the dependency direction stays pipelines -> components -> common.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from components.common import storage
from components.common.config import KubetuneConfig
from components.common.errors import KubetuneError

log = logging.getLogger("kubetune.step")

OUTCOME_FILE = "step_outcome.json"
# Bump when a step's outputs change meaning, so that older cache entries are not reused.
CACHE_VERSION = "1"
# The config sections each step's output depends on; the cache key hashes only these.
CACHE_SECTIONS = {
    "prepare": ("model", "data", "prepare"),
    "train": ("model", "train"),
    "eval": ("model", "eval", "data"),
    "merge": ("model", "merge"),
    "quantize": ("quantize",),
}


@dataclass
class StepOutcome:
    """What a step reports back besides its files."""

    metrics: dict[str, float] = field(default_factory=dict)  # shown as KFP Metrics
    report: str | None = None  # path of a Markdown report, relative to the output dir
    flags: dict[str, bool | str] = field(default_factory=dict)  # e.g. gate_passed, for dsl.If
    lineage: dict = field(default_factory=dict)  # merged into the output manifest's lineage
    seconds: float = 0.0  # the step's own wall time (not fetching or uploading)
    cached_from: str | None = None  # the earlier output reused, when the cache hit


@dataclass
class StepContext:
    """Where this run of the step lives: `<root>/runs/<run_id>/<step>/` is `output_uri`."""

    run_id: str
    run_root: str
    output_uri: str
    lineage: dict = field(default_factory=dict)  # what the input manifests recorded, merged


Execute = Callable[[KubetuneConfig, dict[str, Path], Path, StepContext], StepOutcome]


def read_input_manifest(artifact_path: str) -> storage.Manifest:
    """An input artifact is a manifest JSON file; its `uri` says where the bytes are."""
    try:
        return storage.Manifest.from_dict(json.loads(Path(artifact_path).read_text()))
    except (OSError, ValueError, KeyError) as e:
        raise KubetuneError(f"{artifact_path}: expected a kubetune manifest JSON as the input artifact ({e})") \
            from e


def cache_key(step: str, cfg: KubetuneConfig, inputs: dict[str, storage.Manifest]) -> str:
    sections = {name: getattr(cfg, name).model_dump(mode="json") for name in CACHE_SECTIONS.get(step, ())}
    blob = json.dumps({"step": step, "version": CACHE_VERSION, "config": sections,
                       "inputs": {k: m.content_hash() for k, m in sorted(inputs.items())}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _cache_entry_uri(cfg: KubetuneConfig, step: str, key: str) -> str:
    return storage.join_uri(cfg.storage.root, "cache", step, key)


def _cached_output(cfg: KubetuneConfig, step: str, key: str) -> storage.Manifest | None:
    entry = storage.read_manifest(_cache_entry_uri(cfg, step, key))
    if entry is None:
        return None
    output = storage.read_manifest(entry.lineage["output"])
    if output is None or output.content_hash() != entry.lineage["content_hash"]:
        log.warning("%s: cache entry %s points at a missing or changed output; recomputing", step, key[:12])
        return None
    return output


def _record_cache(cfg: KubetuneConfig, step: str, key: str, output: storage.Manifest) -> None:
    # The cache entry is itself a published (empty) directory whose manifest lineage points at the output.
    with tempfile.TemporaryDirectory() as empty:
        storage.publish_dir(empty, _cache_entry_uri(cfg, step, key), producer=f"{step}-cache", overwrite=True,
                            lineage={"output": output.uri, "content_hash": output.content_hash()})


def run_step(step: str, config_json: str, run_id: str, inputs: dict[str, str], execute: Execute,
             *, use_cache: bool = True) -> tuple[storage.Manifest, StepOutcome, Path]:
    """Resolve inputs, run `execute` (or reuse a cached output), publish. Returns the output manifest,
    the outcome, and a local directory holding the outputs (for reports)."""
    cfg = KubetuneConfig.model_validate_json(config_json)
    run_root = storage.join_uri(cfg.storage.root, "runs", run_id)
    ctx = StepContext(run_id=run_id, run_root=run_root, output_uri=storage.join_uri(run_root, step))
    manifests = {name: read_input_manifest(path) for name, path in inputs.items()}
    key = cache_key(step, cfg, manifests)
    if use_cache and step in CACHE_SECTIONS and (hit := _cached_output(cfg, step, key)) is not None:
        local = storage.fetch_dir(hit.uri)
        outcome = StepOutcome(**json.loads((local / OUTCOME_FILE).read_text()))
        outcome.cached_from = hit.uri
        outcome.seconds = 0.0
        log.info("%s: cache hit (key %s): reusing %s", step, key[:12], hit.uri)
        # The run's own folder records the reuse, so a run's history is complete without KFP's UI.
        with tempfile.TemporaryDirectory() as note:
            (Path(note) / OUTCOME_FILE).write_text(json.dumps(asdict(outcome), indent=2))
            storage.publish_dir(note, ctx.output_uri, producer=step, lineage={"cached_from": hit.uri})
        return hit, outcome, local

    local_inputs = {name: storage.fetch_dir(m.uri) for name, m in manifests.items()}
    lineage = {"config_hash": cfg.content_hash(), "cache_key": key,
               "step_inputs": {name: {"uri": m.uri, "content_hash": m.content_hash()}
                               for name, m in manifests.items()}}
    for m in manifests.values():  # carry upstream lineage (data files, base model) forward
        for k, v in m.lineage.items():
            if k not in ("step_inputs", "cache_key", "config_hash"):
                lineage.setdefault(k, v)
    ctx.lineage = dict(lineage)
    staging = Path(tempfile.mkdtemp(prefix=f"kubetune-{step}-"))
    started = time.monotonic()
    outcome = execute(cfg, local_inputs, staging, ctx)
    outcome.seconds = round(time.monotonic() - started, 3)
    lineage.update(outcome.lineage)
    (staging / OUTCOME_FILE).write_text(json.dumps(asdict(outcome), indent=2))
    output = storage.publish_dir(staging, ctx.output_uri, producer=step, lineage=lineage)
    if step in CACHE_SECTIONS:
        _record_cache(cfg, step, key, output)
    return output, outcome, staging


def write_kfp_outputs(manifest: storage.Manifest, outcome: StepOutcome, local: Path, *, artifact, metrics=None,
                      html=None, title: str = "") -> None:
    """Fill the KFP output artifacts (duck-typed: anything with .path/.uri/.metadata/.log_metric)."""
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


def kfp_main(step: str, execute: Execute, *, config: str, run_id: str, job_id: str, inputs: dict,
             output, metrics=None, html=None) -> StepOutcome:
    """The body of every component: `inputs` maps names to KFP input artifacts (manifest JSON files),
    `output`/`metrics`/`html` are the component's KFP output artifacts."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = KubetuneConfig.model_validate_json(config)
    try:
        manifest, outcome, local = run_step(step, config, run_id or job_id, {k: a.path for k, a in inputs.items()},
                                            execute, use_cache=cfg.step(step).caching)
    except KubetuneError as e:
        log.error("%s failed: %s", step, e)  # one clear line in the pod log, then the traceback
        raise
    write_kfp_outputs(manifest, outcome, local, artifact=output, metrics=metrics, html=html,
                      title=f"kubetune {step}: {cfg.model.name}")
    log.info("%s: done in %.1f s (step only); output %s", step, outcome.seconds, manifest.uri)
    return outcome
