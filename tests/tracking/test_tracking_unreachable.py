"""An MLflow server that dies or was never there (real servers, really killed): a run is never lost.

- the server is SIGKILLed after the first step of a run: the later steps each warn once and run
  untracked, training finishes, the release is published, and release.json records which steps were
  not tracked (the cheapest real chain: the demo's random base, 4 training steps, 2 eval examples,
  one GGUF type, all through the lifecycle in this process, on local storage);
- the server dies while a step logs (the training curve's case): one warning, no exception;
- `tracking.required: true` and nothing listening: the first step fails with a clear error, before it
  ran anything or published anything.
"""

from __future__ import annotations

import logging

import pytest
from tracking_helpers import run_step, tiny_config

from components.common import storage, tracking
from pipelines.local_s3 import free_ports


@pytest.fixture
def doomed_mlflow(s3_server, tmp_path):
    """A real MLflow server of this test's own, for the test to kill."""
    from pipelines.local_mlflow import LocalMlflow

    bucket = s3_server.ensure_bucket("kt-mlflow-doomed")
    server = LocalMlflow(tmp_path / "mlflow", artifacts_uri=f"s3://{bucket}/artifacts", s3_env=s3_server.env())
    server.start()
    yield server
    server.stop()


def test_a_server_killed_mid_run_loses_no_run_and_the_release_says_untracked(demo, doomed_mlflow, tmp_path,
                                                                              torch_threads, caplog):
    cfg = tiny_config(tmp_path / "cfg.yaml", demo, str(tmp_path / "root"), doomed_mlflow.url)
    prepared = run_step(cfg, "prepare", "killed-1")
    assert prepared.manifest.lineage["tracking.prepare"]["tracked"] is True
    client = tracking.client(doomed_mlflow.url)
    runs = client.search_runs([client.get_experiment_by_name("kubetune-unreachable").experiment_id],
                              filter_string="tags.`kubetune.kind` = 'pipeline'")
    assert [r.data.tags["kubetune.run_id"] for r in runs] == ["killed-1"]

    doomed_mlflow.kill()
    with torch_threads(1), caplog.at_level(logging.WARNING, logger="kubetune.tracking"):
        for step in ("train", "eval", "merge", "quantize", "publish"):
            published = run_step(cfg, step, "killed-1")
            assert published.manifest.lineage[f"tracking.{step}"]["tracked"] is False, step
    warnings = [r for r in caplog.records if r.name == "kubetune.tracking" and r.levelno == logging.WARNING]
    assert len(warnings) == 5  # one per step that could not reach the server

    release = published.outcome.flags
    from components.common.release import read_release

    record = read_release(str(release["release_uri"]))["lineage"]["tracking"]
    assert record["tracked"] is False
    assert record["untracked_steps"] == sorted(["train", "eval", "merge", "quantize", "publish"])
    assert record["mlflow_uri"] == doomed_mlflow.url
    assert "train" in record["problems"] and record["problems"]["train"].startswith("start:")
    assert release["registered_version"] == ""
    train_metrics = storage.read_manifest(storage.join_uri(cfg.storage.root, "runs", "killed-1", "train"))
    assert train_metrics.lineage["train_steps"] == 4  # training finished


def test_a_server_that_dies_while_a_step_logs_costs_one_warning(doomed_mlflow, demo, tmp_path, caplog):
    cfg = tiny_config(tmp_path / "cfg.yaml", demo, str(tmp_path / "root"), doomed_mlflow.url)
    tracker = tracking.Tracker(cfg, "train", run_id="dies-1").start()
    tracker.log_metrics({"train.loss": 2.0}, step=1)
    assert tracker.active
    doomed_mlflow.kill()
    with caplog.at_level(logging.WARNING, logger="kubetune.tracking"):
        for step in range(2, 6):  # the next logging steps of a training run
            tracker.log_metrics({"train.loss": 2.0 / step}, step=step)
        tracker.finish()
    warnings = [r for r in caplog.records if r.name == "kubetune.tracking"]
    assert len(warnings) == 1 and "untracked" in warnings[0].getMessage()
    assert tracker.record()["tracked"] is False and tracker.record()["mlflow_run_id"]


def test_required_tracking_fails_the_first_step_before_any_work(demo, tmp_path):
    nothing_there = f"http://127.0.0.1:{free_ports(1)[0]}"
    cfg = tiny_config(tmp_path / "cfg.yaml", demo, str(tmp_path / "root"), nothing_there, required=True)
    with pytest.raises(tracking.TrackingError, match=r"tracking\.required is true .* cannot be used"):
        run_step(cfg, "prepare", "required-1")
    assert storage.read_manifest(storage.join_uri(cfg.storage.root, "runs", "required-1", "prepare")) is None
    assert not (tmp_path / "root").exists()  # nothing was written at all
