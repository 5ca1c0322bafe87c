"""The one lifecycle of a step run, shared by both front doors: the CLI and the KFP component.

    inputs = resolve_inputs({"dataset": uri_or_artifact_file, ...})
    published = run_and_publish(SPEC, cfg, inputs, execute, run_id=..., output_uri=...)

A step is a function `execute(cfg, inputs, output_dir, ctx) -> StepOutcome` over local paths (each
component's `execute`, a thin adapter over its `step.run`). Around it, the same things happen
whichever door the run came in by:

1. `resolve_inputs`: each input is a published directory (its manifest names the files and their
   sha256) or, from the CLI only, a plain local directory or file. Published ones are fetched into
   the content-addressed cache, every sha256 verified.
2. `run_and_publish`:
   - an output that is already published for the same cache key is reused (a retry after a
     successful publish has nothing to do); any other published output is refused, unless overwrite;
   - explicit caching: the same step, config sections and input content as an earlier complete run
     reuse that run's output (off per step with `cluster.steps.<step>.caching: false`);
   - the step runs into a staging directory, which is removed afterwards, on success and on failure;
   - the outputs are published with the manifest written last, its lineage built here, the same way
     for every door: so the CLI and KFP produce the same manifest, lineage and cache key;
   - tracking (components/common/tracking.py): the step opens the pipeline run's MLflow run first
     (`tracking.required` fails here, before any work), logs its metrics, tags and reports into it
     (the step itself gets `ctx.tracker`, e.g. for the training curve), and records in its lineage
     whether it was tracked (`tracking.<step>`).

Nothing here imports a step: the dependency direction stays pipelines -> components -> common.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from components.common import storage, tracking
from components.common.config import KubetuneConfig
from components.common.errors import KubetuneError
from components.common.steps import StepSpec

log = logging.getLogger("kubetune.step")

OUTCOME_FILE = "step_outcome.json"
# Bump when a step's outputs change meaning, so that older cache entries are not reused.
CACHE_VERSION = "1"
# Lineage keys that describe one step's own run; they are not carried forward to the next step.
OWN_LINEAGE = ("step_inputs", "cache_key", "config_hash")


@dataclass
class StepOutcome:
    """What a step reports back besides its files."""

    metrics: dict[str, float] = field(default_factory=dict)  # shown as KFP Metrics
    report: str | None = None  # path of a Markdown report, relative to the output dir
    flags: dict[str, bool | str] = field(default_factory=dict)  # e.g. gate_passed, for dsl.If
    lineage: dict = field(default_factory=dict)  # merged into the output manifest's lineage
    seconds: float = 0.0  # the step's own wall time (not fetching or uploading), measured here
    cached_from: str | None = None  # the earlier output reused, when the cache hit


@dataclass
class StepContext:
    """Where this run of the step lives (`output_uri`, e.g. `<root>/runs/<run_id>/<step>/`), what its
    inputs' manifests recorded (`lineage`, merged), and options of the door it came in by."""

    run_id: str
    output_uri: str
    input_uris: dict[str, str] = field(default_factory=dict)  # where each input came from, for reports
    lineage: dict = field(default_factory=dict)
    progress: bool = True  # progress bars on long work
    work_dir: Path | None = None  # local scratch the step may keep between retries (train's checkpoints)
    tracker: tracking.Tracker | None = None  # the run's MLflow run (does nothing when tracking is off)


Execute = Callable[[KubetuneConfig, dict[str, Path], Path, StepContext], StepOutcome]


@dataclass
class StepInput:
    """One resolved input: where its bytes are, their content hash, the upstream lineage, and the
    local (verified) copy the step reads."""

    uri: str
    content_hash: str
    lineage: dict
    local: Path


@dataclass
class Published:
    """A finished step run: the output manifest, the outcome, and whether nothing had to run."""

    manifest: storage.Manifest
    outcome: StepOutcome
    reused: str | None = None  # "cache" (an earlier run's output) or "published" (this output, already there)


# ---- 1. resolve inputs ------------------------------------------------------------------------
def resolve_inputs(refs: dict[str, str | None], *, artifact_files: bool = False) -> dict[str, StepInput]:
    """Resolve each named input. With artifact_files (the KFP door), each ref is the path of a KFP
    input artifact: a small JSON manifest naming where the published directory is. Otherwise (the
    CLI), each ref is a URI or path: a published directory (s3://, file:// or a local path holding a
    manifest), or a plain local directory or file. Refs that are None are left out."""
    resolved = {}
    for name, ref in refs.items():
        if ref is None:
            continue
        manifest = _artifact_manifest(ref) if artifact_files else _published_manifest(ref)
        if manifest is not None:
            resolved[name] = StepInput(uri=manifest.uri, content_hash=manifest.content_hash(),
                                       lineage=dict(manifest.lineage), local=storage.fetch_dir(manifest.uri))
        else:
            resolved[name] = _plain_local(name, ref)
    return resolved


def _artifact_manifest(path: str) -> storage.Manifest:
    try:
        return storage.Manifest.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError) as e:
        raise KubetuneError(f"{path}: expected a kubetune manifest JSON as the input artifact ({e})") from e


def _published_manifest(uri: str) -> storage.Manifest | None:
    if storage.is_hf(uri):
        raise storage.StorageError(f"{uri}: expected a published directory (s3://, file://) or a local path; "
                                   "hf:// names a model, given by model.base")
    manifest = storage.read_manifest(uri)
    if manifest is None and storage.is_s3(uri):
        raise storage.NotFound(f"{uri}: no {storage.MANIFEST_NAME} under this prefix; expected the published "
                               "output of a kubetune step")
    return manifest


def _plain_local(name: str, ref: str) -> StepInput:
    path = storage.local_path(ref)
    if path.is_file():
        return StepInput(uri=ref, content_hash=storage.sha256_file(path), lineage={}, local=path)
    if not path.is_dir():
        raise storage.NotFound(f"{ref}: the {name} input is neither a published directory nor a local "
                               "directory or file")
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(path).as_posix()}\0{storage.sha256_file(p)}\n".encode())
    return StepInput(uri=ref, content_hash=h.hexdigest(), lineage={}, local=path)


# ---- the explicit cache -----------------------------------------------------------------------
def cache_key(spec: StepSpec, cfg: KubetuneConfig, inputs: dict[str, StepInput]) -> str:
    """The step, its config sections and its inputs' content: what its output depends on."""
    sections = {name: getattr(cfg, name).model_dump(mode="json") for name in spec.cache_sections}
    blob = json.dumps({"step": spec.name, "version": CACHE_VERSION, "config": sections,
                       "inputs": {k: i.content_hash for k, i in sorted(inputs.items())}}, sort_keys=True)
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
    with tempfile.TemporaryDirectory(prefix="kubetune-cache-") as empty:
        storage.publish_dir(empty, _cache_entry_uri(cfg, step, key), producer=f"{step}-cache", overwrite=True,
                            lineage={"output": output.uri, "content_hash": output.content_hash()})


def read_outcome(local_dir: Path) -> StepOutcome:
    return StepOutcome(**json.loads((Path(local_dir) / OUTCOME_FILE).read_text()))


# ---- 2. run and publish -----------------------------------------------------------------------
OnOutput = Callable[[Published, Path], None]


def run_and_publish(spec: StepSpec, cfg: KubetuneConfig, inputs: dict[str, StepInput], execute: Execute, *,
                    run_id: str, output_uri: str, overwrite: bool = False, use_cache: bool | None = None,
                    progress: bool = True, work_dir: Path | None = None,
                    on_output: OnOutput | None = None, kfp_run_id: str | None = None) -> Published:
    """Run the step (or reuse an earlier output) and publish it at output_uri, manifest last.

    use_cache: read and record the explicit cache (default: the step's `cluster.steps.<step>.caching`);
    the CLI passes False, since a user who names an output expects the files there, not a pointer.
    on_output(published, local_dir) is called with a local directory holding the output's files while
    they still exist (the staging directory, or the verified cached copy of a reused output): the front
    doors read their reports from it. The staging directory is removed when this returns or raises.
    kfp_run_id: the KFP run's id (the KFP door), a tag of the MLflow run."""
    tracker = tracking.Tracker(cfg, spec.name, run_id=run_id, kfp_run_id=kfp_run_id).start()

    def on_output_tracked(published: Published, local: Path) -> None:
        if published.reused:  # a fresh run logged its outcome before publishing (below)
            tracker.log_outcome(published.outcome, local, published.manifest.lineage)
        if on_output is not None:
            on_output(published, local)

    try:
        published = _run_and_publish(spec, cfg, inputs, execute, run_id=run_id, output_uri=output_uri,
                                     overwrite=overwrite, use_cache=use_cache, progress=progress,
                                     work_dir=work_dir, on_output=on_output_tracked, tracker=tracker)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    return published


def _run_and_publish(spec: StepSpec, cfg: KubetuneConfig, inputs: dict[str, StepInput], execute: Execute, *,
                     run_id: str, output_uri: str, overwrite: bool, use_cache: bool | None, progress: bool,
                     work_dir: Path | None, on_output: OnOutput, tracker: tracking.Tracker) -> Published:
    output_uri = output_uri.rstrip("/")
    key = cache_key(spec, cfg, inputs)
    existing = storage.read_manifest(output_uri)
    if existing is not None and not overwrite:
        if existing.lineage.get("cache_key") != key:
            raise storage.StorageError(f"{output_uri}: already holds a published output ({existing.producer}) "
                                       "for other inputs or config; choose a new output (a new run id) or "
                                       "pass --overwrite")
        # A retry after a successful publish: nothing to do. When that try reused a cached output,
        # the output folder only records the reuse, and the cached output is the result.
        reused_uri = existing.lineage.get("cached_from")
        target = storage.read_manifest(reused_uri) if reused_uri else existing
        if target is not None:
            log.info("%s: %s is already published for this config and these inputs; nothing to do",
                     spec.name, output_uri)
            return _reuse(target, "cache" if reused_uri else "published", on_output)
    if use_cache is None:
        use_cache = spec.options(cfg).caching
    if use_cache and spec.cached and (hit := _cached_output(cfg, spec.name, key)) is not None:
        log.info("%s: cache hit (key %s): reusing %s", spec.name, key[:12], hit.uri)
        return _record_reuse(spec, hit, output_uri, key, overwrite, on_output)

    ctx = StepContext(run_id=run_id, output_uri=output_uri, input_uris={n: i.uri for n, i in inputs.items()},
                      lineage=_upstream_lineage(inputs),
                      progress=progress, work_dir=work_dir, tracker=tracker)
    lineage = {"config_hash": cfg.content_hash(), "cache_key": key,
               "step_inputs": {name: {"uri": i.uri, "content_hash": i.content_hash}
                               for name, i in sorted(inputs.items())},
               **ctx.lineage}
    staging = Path(tempfile.mkdtemp(prefix=f"kubetune-{spec.name}-"))
    try:
        started = time.monotonic()
        outcome = execute(cfg, {name: i.local for name, i in inputs.items()}, staging, ctx)
        outcome.seconds = round(time.monotonic() - started, 3)
        lineage.update(outcome.lineage)
        (staging / OUTCOME_FILE).write_text(json.dumps(asdict(outcome), indent=2))
        tracker.log_outcome(outcome, staging, lineage)
        lineage[f"tracking.{spec.name}"] = tracker.record()  # after logging: a failure there counts
        manifest = storage.publish_dir(staging, output_uri, producer=spec.name, lineage=lineage,
                                       overwrite=overwrite)
        if use_cache and spec.cached:
            _record_cache(cfg, spec.name, key, manifest)
        published = Published(manifest=manifest, outcome=outcome)
        on_output(published, staging)
        return published
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _upstream_lineage(inputs: dict[str, StepInput]) -> dict:
    """What the inputs' manifests recorded (data files, base model, ...), carried forward; the first
    input (by name) that names a key wins."""
    lineage: dict = {}
    for _, i in sorted(inputs.items()):
        for k, v in i.lineage.items():
            if k not in OWN_LINEAGE:
                lineage.setdefault(k, v)
    return lineage


def _reuse(manifest: storage.Manifest, how: str, on_output: OnOutput | None) -> Published:
    local = storage.fetch_dir(manifest.uri)
    outcome = read_outcome(local)
    outcome.cached_from = outcome.cached_from or (manifest.uri if how == "cache" else None)
    published = Published(manifest=manifest, outcome=outcome, reused=how)
    if on_output is not None:
        on_output(published, local)
    return published


def _record_reuse(spec: StepSpec, hit: storage.Manifest, output_uri: str, key: str, overwrite: bool,
                  on_output: OnOutput | None) -> Published:
    """A cache hit: the run's own folder records the reuse (so a run's history is complete without
    KFP's UI), and the earlier output is what the next steps read."""
    local = storage.fetch_dir(hit.uri)
    outcome = read_outcome(local)
    outcome.cached_from, outcome.seconds = hit.uri, 0.0
    with tempfile.TemporaryDirectory(prefix="kubetune-reuse-") as note:
        (Path(note) / OUTCOME_FILE).write_text(json.dumps(asdict(outcome), indent=2))
        storage.publish_dir(note, output_uri, producer=spec.name, overwrite=overwrite,
                            lineage={"cached_from": hit.uri, "cache_key": key})
    published = Published(manifest=hit, outcome=outcome, reused="cache")
    if on_output is not None:
        on_output(published, local)
    return published
