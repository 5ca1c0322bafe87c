"""`kubetune quantize` end to end against the real local S3 (SeaweedFS): the model is fetched from
S3, the GGUF files, Modelfile and report are published under the run prefix with a manifest."""

from __future__ import annotations

import json

from quantize_helpers import write_config_yaml

from components.common import storage


def test_cli_quantizes_from_and_to_s3(demo, s3_env, tmp_path, capsys):
    from pipelines.cli import main

    model_uri = s3_env.uri("runs/r1/merge")
    storage.publish_dir(demo.model_dir, model_uri, producer="merge")
    out_uri = s3_env.uri("runs/r1/quantize")
    cfg = write_config_yaml(tmp_path / "cfg.yaml", types=["Q8_0"], eval_records=3, generate_tokens=4,
                            hf_reference=False)
    rc = main(["quantize", "--config", str(cfg), "--model", model_uri, "--output", out_uri,
               "--dataset", str(demo.chat)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "tiny-demo-Q8_0.gguf" in out and f"published to {out_uri}" in out

    manifest = storage.read_manifest(out_uri)
    assert manifest is not None and manifest.producer == "quantize"
    files = {f.path: f for f in manifest.files}
    assert set(files) == {"tiny-demo-Q8_0.gguf", "Modelfile.Q8_0", "quantize_report.json",
                          "report.md", "step_outcome.json"}
    assert manifest.lineage["step_inputs"]["model"] == {"uri": model_uri,
                                                        "content_hash": storage.read_manifest(model_uri).content_hash()}
    assert manifest.lineage["gguf"]["Q8_0"]["file"] == "tiny-demo-Q8_0.gguf"
    local = storage.fetch_dir(out_uri)  # verifies every sha256 against the manifest
    report = json.loads((local / "quantize_report.json").read_text())
    assert report["passed"] and [e["type"] for e in report["files"]] == ["F16", "Q8_0"]
    assert report["reference"]["hf"] is None
    assert files["tiny-demo-Q8_0.gguf"].size == (local / "tiny-demo-Q8_0.gguf").stat().st_size
    # The unquantized working file was not published (F16 is not in quantize.types).
    assert not any(p.name.endswith("F16.gguf") for p in local.iterdir())

    # The same command again (a retry) finds its output published for the same inputs: nothing to do.
    capsys.readouterr()
    assert main(["quantize", "--config", str(cfg), "--model", model_uri, "--output", out_uri,
                 "--dataset", str(demo.chat)]) == 0
    assert storage.read_manifest(out_uri).created_at == manifest.created_at
    # Another config to the same output is refused (outputs are immutable unless --overwrite).
    rc = main(["quantize", "--config", str(cfg), "--model", model_uri, "--output", out_uri,
               "--dataset", str(demo.chat), "--set", "quantize.max_ppl_delta_pct=30"])
    assert rc == 2 and "already holds a published output" in capsys.readouterr().err
