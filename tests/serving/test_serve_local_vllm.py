"""End to end with the real vLLM CPU server: `kubetune serve-local` serves a real fine-tuned release
(see conftest.py) with the chart's arguments, on 127.0.0.1."""

from __future__ import annotations

import subprocess
import time

import yaml
from serving_helpers import (
    LORA_NAME,
    LORA_VALUES,
    MAX_MODEL_LEN,
    MODEL,
    REPO,
    TRAINED_PREFIX,
    conversation,
    record_figures,
)

from components.common import storage
from pipelines import serve_local


def chart_args(uri: str, extra_values: list[dict], tmp_path, serving_env) -> tuple[list[str], str]:
    """charts/vllm's vllm args for the release, rendered here with helm (the README's recipe)."""
    files = []
    with serving_env.active():
        snippet = storage.fetch_file(storage.join_uri(uri, "values.yaml")).read_text()
    for i, text in enumerate([snippet, *map(yaml.safe_dump, extra_values)]):
        (tmp_path / f"v{i}.yaml").write_text(text)
        files += ["-f", str(tmp_path / f"v{i}.yaml")]
    out = subprocess.run([serve_local.find_helm(), "template", "kt", str(REPO / "charts" / "vllm"), *files,
                          "--show-only", "templates/deployment.yaml"], check=True, capture_output=True,
                         text=True).stdout
    dep = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment")
    args = next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "vllm")["args"]
    return args, dep["metadata"]["annotations"]["kubetune.io/release-dir"]


def expected_command(args: list[str], release_dir: str, dest, port: int) -> list[str]:
    """The chart's args as vLLM CPU runs them: --model=<dir> for the positional model, the local release
    directory for the pod's, and 127.0.0.1 and the test's port for the pod's bind address and port."""
    local = [a.replace(release_dir, str(dest)) for a in args]
    fixed = {"--host": "--host=127.0.0.1", "--port": f"--port={port}"}
    return [f"--model={local[0]}", *(fixed.get(a.split("=", 1)[0], a) for a in local[1:])]


def test_running_server_has_the_charts_arguments(servers, trained, serving_env, tmp_path):
    for name, extra in (("merged", []), ("lora", [LORA_VALUES])):
        s = servers[name]
        args, release_dir = chart_args(trained.uri, extra, tmp_path, serving_env)
        cmd = s.cmdline()
        assert cmd[0] == str(REPO / ".venv-vllm" / "bin" / "python")
        assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
        assert cmd[3:] == expected_command(args, release_dir, s.dest, s.port)
        env = dict(line.split("=", 1) for line in
                   open(f"/proc/{s.proc.pid}/environ", "rb").read().decode().split("\0") if "=" in line)
        assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and env["HF_HUB_OFFLINE"] == "1"
        assert env["VLLM_NO_USAGE_STATS"] == "1"  # from the chart's container env
    lora_cmd = servers["lora"].cmdline()
    assert lora_cmd[3] == f"--model={servers['lora'].dest}/base"
    assert lora_cmd[-3:] == ["--max-lora-rank=16", "--lora-modules", f"{LORA_NAME}={servers['lora'].dest}/adapter"]


def test_models_lists_the_served_name(servers):
    models = servers["merged"].get("/v1/models")["data"]
    assert [m["id"] for m in models] == [MODEL]
    assert models[0]["root"] == str(servers["merged"].dest / "merged")
    assert models[0]["max_model_len"] == MAX_MODEL_LEN


def test_chat_completion_answers_in_the_trained_format(servers, trained, request):
    messages = conversation(trained.prepared)[:-1]  # system + user of a held-out conversation
    body = {"model": MODEL, "messages": messages, "max_tokens": 48, "temperature": 0}
    t0 = time.monotonic()
    r = servers["merged"].post("/v1/chat/completions", body)
    latency = time.monotonic() - t0
    content = r["choices"][0]["message"]["content"]
    assert content.startswith(TRAINED_PREFIX), content
    assert "<|im_end|>" not in content and "<|im_start|>" not in content
    assert r["model"] == MODEL and r["usage"]["completion_tokens"] <= 48
    # the prompt went through the chat template: as many tokens as /tokenize counts for these messages
    tok = servers["merged"].post("/tokenize", {"model": MODEL, "messages": messages, "add_generation_prompt": True})
    assert r["usage"]["prompt_tokens"] == tok["count"]
    short = servers["merged"].post("/v1/chat/completions", dict(body, max_tokens=8))  # warm: one short request
    t1 = time.monotonic()
    servers["merged"].post("/v1/chat/completions", dict(body, max_tokens=8))
    short_latency = time.monotonic() - t1
    assert short["usage"]["completion_tokens"] <= 8
    record_figures(request, {"latency_seconds_48_tokens": round(latency, 3),
                             "completion_tokens": r["usage"]["completion_tokens"],
                             "prompt_tokens": r["usage"]["prompt_tokens"],
                             "latency_seconds_8_tokens": round(short_latency, 3), "sample_answer": content})
