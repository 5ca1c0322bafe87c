"""The session's demo pipeline run (`demo_run`, tracked in the session's real MLflow server), read back
through the MLflow API: params, lineage tags, the training curve, eval and quantize metrics, the
steps' nested runs, the artifacts, the registered model version, and the alias after `promote`.
Nothing here runs a pipeline of its own: the cost is the reads (a few seconds)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from demo_run import DEMO_RUN_MLFLOW_CREDENTIALS, environ
from tracking_helpers import all_artifacts, pipeline_run, step_runs

from components.common import storage, tracking
from components.common.steps import STEP_NAMES

REPO = Path(__file__).resolve().parents[2]


def demo_mlflow_run(demo_run):
    return pipeline_run(demo_run.mlflow_url, demo_run.cfg.tracking.experiment, demo_run.result.run_id)


def trainer_log(demo_run) -> list[dict]:
    path = demo_run.step_dir("train") / "trainer_log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_the_config_is_logged_as_params(demo_run):
    _, run = demo_mlflow_run(demo_run)
    expected = tracking.config_params(demo_run.cfg)
    assert run.data.params == expected
    print(f"\nMLflow run {run.info.run_id}: {len(run.data.params)} params")


def test_lineage_tags_name_the_data_base_model_and_config(demo_run):
    _, run = demo_mlflow_run(demo_run)
    tags, lineage = run.data.tags, demo_run.result.release["lineage"]
    assert tags["kubetune.run_id"] == demo_run.result.run_id
    assert tags["kubetune.data_sha256"] == lineage["data_sha256"]
    assert tags["kubetune.config_hash"] == lineage["config_hash"] == demo_run.cfg.content_hash()
    assert tags["kubetune.base_model"] == demo_run.cfg.model.base
    assert tags["kubetune.kfp_run_id"]  # the KFP local runner's job id
    assert tags["kubetune.gate"] == "passed"
    assert tags["kubetune.release_uri"] == demo_run.result.release["uri"]


def test_the_training_curve_has_a_point_per_logging_step(demo_run):
    client, run = demo_mlflow_run(demo_run)
    logged = trainer_log(demo_run)
    loss_steps = [e["step"] for e in logged if "loss" in e]
    eval_steps = [e["step"] for e in logged if "eval_loss" in e]
    loss = client.get_metric_history(run.info.run_id, "train.loss")
    assert [m.step for m in loss] == loss_steps and len(loss_steps) > 10
    assert [m.value for m in loss] == [e["loss"] for e in logged if "loss" in e]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train.eval_loss")] == eval_steps
    assert len(client.get_metric_history(run.info.run_id, "train.learning_rate")) == len(loss_steps)
    tokens = client.get_metric_history(run.info.run_id, "train.tokens_per_second")
    assert tokens and all(m.value > 0 for m in tokens)
    points = sum(len(client.get_metric_history(run.info.run_id, k)) for k in run.data.metrics)
    print(f"\nMLflow run {run.info.run_id}: {len(run.data.metrics)} metrics, {points} metric points, "
          f"{len(loss)} train.loss points (steps {loss_steps[0]}..{loss_steps[-1]})")


def test_eval_base_vs_tuned_and_quantize_figures_are_metrics(demo_run):
    _, run = demo_mlflow_run(demo_run)
    metrics = run.data.metrics
    results = json.loads((demo_run.step_dir("eval") / "eval_results.json").read_text())
    for name, entry in results["metrics"].items():
        for side in ("base", "tuned", "delta"):
            if entry.get(side) is not None:
                assert metrics[f"eval.{side}_{name}"] == float(entry[side]), (name, side)
    assert metrics["eval.gate_passed"] == 1.0
    quantize = demo_run.result.outcomes["quantize"]["metrics"]
    assert quantize and {f"quantize.{k}": float(v) for k, v in quantize.items()} == {
        k: v for k, v in metrics.items() if k.startswith("quantize.")}


def test_each_step_has_a_finished_nested_run(demo_run):
    client, run = demo_mlflow_run(demo_run)
    children = step_runs(client, run)
    assert sorted(children) == sorted(STEP_NAMES)
    assert {s: r.info.status for s, r in children.items()} == {s: "FINISHED" for s in STEP_NAMES}
    assert run.info.status == "FINISHED"
    assert children["train"].data.metrics["seconds"] == demo_run.result.outcomes["train"]["seconds"]


def test_reports_and_plots_are_artifacts_and_model_files_are_not(demo_run):
    client, run = demo_mlflow_run(demo_run)
    paths = all_artifacts(client, run.info.run_id)
    for step in STEP_NAMES:
        assert f"{step}/report.md" in paths, step
    for plot in ("prepare/token_lengths.png", "train/loss_curve.png", "eval/eval_chart.png"):
        assert plot in paths
    assert {"eval/eval_results.json", "eval/gate.json", "quantize/quantize_report.json",
            "publish/release.json"} <= set(paths)
    assert not [p for p in paths if p.endswith((".safetensors", ".gguf", ".bin"))]
    print(f"\nMLflow run {run.info.run_id}: {len(paths)} artifacts")


def test_the_release_is_a_registered_model_version_with_its_hashes(demo_run):
    client = tracking.client(demo_run.mlflow_url)
    release = demo_run.result.release
    version = tracking.find_version(client, demo_run.cfg.model.name, release["uri"])
    assert version is not None
    mv = client.get_model_version(demo_run.cfg.model.name, version)
    with environ(demo_run.env):
        release_json = Path(storage.fetch_file(storage.join_uri(release["uri"], "release.json"))).read_bytes()
    assert mv.tags["kubetune.release_json_sha256"] == hashlib.sha256(release_json).hexdigest()
    assert mv.tags["kubetune.gate"] == "passed"
    assert mv.tags["kubetune.release_version"] == release["version"]
    tuned_f1 = release["eval"]["metrics"]["json_field_f1"]["tuned"]
    assert float(mv.tags["eval.tuned_json_field_f1"]) == tuned_f1
    _, run = demo_mlflow_run(demo_run)
    assert mv.run_id == run.info.run_id and mv.source == release["uri"]
    assert demo_run.result.outcomes["publish"]["flags"]["registered_version"] == version
    assert release["lineage"]["tracking"]["tracked"] is True
    assert release["lineage"]["tracking"]["untracked_steps"] == []
    print(f"\nregistered model {demo_run.cfg.model.name!r} version {version} <- {release['uri']}")


def test_promote_moves_the_environment_alias(demo_run, tmp_path):
    from pipelines.promote import promote

    values = tmp_path / "staging" / "values.yaml"
    values.parent.mkdir()
    shutil.copyfile(REPO / "k8s" / "gitops" / "staging" / "values.yaml", values)
    client = tracking.client(demo_run.mlflow_url)
    name, uri = demo_run.cfg.model.name, demo_run.result.release["uri"]
    with environ(demo_run.env):
        dry = promote(uri, values, dry_run=True, mlflow_uri=demo_run.mlflow_url)
        assert dry.alias is None
        p = promote(uri, values, mlflow_uri=demo_run.mlflow_url)
    assert p.written and p.alias == ("staging", tracking.find_version(client, name, uri))
    assert client.get_model_version_by_alias(name, "staging").version == p.alias[1]


def test_no_secret_is_logged_in_params_tags_or_artifacts(demo_run, tmp_path):
    client, run = demo_mlflow_run(demo_run)
    secrets = {k: v for k, v in demo_run.env.items()
               if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", *DEMO_RUN_MLFLOW_CREDENTIALS)}
    assert len(secrets) == 4 and all(len(v) >= 8 for v in secrets.values())
    texts = {f"param {k}": v for k, v in run.data.params.items()}
    for r in [run, *step_runs(client, run).values()]:
        texts.update({f"tag {k} ({r.info.run_name})": v for k, v in r.data.tags.items()})
    version = client.get_model_version(demo_run.cfg.model.name, run.data.tags["kubetune.registered_version"]
                                       .split("/")[-1])
    texts.update({f"model version tag {k}": v for k, v in version.tags.items()})
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path)))
    files = [p for p in local.rglob("*") if p.is_file()]
    assert len(files) >= 6 * 2
    texts.update({f"artifact {p.relative_to(local)}": p.read_bytes().decode("utf-8", "replace") for p in files})
    leaks = [(where, name) for where, text in texts.items() for name, value in secrets.items() if value in text]
    assert leaks == []
