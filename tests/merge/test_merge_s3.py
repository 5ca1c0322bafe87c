"""`kubetune merge` against the real local S3 (SeaweedFS): the merged model is published with the
manifest written last and can be fetched (hashes verified) and loaded; a bad adapter publishes nothing."""

from __future__ import annotations

import json

import yaml

from components.common import storage
from pipelines.cli import main


def write_config(tmp_path, base_uri: str) -> str:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "tiny-merge", "base": base_uri}, "data": {"sources": [{"uri": "unused.jsonl"}]},
        "storage": {"root": "/tmp/x"}, "merge": {"dtype": "float32", "max_shard_size": "8MB"}}))
    return str(config)


def test_merge_cli_on_s3(s3_env, demo_model, adapter, tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM

    base_uri, adapter_uri, out = s3_env.uri("models/tiny"), s3_env.uri("runs/r1/train"), s3_env.uri("runs/r1/merge")
    storage.publish_dir(demo_model, base_uri, producer="test")
    storage.publish_dir(adapter, adapter_uri, producer="train")
    config = write_config(tmp_path, base_uri)

    events: list[str] = []
    transfer, write_text = storage._transfer, storage._write_text
    monkeypatch.setattr(storage, "_transfer", lambda d, jobs: (transfer(d, jobs), events.extend(
        j[3] for j in jobs if d == "uploaded")))
    monkeypatch.setattr(storage, "_write_text", lambda uri, text: (write_text(uri, text), events.append(uri)))

    assert main(["merge", "--config", config, "--adapter", adapter_uri, "--output", out]) == 0, \
        capsys.readouterr().err
    assert "merged into" in capsys.readouterr().out
    manifest = storage.read_manifest(out)
    names = {f.path for f in manifest.files}
    assert {"merge_report.json", "config.json", "model.safetensors.index.json", "tokenizer.json",
            "chat_template.jinja", "generation_config.json"} <= names
    assert len([n for n in names if n.endswith(".safetensors")]) >= 2
    assert events[-1] == storage.join_uri(out, "_manifest.json") and len(events) == len(names) + 1
    assert manifest.lineage["step_inputs"]["adapter"]["uri"] == adapter_uri
    assert manifest.lineage["max_abs_logit_diff"] <= 1e-4

    local = storage.fetch_dir(out)
    report = json.loads((local / "merge_report.json").read_text())
    assert report["verify"]["passed"] and report["verify"]["max_abs_diff"] == manifest.lineage["max_abs_logit_diff"]
    AutoModelForCausalLM.from_pretrained(local)  # a complete, loadable model


def test_failed_merge_publishes_nothing(s3_env, demo_model, tmp_path, capsys):
    base_uri, out = s3_env.uri("models/tiny"), s3_env.uri("runs/r2/merge")
    storage.publish_dir(demo_model, base_uri, producer="test")
    not_an_adapter = tmp_path / "empty"
    not_an_adapter.mkdir()
    (not_an_adapter / "notes.txt").write_text("no weights here")
    rc = main(["merge", "--config", write_config(tmp_path, base_uri), "--adapter", str(not_an_adapter),
               "--output", out])
    assert rc == 2 and "neither adapter_config.json (a LoRA adapter) nor config.json" in capsys.readouterr().err
    assert storage.read_manifest(out) is None and storage.list_objects(out) == []
