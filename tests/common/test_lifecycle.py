"""The step lifecycle (components/common/lifecycle.py) and its KFP door (kfp_step.py): input manifests
in, outputs published with the manifest last, the explicit cache keyed by the input manifests' content
hashes, retries after a publish, and no staging left behind (real SeaweedFS)."""

import json
import tempfile
from types import SimpleNamespace

import pytest

from components.common import storage
from components.common.config import config_from_dict
from components.common.kfp_step import kfp_main
from components.common.lifecycle import StepOutcome, resolve_inputs, run_and_publish
from components.common.steps import StepSpec

TRAIN = StepSpec(name="train", image="train", cache_sections=("model", "train"), uses_gpu=True, title="t")


def run_step(spec, cfg, run_id, artifacts, execute, **kw):
    """The KFP door's two calls, with the run's output where the pipeline puts it."""
    inputs = resolve_inputs(artifacts, artifact_files=True)
    return run_and_publish(spec, cfg, inputs, execute, run_id=run_id,
                           output_uri=storage.join_uri(cfg.storage.root, "runs", run_id, spec.name), **kw)


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
    seen = {}
    first = run_step(TRAIN, cfg, "run-1", {"dataset": str(dataset_artifact)}, execute).manifest
    assert first.uri == s3_env.uri("kt", "runs", "run-1", "train") and calls == ["run-1"]
    assert first.lineage["data_sha256"] == "abc"  # upstream lineage carried forward
    assert {f.path for f in first.files} == {"model.txt", "report.md", "step_outcome.json"}

    def keep(published, local):
        seen["model"] = (local / "model.txt").read_text()

    again = run_step(TRAIN, cfg, "run-2", {"dataset": str(dataset_artifact)}, execute, on_output=keep)
    assert calls == ["run-1"] and again.manifest.uri == first.uri and again.outcome.cached_from == first.uri
    assert again.reused == "cache" and seen["model"] == '{"A": 1}\n'
    # the second run's own folder records the reuse
    assert storage.read_manifest(s3_env.uri("kt", "runs", "run-2", "train")).lineage["cached_from"] == first.uri
    # a retry of run-2 (KFP retries keep the run id) reuses the same cached output again
    retry = run_step(TRAIN, cfg, "run-2", {"dataset": str(dataset_artifact)}, execute)
    assert calls == ["run-1"] and retry.manifest.uri == first.uri
    # a config change in the step's sections is a new key
    changed = make_cfg(s3_env.uri("kt")).model_copy(update={"train": cfg.train.model_copy(update={"lr": 0.1})})
    run_step(TRAIN, changed, "run-3", {"dataset": str(dataset_artifact)}, execute)
    assert calls == ["run-1", "run-3"]


def test_a_retry_after_publishing_reuses_the_output_and_other_inputs_are_refused(s3_env, dataset_artifact):
    calls = []

    def execute(cfg, inputs, output_dir, ctx):
        calls.append(ctx.run_id)
        (output_dir / "w.txt").write_text(cfg.train.method)
        return StepOutcome()

    cfg = make_cfg(s3_env.uri("kt"), train={"caching": False})
    first = run_step(TRAIN, cfg, "r", {"dataset": str(dataset_artifact)}, execute)
    retry = run_step(TRAIN, cfg, "r", {"dataset": str(dataset_artifact)}, execute)
    assert calls == ["r"] and retry.reused == "published" and retry.manifest.uri == first.manifest.uri
    other = cfg.model_copy(update={"train": cfg.train.model_copy(update={"method": "full"})})
    with pytest.raises(storage.StorageError, match=r"already holds a published output \(train\) for other inputs"):
        run_step(TRAIN, other, "r", {"dataset": str(dataset_artifact)}, execute)
    assert calls == ["r"]
    run_step(TRAIN, other, "r", {"dataset": str(dataset_artifact)}, execute, overwrite=True)
    assert calls == ["r", "r"]
    assert (storage.fetch_dir(first.manifest.uri) / "w.txt").read_text() == "full"


def test_plain_local_inputs_are_hashed_by_content(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "train.jsonl").write_text("{}\n")
    one = resolve_inputs({"dataset": str(d), "absent": None})
    assert set(one) == {"dataset"} and one["dataset"].local == d and one["dataset"].lineage == {}
    (d / "train.jsonl").write_text("{} \n")
    assert resolve_inputs({"dataset": str(d)})["dataset"].content_hash != one["dataset"].content_hash
    with pytest.raises(storage.NotFound, match="the model input is neither a published directory"):
        resolve_inputs({"model": str(tmp_path / "missing")})


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
        outcome = kfp_main(TRAIN, execute, config=cfg.model_dump_json(), run_id=run_id, job_id="job",
                           inputs={"dataset": SimpleNamespace(path=str(dataset_artifact))}, output=outputs[0],
                           metrics=outputs[1], html=outputs[2])
    assert calls == ["a", "b"] and outcome.flags == {"gate_passed": True}
    artifact = json.loads((tmp_path / "model.out").read_text())
    assert artifact["uri"] == s3_env.uri("kt", "runs", "b", "train") == outputs[0].metadata["uri"]
    assert outputs[1].metrics == {"loss": 0.25}
    html = (tmp_path / "html.out").read_text()
    assert "<h1>report</h1>" in html and "data:image/png;base64," in html  # the plot is inlined for the KFP UI
    kfp_main(TRAIN, execute, config=cfg.model_dump_json(), run_id="", job_id="job-42",
             inputs={"dataset": SimpleNamespace(path=str(dataset_artifact))}, output=outputs[0])
    assert storage.read_manifest(s3_env.uri("kt", "runs", "job-42", "train")) is not None  # KFP's run id


def test_a_failed_step_publishes_nothing_and_no_staging_is_left(s3_env, dataset_artifact, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where mkdtemp puts the staging directory
    staged = []

    def execute(cfg, inputs, output_dir, ctx):
        staged.append(output_dir)
        (output_dir / "half.txt").write_text("partial")
        raise RuntimeError("boom")

    cfg = make_cfg(s3_env.uri("kt"))
    with pytest.raises(RuntimeError, match="boom"):
        run_step(TRAIN, cfg, "r", {"dataset": str(dataset_artifact)}, execute)
    assert staged and staged[0].parent == scratch and not staged[0].exists()
    assert storage.read_manifest(s3_env.uri("kt", "runs", "r", "train")) is None
    assert storage.list_objects(s3_env.uri("kt", "runs", "r")) == []

    def succeed(cfg, inputs, output_dir, ctx):
        staged.append(output_dir)
        (output_dir / "ok.txt").write_text("ok")
        return StepOutcome()

    run_step(TRAIN, cfg, "r2", {"dataset": str(dataset_artifact)}, succeed)
    assert len(staged) == 2 and not staged[1].exists()
    assert list(scratch.iterdir()) == []  # nothing left behind: not the staging, nor the cache note
