"""The rendered vLLM pod: its arguments, the fetch init container, security, probes, placement, and
the helm test Pod (whose script runs here against a stand-in of the OpenAI API)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

ADAPTERS = {"lora": {"adapters": [{"name": "contracts", "path": "adapter"},
                                  {"name": "legal", "path": "/models/shared/legal/"}]}}


def _args(chart, values=None, *files):
    args = chart.container(chart.render(values, *files))["args"]
    assert isinstance(args, list) and all(isinstance(a, str) for a in args), args
    return args


def _flags(args):
    return dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)


# -- the vLLM arguments ----------------------------------------------------------------------------
def test_default_args(chart):
    args = _args(chart)
    assert args[0] == f"{chart.release_dir}/merged", "the model directory comes first, positional"
    assert args == [
        f"{chart.release_dir}/merged",
        "--served-model-name=contracts-tiny",
        "--max-model-len=4096",
        "--gpu-memory-utilization=0.9",
        "--tensor-parallel-size=1",
        "--host=0.0.0.0",
        "--port=8000",
    ]
    assert "--enable-lora" not in args and "--lora-modules" not in args


def test_release_values_become_args(chart):
    args = _args(chart, {"model": {"servedName": "acme/contracts", "maxModelLen": 131072},
                         "vllm": {"gpuMemoryUtilization": 0.85, "tensorParallelSize": 4},
                         "gpu": {"count": 4}})
    flags = _flags(args)
    assert flags["served-model-name"] == "acme/contracts"
    assert flags["max-model-len"] == "131072", "large integers must not turn into 1.31072e+05"
    assert flags["gpu-memory-utilization"] == "0.85"
    assert flags["tensor-parallel-size"] == "4"


def test_tensor_parallel_size_defaults_to_the_gpu_count(chart):
    assert _flags(_args(chart, {"gpu": {"count": 2}}))["tensor-parallel-size"] == "2"
    assert _flags(_args(chart, {"gpu": {"count": 0}}))["tensor-parallel-size"] == "1"


@pytest.mark.parametrize("values, message", [
    ({"vllm": {"tensorParallelSize": 4}, "gpu": {"count": 2}}, "tensorParallelSize"),
    ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}, "minReplicas"),
    ({"lora": {"adapters": [{"name": "a", "path": "adapter"}, {"name": "a", "path": "/x"}]}}, "used twice"),
])
def test_inconsistent_values_fail_to_render(chart, values, message):
    proc = chart.template_raw(values)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_lora_adapters_are_served(chart):
    args = _args(chart, {**ADAPTERS, "lora": {**ADAPTERS["lora"], "maxLoraRank": 64}})
    i = args.index("--lora-modules")
    assert "--enable-lora" in args[:i]
    assert "--max-lora-rank=64" in args
    assert args[i + 1:i + 3] == [f"contracts={chart.release_dir}/adapter", "legal=/models/shared/legal"]


def test_extra_args_come_last_and_a_chat_template_is_a_release_path(chart):
    args = _args(chart, {**ADAPTERS, "vllm": {"extraArgs": ["--enable-prefix-caching", "--max-num-seqs=8"]},
                         "model": {"chatTemplate": "chat_template.jinja"}})
    assert args[-2:] == ["--enable-prefix-caching", "--max-num-seqs=8"]
    assert f"--chat-template={chart.release_dir}/chat_template.jinja" in args


def test_base_source_serves_the_base_model(chart):
    args = _args(chart, {"model": {"source": "base"}, **ADAPTERS})
    assert args[0] == f"{chart.release_dir}/base"


def test_args_are_rendered_as_one_plain_list(chart):
    proc = chart.template_raw(ADAPTERS)
    lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip().startswith("args: [")]
    assert len(lines) == 1, "the vllm container's args are one flow list: args: [...]"
    assert json.loads(lines[0][len("args: "):]) == chart.container(chart.render(ADAPTERS))["args"]


def test_release_dir_is_annotated_for_serve_local(chart):
    dep = chart.one(chart.render(), "Deployment")
    ann = dep["metadata"]["annotations"]
    assert ann["kubetune.io/release-uri"] == chart.default_uri
    assert ann["kubetune.io/release-dir"] == chart.release_dir
    assert ann["kubetune.io/served-model-name"] == "contracts-tiny"
    assert dep["spec"]["template"]["metadata"]["annotations"]["kubetune.io/release-dir"] == chart.release_dir


# -- fetching the model ------------------------------------------------------------------------------
def test_fetch_init_container(chart):
    docs = chart.render()
    fetch = chart.container(docs, "fetch-model")
    assert fetch["command"] == ["kubetune", "fetch"]
    assert fetch["args"] == [chart.default_uri, chart.release_dir, "--parts=merged"]
    assert fetch["image"] == "ghcr.io/kubetune/kubetune-base:0.1.0"
    assert fetch["envFrom"] == [{"secretRef": {"name": "kubetune-s3"}}]
    assert {"name": "models", "mountPath": "/models"} in fetch["volumeMounts"]
    vllm_mount = next(m for m in chart.container(docs)["volumeMounts"] if m["name"] == "models")
    assert vllm_mount == {"name": "models", "mountPath": "/models", "readOnly": True}
    volume = next(v for v in chart.one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "models")
    assert volume == {"name": "models", "emptyDir": {}}


def test_fetch_parts_follow_the_source_and_adapters(chart):
    fetch = chart.container(chart.render({"model": {"source": "base"}, **ADAPTERS}), "fetch-model")
    assert fetch["args"][2] == "--parts=base,adapter", "absolute adapter paths are not fetched"
    # the trained chat template, kept in merged/, while serving base + adapter: merged is fetched too
    with_tpl = {"model": {"source": "base", "chatTemplate": "merged/chat_template.jinja"}, **ADAPTERS}
    fetch = chart.container(chart.render(with_tpl), "fetch-model")
    assert fetch["args"][2] == "--parts=base,adapter,merged"
    assert "--chat-template=/models/" in " ".join(chart.container(chart.render(with_tpl))["args"])
    for tpl in ("chat_template.jinja", "/etc/templates/chat.jinja"):  # at the release root, or absolute
        fetch = chart.container(chart.render({"model": {"source": "base", "chatTemplate": tpl}}), "fetch-model")
        assert fetch["args"][2] == "--parts=base", tpl
    values = {"fetch": {"parts": ["merged", "gguf"], "extraArgs": ["--workers=4"]}}
    fetch = chart.container(chart.render(values), "fetch-model")
    assert fetch["args"][2:] == ["--parts=merged,gguf", "--workers=4"]


def test_pvc_cache_and_s3_settings(chart):
    docs = chart.render({"cache": {"type": "pvc", "existingClaim": "model-cache"},
                         "s3": {"secretName": "", "endpointUrl": "http://seaweedfs:8333",
                                "region": "us-east-1"}})
    volume = next(v for v in chart.one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "models")
    assert volume == {"name": "models", "persistentVolumeClaim": {"claimName": "model-cache"}}
    fetch = chart.container(docs, "fetch-model")
    assert "envFrom" not in fetch
    env = {e["name"]: e["value"] for e in fetch["env"]}
    assert env["AWS_ENDPOINT_URL_S3"] == "http://seaweedfs:8333" and env["AWS_REGION"] == "us-east-1"
    proc = chart.template_raw({"cache": {"type": "pvc"}})
    assert proc.returncode != 0 and "existingClaim" in proc.stderr


def test_release_directory_keeps_versions_apart(chart):
    docs = chart.render({"release": {"uri": "file:///srv/kt/releases/m1/2026-01-02"}})
    assert chart.container(docs)["args"][0] == "/models/m1/2026-01-02/merged"
    assert _flags(chart.container(docs)["args"])["served-model-name"] == "m1"


# -- security ---------------------------------------------------------------------------------------
def _pod_specs(docs, chart):
    return [("deployment", chart.one(docs, "Deployment")["spec"]["template"]["spec"]),
            ("helm test", chart.test_pod(docs)["spec"])]


@pytest.mark.parametrize("files", [(), ("all-features-values.yaml",)])
def test_security_contexts(chart, files):
    docs = chart.render(None, *files)
    for where, spec in _pod_specs(docs, chart):
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0, where
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["enableServiceLinks"] is False, f"{where}: a Service named vllm would set VLLM_PORT"
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (where, c["name"])
            assert sc.get("privileged") is not True, (where, c["name"])
            assert sc["runAsNonRoot"] is True, (where, c["name"])
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, (where, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])
    sa = chart.one(docs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    pod_spec = chart.one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == sa["metadata"]["name"]


def test_writable_dirs_for_a_read_only_root(chart):
    c = chart.container(chart.render())
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/home/vllm", "/tmp", "/dev/shm"} <= mounts
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HOME"] == "/home/vllm" and env["USER"] and env["HF_HUB_OFFLINE"] == "1"


# -- probes, rollout, placement -------------------------------------------------------------------------
def test_probes(chart):
    c = chart.container(chart.render())
    startup = c["startupProbe"]
    assert startup["httpGet"] == {"path": "/health", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] == 600, "10 minutes for the model load"
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    values = {"probes": {"startup": {"maxStartupSeconds": 1805, "periodSeconds": 30}}}
    longer = chart.container(chart.render(values))
    assert longer["startupProbe"]["periodSeconds"] == 30
    assert longer["startupProbe"]["failureThreshold"] == 61, "rounded up, never shorter than asked"


def test_rollout_strategy(chart):
    strategy = chart.one(chart.render(), "Deployment")["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    recreate = chart.one(chart.render({"strategy": {"type": "Recreate"}}), "Deployment")["spec"]["strategy"]
    assert recreate == {"type": "Recreate"}


def test_gpu_resources_and_placement(chart):
    docs = chart.render(None, "all-features-values.yaml")
    res = chart.container(docs)["resources"]
    assert res["limits"]["nvidia.com/gpu"] == 2 and res["requests"]["nvidia.com/gpu"] == 2
    assert res["limits"]["memory"] == "48Gi"
    spec = chart.one(docs, "Deployment")["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["runtimeClassName"] == "nvidia" and spec["priorityClassName"] == "llm-serving"
    assert "podAntiAffinity" in spec["affinity"]
    assert chart.container(docs)["image"].startswith("vllm/vllm-openai@sha256:")
    no_gpu = chart.container(chart.render({"gpu": {"count": 0}}))["resources"]
    assert "nvidia.com/gpu" not in no_gpu["limits"] and "nvidia.com/gpu" not in no_gpu["requests"]


def test_image_is_pinned(chart):
    image = chart.container(chart.render())["image"]
    assert image.startswith("vllm/vllm-openai:v") and not image.endswith(":latest")


# -- helm test ------------------------------------------------------------------------------------------
class _FakeOpenAI(BaseHTTPRequestHandler):
    """A stand-in of vLLM's OpenAI API: /v1/models and /v1/completions, nothing else."""

    models = ["contracts-tiny"]
    completions: list[dict] = []

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        if self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/v1/completions" and body.get("model") in self.models:
            type(self).completions.append(body)
            self._send(200, {"choices": [{"text": " world", "index": 0}], "usage": {"total_tokens": 3}})
        else:
            self._send(404, {"error": f"no model {body.get('model')}"})

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_openai():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeOpenAI.completions = []
    yield server
    server.shutdown()
    server.server_close()


def _run_helm_test_pod(pod, url):
    (c,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    env["VLLM_URL"] = url
    assert c["command"] == ["python3", "-c"]
    return subprocess.run([sys.executable, "-c", c["args"][0]], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


def test_helm_test_pod_lists_models_and_completes(chart, fake_openai):
    pod = chart.test_pod(chart.render(ADAPTERS))
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["VLLM_URL"] == f"http://{chart.fullname}.{chart.namespace}.svc:8000"
    assert env["LORA_NAMES"] == "contracts,legal"
    url = f"http://127.0.0.1:{fake_openai.server_address[1]}"

    _FakeOpenAI.models = ["contracts-tiny", "contracts", "legal"]
    ok = _run_helm_test_pod(pod, url)
    assert ok.returncode == 0, ok.stderr
    assert "POST /v1/completions" in ok.stdout
    assert _FakeOpenAI.completions == [{"model": "contracts-tiny", "prompt": "Hello", "max_tokens": 4}]

    _FakeOpenAI.models = ["contracts-tiny"]  # the adapters are not served
    missing = _run_helm_test_pod(pod, url)
    assert missing.returncode != 0 and "not served" in missing.stderr
