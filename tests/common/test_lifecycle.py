"""The shared step wrapper: input manifests in, outputs published with the manifest last, and the
explicit cache keyed by the input manifests' content hashes (real SeaweedFS)."""

import json
from types import SimpleNamespace

import pytest

from components.common import storage
from components.common.config import config_from_dict
from components.common.kfp_step import StepOutcome, kfp_main, run_step


def make_cfg(root, **steps):
    return config_from_dict({"model": {"name": "m", "base": "/b"}, "data": {"sources": [{"uri": "d"}]},
                             "storage": {"root": root}, "cluster": {"steps": steps}})


class Artifact(SimpleNamespace):
    """What KFP hands a component: .path, .metadata (and .log_metric for Metrics)."""

    def log_metric(self, name, value):
        self.metrics[name] = value


@pytest.fixture
def dataset_artifact(s3_env, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    (src / "train.jsonl").write_text('{"a": 1}\n')
    manifest = storage.publish_dir(src, s3_env.uri("runs", "r0", "prepare"), producer="prepare",
                                   lineage={"data_sha256": "abc"})
    path = tmp_path / "dataset.json"
    path.write_text(manifest.to_json())
    return path


def test_run_step_publishes_and_caches_by_input_content(s3_env, dataset_artifact):
    calls = []

    def execute(cfg, inputs, output_dir, ctx):
        calls.append(ctx.run_id)
        (output_dir / "model.txt").write_text((inputs["dataset"] / "train.jsonl").read_text().upper())
        (output_dir / "report.md").write_text("# done\n")
        return StepOutcome(metrics={"loss": 0.5}, report="report.md")

    cfg = make_cfg(s3_env.uri("kt"))
    first, outcome, _ = run_step("train", cfg.model_dump_json(), "run-1", {"dataset": str(dataset_artifact)},
                                 execute)
    assert first.uri == s3_env.uri("kt", "runs", "run-1", "train") and calls == ["run-1"]
    assert first.lineage["data_sha256"] == "abc"  # upstream lineage carried forward
    assert {f.path for f in first.files} == {"model.txt", "report.md", "step_outcome.json"}
    again, cached, local = run_step("train", cfg.model_dump_json(), "run-2", {"dataset": str(dataset_artifact)},
                                    execute)
    assert calls == ["run-1"] and again.uri == first.uri and cached.cached_from == first.uri
    assert (local / "model.txt").read_text() == '{"A": 1}\n'
    # the second run's own folder records the reuse
    assert storage.read_manifest(s3_env.uri("kt", "runs", "run-2", "train")).lineage["cached_from"] == first.uri
    # a config change in the step's sections is a new key
    changed = make_cfg(s3_env.uri("kt")).model_copy(update={"train": cfg.train.model_copy(update={"lr": 0.1})})
    run_step("train", changed.model_dump_json(), "run-3", {"dataset": str(dataset_artifact)}, execute)
    assert calls == ["run-1", "run-3"]


def test_caching_can_be_turned_off_per_step_and_kfp_outputs(s3_env, dataset_artifact, tmp_path):
    calls = []

    def execute(cfg, inputs, output_dir, ctx):
        calls.append(ctx.run_id)
        (output_dir / "report.md").write_text("# report\n\n![plot](plot.png)\n")
        (output_dir / "plot.png").write_bytes(b"\x89PNG fake")
        return StepOutcome(metrics={"loss": 0.25}, report="report.md", flags={"gate_passed": True})

    cfg = make_cfg(s3_env.uri("kt"), train={"caching": False})
    outputs = [Artifact(path=str(tmp_path / f"{n}.out"), metadata={}, metrics={}) for n in ("model", "m", "html")]
    for run_id in ("a", "b"):
        outcome = kfp_main("train", execute, config=cfg.model_dump_json(), run_id=run_id, job_id="job",
                           inputs={"dataset": SimpleNamespace(path=str(dataset_artifact))}, output=outputs[0],
                           metrics=outputs[1], html=outputs[2])
    assert calls == ["a", "b"] and outcome.flags == {"gate_passed": True}
    artifact = json.loads((tmp_path / "model.out").read_text())
    assert artifact["uri"] == s3_env.uri("kt", "runs", "b", "train") == outputs[0].metadata["uri"]
    assert outputs[1].metrics == {"loss": 0.25}
    html = (tmp_path / "html.out").read_text()
    assert "<h1>report</h1>" in html and "data:image/png;base64," in html  # the plot is inlined for the KFP UI
    kfp_main("train", execute, config=cfg.model_dump_json(), run_id="", job_id="job-42",
             inputs={"dataset": SimpleNamespace(path=str(dataset_artifact))}, output=outputs[0])
    assert storage.read_manifest(s3_env.uri("kt", "runs", "job-42", "train")) is not None  # KFP's run id


def test_a_failed_step_publishes_nothing(s3_env, dataset_artifact):
    def execute(cfg, inputs, output_dir, ctx):
        (output_dir / "half.txt").write_text("partial")
        raise RuntimeError("boom")

    cfg = make_cfg(s3_env.uri("kt"))
    with pytest.raises(RuntimeError, match="boom"):
        run_step("train", cfg.model_dump_json(), "r", {"dataset": str(dataset_artifact)}, execute)
    assert storage.read_manifest(s3_env.uri("kt", "runs", "r", "train")) is None
    assert storage.list_objects(s3_env.uri("kt", "runs", "r")) == []
