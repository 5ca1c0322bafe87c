"""serve-local takes its vLLM arguments from charts/vllm (helm template), for any values: fast checks on
a small published release (placeholder weights), with `--dry-run` and the plan functions. The live
servers (tests/serving/test_serve_local_vllm.py) check the same on a real model."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from serving_helpers import MODEL, REPO, placeholder_release

from components.common.storage import sha256_file
from pipelines import serve_local
from pipelines.cli import main


@pytest.fixture
def release(s3_env, tmp_path):
    return placeholder_release(s3_env, tmp_path)


def helm_args(values: list[dict]) -> tuple[list[str], str]:
    """The README's recipe, independently of serve-local: the vllm container's args and release dir."""
    helm = serve_local.find_helm()
    files = []
    for i, v in enumerate(values):
        path = Path(os.environ["KUBETUNE_CACHE"]) / f"helm-values-{i}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(v))
        files += ["-f", str(path)]
    out = subprocess.run([helm, "template", "kt", str(REPO / "charts" / "vllm"), *files, "--show-only",
                          "templates/deployment.yaml"], check=True, capture_output=True, text=True).stdout
    dep = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment")
    args = next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "vllm")["args"]
    return args, dep["metadata"]["annotations"]["kubetune.io/release-dir"]


def snippet(rel) -> dict:
    from components.common import storage

    return yaml.safe_load(storage.fetch_file(storage.join_uri(rel.uri, "values.yaml")).read_text())


def dry_run(capsys, *argv: str) -> dict:
    assert main(["serve-local", "--dry-run", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_default_release_serves_merged_with_the_charts_args(release, tmp_path, capsys):
    dest = tmp_path / "serve"
    plan = dry_run(capsys, "--release", release.uri, "--dest", str(dest))
    chart, release_dir = helm_args([snippet(release)])
    assert plan["chart_args"] == chart
    assert chart[0] == f"{release_dir}/merged" and "--host=0.0.0.0" in chart and "--port=8000" in chart
    python = str(REPO / ".venv-vllm" / "bin" / "python")
    assert plan["command"] == [python, "-m", "vllm.entrypoints.openai.api_server", f"--model={dest}/merged",
                               f"--served-model-name={MODEL}", "--max-model-len=1024",
                               "--gpu-memory-utilization=0.9", "--tensor-parallel-size=1", "--host=127.0.0.1",
                               "--port=8000"]
    # the only differences from the chart: the model flag, the local directory and the bind address
    assert [a for a in plan["command"][4:] if a not in chart] == ["--host=127.0.0.1"]
    env = plan["env"]
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_NO_USAGE_STATS"] == "1" and env["DO_NOT_TRACK"] == "1"  # the chart's container env
    assert "HOME" not in env and "USER" not in env  # pod-only
    assert plan["served_model_name"] == MODEL and plan["url"] == "http://127.0.0.1:8000"
    assert not dest.exists(), "--dry-run fetches nothing"


def test_lora_values_serve_base_and_adapter(release, tmp_path, capsys):
    values = {"model": {"source": "base", "chatTemplate": "merged/chat_template.jinja"},
              "lora": {"adapters": [{"name": "contracts-lora", "path": "adapter"}], "maxLoraRank": 32},
              "vllm": {"extraArgs": ["--max-num-seqs=4", "--seed", "7"], "port": 9000}}
    (tmp_path / "lora.yaml").write_text(yaml.safe_dump(values))
    dest = tmp_path / "serve"
    plan = dry_run(capsys, "--release", release.uri, "--dest", str(dest), "--values", str(tmp_path / "lora.yaml"),
                   "--port", "8123", "--host", "0.0.0.0")
    chart, release_dir = helm_args([snippet(release), values])
    assert plan["chart_args"] == chart
    assert plan["command"][3:] == [
        f"--model={dest}/base", f"--served-model-name={MODEL}", "--max-model-len=1024",
        "--gpu-memory-utilization=0.9", "--tensor-parallel-size=1", "--host=0.0.0.0", "--port=8123",
        f"--chat-template={dest}/merged/chat_template.jinja", "--enable-lora", "--max-lora-rank=32",
        "--lora-modules", f"contracts-lora={dest}/adapter", "--max-num-seqs=4", "--seed", "7"]
    assert not any(release_dir in a for a in plan["command"])

    # and the parts fetched are the chart's init container's: base (from the lineage), the adapter, and
    # merged, which holds the chat template
    rendered = serve_local.render_release(release.uri, [tmp_path / "lora.yaml"])
    assert rendered.parts == ("base", "adapter", "merged")
    # fetch.parts without merged: the template is not fetched, so it is refused before vLLM starts
    (tmp_path / "parts.yaml").write_text(yaml.safe_dump({"fetch": {"parts": ["base", "adapter"]}}))
    with pytest.raises(serve_local.ServeLocalError, match="chat_template.jinja, which the fetched parts"):
        serve_local.plan_vllm(release.uri, dest=dest, values=[tmp_path / "lora.yaml", tmp_path / "parts.yaml"])
    assert sorted(x.name for x in dest.iterdir()) == [".kubetune-release.json", "adapter", "base", "release.json"]
    assert (dest / "base" / "model.safetensors").read_bytes() == b"base weights"
    p = serve_local.plan_vllm(release.uri, dest=dest, values=[tmp_path / "lora.yaml"])
    assert p.fetched == {"downloaded": 3, "reused": 4, "bytes": 616}


def test_a_locally_corrupted_file_is_fetched_again_before_serving(release, tmp_path):
    dest = tmp_path / "serve"
    first = serve_local.plan_vllm(release.uri, dest=dest)
    assert first.fetched["downloaded"] == 3
    weights = dest / "merged" / "model.safetensors"
    weights.write_bytes(b"bit rot")
    again = serve_local.plan_vllm(release.uri, dest=dest)
    assert again.fetched == {"downloaded": 1, "reused": 2, "bytes": 600}
    expected = next(f for f in release.release["artifacts"]["merged"]["files"] if f["path"] == "model.safetensors")
    assert sha256_file(weights) == expected["sha256"]


def test_release_as_a_local_directory(release, s3_env, tmp_path, capsys):
    """A release copied to disk (…/releases/<model>/<version>) serves the same as from S3."""
    local = tmp_path / "mirror" / "releases" / MODEL / "v1"
    client = s3_env.client()
    prefix = f"kt/releases/{MODEL}/v1/"
    for obj in client.list_objects_v2(Bucket=s3_env.bucket, Prefix=prefix)["Contents"]:
        target = local / obj["Key"][len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(client.get_object(Bucket=s3_env.bucket, Key=obj["Key"])["Body"].read())
    plan = dry_run(capsys, "--release", str(local), "--dest", str(tmp_path / "serve"))
    assert plan["command"][3] == f"--model={tmp_path / 'serve'}/merged"
    assert plan["served_model_name"] == MODEL


def test_values_the_chart_rejects_fail_clearly(release, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"vllm": {"gpuMemoryUtilization": 2}}))
    assert main(["serve-local", "--dry-run", "--release", release.uri, "--values", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "kubetune serve-local: error: helm template" in err and "gpuMemoryUtilization" in err


def test_gguf_picks_a_file_and_serves_it_with_llama_server(release, tmp_path, capsys):
    dest = tmp_path / "serve"
    code = main(["serve-local", "--dry-run", "--gguf", "--release", release.uri, "--dest", str(dest),
                 "--port", "8111"])
    out, err = capsys.readouterr()
    assert code == 0, err
    plan = json.loads(out)
    cmd = plan["command"]
    assert plan["kind"] == "llama-server" and Path(cmd[0]).name == "llama-server"
    assert cmd[cmd.index("--model") + 1] == str(dest / "gguf" / f"{MODEL}-Q4_K_M.gguf")  # the preferred type
    # The chart's served name and context length; Prometheus metrics on.
    assert cmd[cmd.index("--alias") + 1] == MODEL and cmd[cmd.index("--ctx-size") + 1] == "1024"
    assert "--metrics" in cmd and cmd[cmd.index("--port") + 1] == "8111" and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    q8 = serve_local.plan_gguf(release.uri, dest=dest, gguf_file="Q8_0")
    assert str(dest / "gguf" / f"{MODEL}-Q8_0.gguf") in q8.command
    assert (dest / "gguf" / f"{MODEL}-Q8_0.gguf").read_bytes() == b"GGUF8"
    with pytest.raises(serve_local.ServeLocalError, match="no matching file"):
        serve_local.plan_gguf(release.uri, dest=dest, gguf_file="Q2_K", fetch=False)


def test_gguf_without_llama_server_says_how_to_build_it(release, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(serve_local, "REPO", tmp_path)  # no .venv/tools/llama-server there
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    dest = tmp_path / "serve"
    assert main(["serve-local", "--gguf", "--release", release.uri, "--dest", str(dest)]) == 2
    err = capsys.readouterr().err
    assert "llama-server not found" in err and "make install-llama-server" in err, err
    assert not dest.exists()  # nothing fetched for a server that cannot start
