"""Experiment tracking and the model registry in MLflow: the one module that talks to MLflow.

One MLflow run per pipeline run. Every step opens a `Tracker` (components/common/lifecycle.py does,
for every door: CLI, KFP component, demo), which finds the pipeline run's MLflow run by its tag
`kubetune.run_id` (or creates it: the first step does), and a nested run for the step itself, found the
same way (tag `kubetune.step`), so a retried or restarted step logs into the same runs. Into the
pipeline's run go:

  params     the config, flattened (`train.lora.r` = 16); a config never holds credentials
  tags       lineage: run id, model, base model, config hash, data hash, KFP run id and URL, gate verdict,
             release URI and registered version
  metrics    each step's outcome metrics as `<step>.<name>` (eval: `eval.base_json_field_f1`,
             `eval.tuned_...`, `eval.delta_...`, `eval.gate_passed`; quantize: `quantize.q8_0_perplexity`, ...)
             and the training curve at every logging step: `train.loss`, `train.eval_loss`,
             `train.learning_rate`, `train.tokens_per_second` (components/train/live_metrics.py)
  artifacts  each step's reports and plots, under `<step>/`

publish registers the release as a version of the registered model `model.name` (tags: release URI,
sha256 of release.json, gate verdict, eval metrics); `kubetune promote` moves the environment's alias.

Tracking never costs a run: when the server cannot be reached (at the start or halfway), the step
logs one warning and goes on untracked; each step records whether it was tracked in its manifest's
lineage (`tracking.<step>`), and publish writes the sum into release.json (`lineage.tracking`). With
`tracking.required: true`, an unreachable server fails the first step instead, before any training.
Credentials come only from MLflow's own environment variables (MLFLOW_TRACKING_USERNAME/PASSWORD or
MLFLOW_TRACKING_TOKEN; in a cluster from the Secret `tracking.secret_name`), never from the config.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from components.common.config import KubetuneConfig
from components.common.errors import KubetuneError

log = logging.getLogger("kubetune.tracking")

URI_ENV = "MLFLOW_TRACKING_URI"
# The Secret keys a cluster step gets as env (pipelines/finetune.py); MLflow's client reads them itself.
SECRET_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
RUN_TAG, KIND_TAG, STEP_TAG = "kubetune.run_id", "kubetune.kind", "kubetune.step"
# Lineage entries (manifests) that become tags of the pipeline's run.
LINEAGE_TAGS = ("base_model", "config_hash", "data_sha256", "train_method", "train_steps", "gate_passed")
# The files of a step's output that are logged as artifacts: its reports and plots, never model files.
REPORT_SUFFIXES = (".md", ".html", ".png")
REPORT_FILES = ("stats.json", "train_metrics.json", "trainer_log.jsonl", "eval_results.json", "gate.json",
                "samples.jsonl", "merge_report.json", "quantize_report.json", "release.json", "step_outcome.json")
MAX_ARTIFACT_BYTES = 20 * 2**20
MAX_PARAM_CHARS = 6000  # MLflow's limit for a param value
BATCH = 100  # MLflow's limit of params (and tags) per log_batch call
# A dead server must cost seconds, not MLflow's default of 7 retries with exponential backoff and a
# 120 s timeout each; set only where the user has not chosen.
CLIENT_ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


class TrackingError(KubetuneError):
    """Tracking is required (tracking.required) and the MLflow server cannot be used."""


def tracking_uri(cfg: KubetuneConfig) -> str | None:
    """tracking.mlflow_uri, else MLFLOW_TRACKING_URI; None: tracking is off."""
    return cfg.tracking.mlflow_uri or os.environ.get(URI_ENV) or None


def experiment_name(cfg: KubetuneConfig) -> str:
    return cfg.tracking.experiment or f"kubetune-{cfg.model.name}"


def flatten(data, prefix: str = "") -> dict[str, str]:
    """Nested config values as MLflow params: {"train": {"lora": {"r": 16}}} -> {"train.lora.r": "16"};
    list items by index (`data.sources.0.uri`), empty lists and mappings as `[]` / `{}`, values as JSON
    (strings as they are), cut to MLflow's 6,000 characters."""
    if isinstance(data, dict) and data:
        out: dict[str, str] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(data, list) and data:
        out = {}
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}.{i}"))
        return out
    text = data if isinstance(data, str) else json.dumps(data)
    return {prefix: text[:MAX_PARAM_CHARS]}


def config_params(cfg: KubetuneConfig) -> dict[str, str]:
    return flatten(cfg.model_dump(mode="json"))


def report_files(local_dir: Path) -> list[Path]:
    """The files of a step's output logged as artifacts (top level only: reports, plots, JSON reports)."""
    return sorted(p for p in Path(local_dir).iterdir()
                  if p.is_file() and (p.suffix in REPORT_SUFFIXES or p.name in REPORT_FILES)
                  and p.stat().st_size <= MAX_ARTIFACT_BYTES)


class Tracker:
    """The pipeline run's MLflow run (and this step's nested run), as seen from one step.

    Every method is safe to call when tracking is off or the server has gone: it does nothing then.
    The first failure logs one warning and turns the tracker off for the rest of the step."""

    def __init__(self, cfg: KubetuneConfig, step: str, *, run_id: str, kfp_run_id: str | None = None):
        self.cfg, self.step, self.run_id, self.kfp_run_id = cfg, step, run_id, kfp_run_id
        self.uri = tracking_uri(cfg)
        self.experiment = experiment_name(cfg)
        self.client = None
        self.experiment_id: str | None = None
        self.pipeline_run: str | None = None  # the MLflow run id of the pipeline run
        self.step_run: str | None = None
        self.problem: str | None = None if self.uri else "tracking is off (no tracking.mlflow_uri or " \
                                                         f"{URI_ENV})"

    @property
    def active(self) -> bool:
        return self.problem is None and self.pipeline_run is not None

    # ---- start and end of a step ----------------------------------------------------------------
    def start(self) -> Tracker:
        """Connect, and find or create the pipeline's run and this step's nested run."""
        if self.uri is None:
            return self
        for name, value in CLIENT_ENV_DEFAULTS.items():
            os.environ.setdefault(name, value)
        try:
            from mlflow import MlflowClient

            self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            self.experiment_id = self._experiment_id()
            self.pipeline_run = self._pipeline_run()
            self.step_run = self._step_run()
            self.client.update_run(self.pipeline_run, status="RUNNING")
        except Exception as e:  # any failure of the server or the client: see _failed
            self.pipeline_run = None
            if self.cfg.tracking.required:
                raise TrackingError(f"tracking.required is true and the MLflow server {self.uri} cannot be "
                                    f"used ({type(e).__name__}: {_first_line(e)}); nothing was run. Start "
                                    f"the server, or set tracking.required: false to run untracked") from None
            self._failed("start", e)
        else:
            log.info("%s: tracking in MLflow %s, experiment %r, run %s", self.step, self.uri, self.experiment,
                     self.pipeline_run)
        return self

    def finish(self, status: str = "FINISHED") -> None:
        """End this step's nested run; the pipeline's run ends with it too (the next step sets it
        RUNNING again), so a run whose last step was eval (a failed gate) does not stay RUNNING."""
        self._call("finish", lambda: [self.client.set_terminated(r, status) for r in
                                      (self.step_run, self.pipeline_run) if r])

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(self.experiment)
        except MlflowException as e:  # created meanwhile by another step or run
            experiment = self.client.get_experiment_by_name(self.experiment)
            if experiment is None:
                raise e from None
            return experiment.experiment_id

    def _find(self, **tags: str) -> str | None:
        # The run id's own quotes are not escaped: kubetune run ids are KFP ids or [a-z0-9-] names.
        where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=where, max_results=2,
                                       order_by=["attributes.start_time ASC"])
        return runs[0].info.run_id if runs else None

    def _pipeline_run(self) -> str:
        found = self._find(**{RUN_TAG: self.run_id, KIND_TAG: "pipeline"})
        if found:
            return found
        tags = {RUN_TAG: self.run_id, KIND_TAG: "pipeline", "kubetune.model": self.cfg.model.name}
        if self.kfp_run_id:
            tags["kubetune.kfp_run_id"] = self.kfp_run_id
            if self.cfg.tracking.kfp_ui_url:
                tags["kubetune.kfp_run_url"] = f"{self.cfg.tracking.kfp_ui_url}/#/runs/details/{self.kfp_run_id}"
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=self.run_id).info.run_id
        self._log_params(run, config_params(self.cfg))  # once: MLflow params cannot change afterwards
        return run

    def _step_run(self) -> str:
        found = self._find(**{RUN_TAG: self.run_id, KIND_TAG: "step", STEP_TAG: self.step})
        if found:
            self.client.update_run(found, status="RUNNING")
            return found
        tags = {RUN_TAG: self.run_id, KIND_TAG: "step", STEP_TAG: self.step, "mlflow.parentRunId": self.pipeline_run}
        return self.client.create_run(self.experiment_id, tags=tags, run_name=self.step).info.run_id

    def _log_params(self, run: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(run, params=items[i:i + BATCH])

    # ---- what a step logs --------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Metrics of the pipeline's run (names as given), at `step` (the training step) when given."""
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if isinstance(v, int | float)]
        if items:
            self._call("log metrics", lambda: self.client.log_batch(self.pipeline_run, metrics=items))

    def set_tags(self, tags: dict[str, object]) -> None:
        if not self.active:
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        if items:
            self._call("set tags", lambda: self.client.log_batch(self.pipeline_run, tags=items))

    def log_outcome(self, outcome, local_dir: Path, lineage: dict) -> None:
        """A finished step: its metrics (`<step>.<name>`), lineage and flags as tags, its reports and
        plots as artifacts under `<step>/`, and its wall time and reuse on the step's nested run."""
        if not self.active:
            return
        self.log_metrics({f"{self.step}.{k}": v for k, v in outcome.metrics.items()})
        self.set_tags({**{f"kubetune.{k}": lineage[k] for k in LINEAGE_TAGS if k in lineage},
                       **{f"kubetune.{self.step}.{k}": v for k, v in outcome.flags.items()}})
        if "gate_passed" in outcome.flags:
            self.set_tags({"kubetune.gate": "passed" if outcome.flags["gate_passed"] else "failed"})
        files = report_files(local_dir)

        def upload():
            for path in files:
                self.client.log_artifact(self.pipeline_run, str(path), artifact_path=self.step)

        self._call("log artifacts", upload)
        self._call("log step", lambda: self._log_step(outcome))

    def _log_step(self, outcome) -> None:
        from mlflow.entities import Metric, RunTag

        tags = [RunTag("kubetune.cached_from", outcome.cached_from)] if outcome.cached_from else []
        self.client.log_batch(self.step_run, metrics=[Metric("seconds", outcome.seconds, int(time.time() * 1000), 0)],
                              tags=tags)

    def record(self) -> dict:
        """What this step's manifest records about its tracking (lineage `tracking.<step>`)."""
        return {"tracked": self.problem is None, "mlflow_uri": self.uri, "experiment": self.experiment,
                "mlflow_run_id": self.pipeline_run, "problem": self.problem}

    # ---- the registry (publish, promote) ------------------------------------------------------
    def register_release(self, release: dict, release_json_sha256: str) -> str | None:
        """Register the release as a version of the registered model `model.name`; returns the version
        (None when untracked or tracking.registry is off). A retried publish finds its version again."""
        if not self.active or not self.cfg.tracking.registry:
            return None
        return self._call("register the release", lambda: self._register(release, release_json_sha256))

    def _register(self, release: dict, release_json_sha256: str) -> str:
        from mlflow.exceptions import MlflowException

        name, uri = release["model"], release["uri"]
        try:
            self.client.create_registered_model(name, description=f"kubetune releases of {name}")
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        found = find_version(self.client, name, uri)
        if found is not None:
            return found
        passed = (release.get("gate") or {}).get("passed") is True
        tags = {"kubetune.release_uri": uri, "kubetune.release_version": release["version"],
                "kubetune.release_json_sha256": release_json_sha256, "kubetune.gate": "passed" if passed else "failed",
                RUN_TAG: self.run_id}
        for metric, m in ((release.get("eval") or {}).get("metrics") or {}).items():
            for side in ("base", "tuned", "delta"):
                if isinstance(m, dict) and m.get(side) is not None:
                    tags[f"eval.{side}_{metric}"] = str(m[side])
        version = self.client.create_model_version(name, source=uri, run_id=self.pipeline_run, tags=tags,
                                                   description=f"release {release['version']}").version
        self.set_tags({"kubetune.release_uri": uri, "kubetune.registered_version": f"{name}/{version}"})
        log.info("registered %s as version %s of %r in MLflow %s", uri, version, name, self.uri)
        return str(version)

    # ---- failures -------------------------------------------------------------------------------
    def _call(self, what: str, fn):
        if not self.active:
            return None
        try:
            return fn()
        except Exception as e:  # tracking is best effort unless required: see the module docstring
            self._failed(what, e)
            return None

    def _failed(self, what: str, error: Exception) -> None:
        self.problem = f"{what}: {type(error).__name__}: {_first_line(error)}"
        log.warning("MLflow %s: %s; the %s step goes on untracked, and the release records it", self.uri,
                    self.problem, self.step)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0][:300]


def summary(ctx_lineage: dict, tracker: Tracker) -> dict:
    """What release.json records (lineage.tracking): whether every step of the run was tracked, and
    where. `ctx_lineage` is the upstream lineage publish received, with each step's `tracking.<step>`."""
    steps = {k.removeprefix("tracking."): v for k, v in ctx_lineage.items()
             if k.startswith("tracking.") and isinstance(v, dict)}
    steps[tracker.step] = tracker.record()
    untracked = sorted(s for s, r in steps.items() if not r.get("tracked"))
    return {"tracked": not untracked, "untracked_steps": untracked, "mlflow_uri": tracker.uri,
            "experiment": tracker.experiment, "mlflow_run_id": tracker.pipeline_run,
            "problems": {s: steps[s].get("problem") for s in untracked}}


# ---- used by the local runner, `kubetune promote` and the tests ---------------------------------
def run_url(cfg: KubetuneConfig, run_id: str) -> str | None:
    """The MLflow UI page of the kubetune run `run_id` (None: untracked, or the server cannot say)."""
    uri = tracking_uri(cfg)
    if uri is None:
        return None
    try:
        c = client(uri)
        experiment = c.get_experiment_by_name(experiment_name(cfg))
        runs = c.search_runs([experiment.experiment_id], max_results=1,
                             filter_string=f"tags.`{RUN_TAG}` = '{run_id}' and tags.`{KIND_TAG}` = 'pipeline'")
    except Exception as e:  # only a link for people: never fail a finished run over it
        log.warning("MLflow %s: cannot look up the run of %s (%s)", uri, run_id, _first_line(e))
        return None
    return f"{uri}/#/experiments/{experiment.experiment_id}/runs/{runs[0].info.run_id}" if runs else None


# ---- used by `kubetune promote` and the tests ---------------------------------------------------
def client(uri: str):
    from mlflow import MlflowClient

    for name, value in CLIENT_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def find_version(mlflow_client, name: str, release_uri: str) -> str | None:
    """The registered version of `name` whose tag kubetune.release_uri is the release (trailing "/" or not)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = mlflow_client.search_model_versions(f"name = '{name}'")
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    for v in versions:
        if (v.tags or {}).get("kubetune.release_uri", "").rstrip("/") == release_uri.rstrip("/"):
            return str(v.version)
    return None


def set_alias(uri: str, model: str, release_uri: str, alias: str) -> str:
    """Point the registry alias (e.g. staging, production) of `model` at the release's version; returns
    the version. Raises TrackingError when the release is not registered there."""
    c = client(uri)
    try:
        version = find_version(c, model, release_uri)
        if version is None:
            raise TrackingError(f"{release_uri}: no version of the registered model {model!r} in MLflow {uri} "
                                "has this release URI (was it published with tracking on?)")
        c.set_registered_model_alias(model, alias, version)
    except TrackingError:
        raise
    except Exception as e:
        raise TrackingError(f"MLflow {uri}: cannot set the alias {alias!r} of {model!r} "
                            f"({type(e).__name__}: {_first_line(e)})") from None
    return version
