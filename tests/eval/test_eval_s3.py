"""`kubetune eval` against the real local S3 (SeaweedFS): inputs fetched from published prefixes, all
outputs published with the manifest written last, and an impossible gate threshold failing with its
reason in gate.json (exit 3 with --fail-on-gate, and the results are still published)."""

from __future__ import annotations

import json

import yaml

from components.common import storage
from pipelines.cli import main

OUTPUTS = {"eval_results.json", "gate.json", "samples.jsonl", "report.md", "report.html", "eval_chart.png",
           "step_outcome.json"}


def spy_on_publishing(monkeypatch) -> list[tuple[str, str]]:
    """Records ('file', uri) for each uploaded file and ('text', uri) for each text write, in order."""
    events: list[tuple[str, str]] = []
    transfer, write_text = storage._transfer, storage._write_text

    def spy_transfer(direction, jobs):
        transfer(direction, jobs)
        if direction == "uploaded":
            events.extend(("file", job[3]) for job in jobs)

    def spy_write(uri, text):
        write_text(uri, text)
        events.append(("text", uri))

    monkeypatch.setattr(storage, "_transfer", spy_transfer)
    monkeypatch.setattr(storage, "_write_text", spy_write)
    return events


def test_eval_cli_on_s3(s3_env, demo, prepared, finetuned, tmp_path, monkeypatch, capsys):
    from eval_helpers import base_config_dict

    base_uri, adapter_uri, data_uri = (s3_env.uri("models/tiny"), s3_env.uri("runs/r1/train"),
                                       s3_env.uri("runs/r1/prepare"))
    storage.publish_dir(demo.model_dir, base_uri, producer="test")
    storage.publish_dir(finetuned["dir"], adapter_uri, producer="train")
    storage.publish_dir(prepared, data_uri, producer="prepare")
    d = base_config_dict(demo)
    d["model"]["base"] = base_uri
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(d))
    out = s3_env.uri("runs/r1/eval")

    events = spy_on_publishing(monkeypatch)
    rc = main(["eval", "--config", str(config), "--adapter", adapter_uri, "--dataset", data_uri, "--output", out,
               "--set", "eval.max_examples=8", "--set", "eval.max_new_tokens=80",
               "--set", "eval.gate.min_primary_improvement=5", "--fail-on-gate", "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 3, printed
    assert "eval: gate FAILED" in printed and "< the required 5" in printed

    manifest = storage.read_manifest(out)
    assert manifest.producer == "eval" and {f.path for f in manifest.files} == OUTPUTS
    assert manifest.lineage["base_model"] == base_uri and manifest.lineage["gate_passed"] is False
    assert events[-1] == ("text", storage.join_uri(out, "_manifest.json")), "the manifest must be written last"
    assert {uri.rsplit("/", 1)[1] for kind, uri in events[:-1] if kind == "file"} == OUTPUTS

    local = storage.fetch_dir(out)  # verifies every sha256
    verdict = json.loads((local / "gate.json").read_text())
    primary = verdict["checks"][0]
    assert verdict["passed"] is False and primary["name"] == "primary_improvement" and not primary["passed"]
    assert primary["threshold"] == 5 and "< the required 5" in primary["reason"]
    results = json.loads((local / "eval_results.json").read_text())
    assert results["models"]["base"] == base_uri and results["models"]["tuned"] == adapter_uri
    assert results["num_examples"] == 8 and results["gate_passed"] is False

    # a second run to the same output is refused (outputs are immutable unless --overwrite)
    assert main(["eval", "--config", str(config), "--adapter", adapter_uri, "--dataset", data_uri,
                 "--output", out]) == 2
    assert "already holds a published output" in capsys.readouterr().err
