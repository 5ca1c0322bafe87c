"""Publishing a release and fetching it back, against the real SeaweedFS S3 server."""

import json
from pathlib import Path

import pytest
import yaml

from components.common import storage
from components.common.config import config_from_dict
from components.common.release import FETCH_MARKER, ReleaseError, fetch_release, latest_release, read_release
from components.publish import step as publish
from pipelines.cli import main


def make_cfg(root: str):
    return config_from_dict({"model": {"name": "contracts-tiny", "base": "/models/base"},
                             "data": {"sources": [{"uri": "d.jsonl"}]}, "storage": {"root": root},
                             "serve": {"max_model_len": 1024}})


@pytest.fixture
def run_outputs(tmp_path):
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "model.safetensors").write_bytes(b"weights" * 1000)
    (merged / "chat_template.jinja").write_text("{{ messages }}")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"lora" * 100)
    (adapter / storage.MANIFEST_NAME).write_text("{}")  # a fetched step output carries its manifest
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    (eval_dir / "gate.json").write_text(json.dumps({"passed": True, "checks": []}))
    (eval_dir / "eval_results.json").write_text(json.dumps({"json_valid": {"base": 0.1, "tuned": 0.9}}))
    return {"merged": merged, "adapter": adapter, "eval_dir": eval_dir}


def test_publish_then_fetch(s3_env, run_outputs, tmp_path):
    cfg = make_cfg(s3_env.uri("kt"))
    rel = publish.run(cfg, **run_outputs, lineage={"data_hash": "abc"}, run_id="run-1")
    assert rel.uri == s3_env.uri("kt", "releases", "contracts-tiny", rel.version)
    release = read_release(rel.uri)
    assert release["gate"]["passed"] and release["chat_template"] == "{{ messages }}"
    assert release["serving"]["served_model_name"] == "contracts-tiny"
    assert [f["path"] for f in release["artifacts"]["adapter"]["files"]] == ["adapter_model.safetensors"]
    # every hash in release.json matches the stored object
    for part, info in release["artifacts"].items():
        for entry in info["files"]:
            local = storage.fetch_file(storage.join_uri(rel.uri, part, entry["path"]))
            assert storage.sha256_file(local) == entry["sha256"]
    values = yaml.safe_load(storage.fetch_file(storage.join_uri(rel.uri, "values.yaml")).read_text())
    assert values["release"]["uri"] == rel.uri and "latest" not in rel.uri

    dest = tmp_path / "serve"
    first = fetch_release(rel.uri, dest, ("merged", "adapter"))
    assert first["downloaded"] == 3 and first["reused"] == 0
    assert (dest / "merged" / "model.safetensors").read_bytes() == b"weights" * 1000
    assert json.loads((dest / FETCH_MARKER).read_text())["version"] == rel.version
    again = fetch_release(rel.uri, dest, ("merged", "adapter"))  # warm volume: nothing downloaded
    assert again == {"downloaded": 0, "reused": 3, "bytes": 0}


def test_publishing_twice_is_refused(s3_env, run_outputs):
    cfg = make_cfg(s3_env.uri("kt"))
    publish.run(cfg, **run_outputs, run_id="r", version="v1")
    with pytest.raises(ReleaseError, match="already published; releases are immutable"):
        publish.run(cfg, **run_outputs, run_id="r", version="v1")


def test_failed_gate_publishes_nothing(s3_env, run_outputs):
    (run_outputs["eval_dir"] / "gate.json").write_text(json.dumps({"passed": False}))
    cfg = make_cfg(s3_env.uri("kt"))
    with pytest.raises(ReleaseError, match="gate failed"):
        publish.run(cfg, **run_outputs, run_id="r", version="v1")
    assert storage.list_objects(s3_env.uri("kt")) == []


def test_latest_release_ignores_incomplete(s3_env, run_outputs):
    cfg = make_cfg(s3_env.uri("kt"))
    assert latest_release(cfg.storage.root, "contracts-tiny") is None
    first = publish.run(cfg, **run_outputs, run_id="a", version="v1")
    # an incomplete release (release.json but no manifest) must never count
    s3_env.client().put_object(Bucket=s3_env.bucket, Key="kt/releases/contracts-tiny/v2/release.json",
                               Body=json.dumps({"created_at": "2999-01-01T00:00:00Z"}).encode())
    assert latest_release(cfg.storage.root, "contracts-tiny")["version"] == first.version


def test_fetch_rejects_tampered_object(s3_env, run_outputs, tmp_path):
    rel = publish.run(make_cfg(s3_env.uri("kt")), **run_outputs, run_id="r", version="v1")
    key = "kt/releases/contracts-tiny/v1/merged/model.safetensors"
    s3_env.client().put_object(Bucket=s3_env.bucket, Key=key, Body=b"corrupted")
    dest = tmp_path / "serve"
    with pytest.raises(storage.HashMismatch, match="model.safetensors"):
        fetch_release(rel.uri, dest)
    assert not (dest / "merged" / "model.safetensors").exists()
    assert not (dest / FETCH_MARKER).exists()


def test_fetch_cli_errors(s3_env, tmp_path, capsys):
    assert main(["fetch", s3_env.uri("kt", "releases", "m", "nope"), str(tmp_path / "d")]) == 2
    assert "no complete release here" in capsys.readouterr().err


def test_version_is_unique_per_run():
    assert publish.new_version("run-A") != publish.new_version("run-B")
    assert Path(publish.new_version("x")).name.startswith("2")


def test_fetch_cli_parts_and_base(s3_env, run_outputs, tmp_path, capsys):
    base = tmp_path / "base-model"
    base.mkdir()
    (base / "model.safetensors").write_bytes(b"base weights")
    cfg = make_cfg(s3_env.uri("kt"))
    cfg.model.base = str(base)
    rel = publish.run(cfg, **run_outputs, run_id="r", version="v1")
    dest = tmp_path / "serve"
    assert main(["fetch", rel.uri, str(dest), "--parts=adapter,base"]) == 0
    assert "2 file(s) downloaded" in capsys.readouterr().out
    assert (dest / "base" / "model.safetensors").read_bytes() == b"base weights"
    assert json.loads((dest / "release.json").read_text())["version"] == "v1"
    assert not (dest / "merged").exists()
    with pytest.raises(SystemExit):
        main(["fetch", rel.uri, str(dest), "--parts=weights"])
    assert "expected a comma-separated list of merged, adapter, gguf, base" in capsys.readouterr().err
