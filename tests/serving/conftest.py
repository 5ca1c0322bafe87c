"""Fixtures for tests/serving: one real release, the real vLLM CPU servers and a real Prometheus.

Session fixtures (each built once, shared by every test of the session):
  serving_env     the AWS environment of the session's SeaweedFS S3 server, and a private $KUBETUNE_CACHE
  trained         a real, brief LoRA fine-tune of the demo model through the train step (TRAIN below),
                  merged by the merge step, quantized by the quantize step (Q4_K_M, Q8_0) and
                  published by the publish step (merged, adapter and gguf parts) to the local S3: a
                  model that answers in the trained JSON format
  servers         two `kubetune serve-local` processes started together, each one vLLM's CPU build:
                  "merged" serves the release as published (its values.yaml only), "lora" serves the
                  release's base with its adapter (LORA_VALUES, through --lora-modules)
  prometheus      a real Prometheus (Debian package) on 127.0.0.1 scraping both every second
  gguf_server     `kubetune serve-local --gguf`: llama.cpp's llama-server (--metrics) on the release's GGUF
  gguf_prometheus another real Prometheus, scraping only the GGUF server

Nothing is skipped: without the vLLM venv, helm or prometheus the tests fail and say `make install`.
Every process runs in its own process group and the group is killed on teardown. Startup time and
request latency go to the pytest cache (`kubetune/serving-figures`) and to stdout (`pytest -s`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from serving_helpers import (
    LORA_VALUES,
    REPO,
    ServingEnv,
    Trained,
    config_dict,
    kill_group,
    record_figures,
    start_prometheus,
    start_serve_local,
    wait_healthy,
)


# ---- the session's environment and release ---------------------------------------------------------
@pytest.fixture(scope="session")
def serving_env(s3_server, tmp_path_factory) -> ServingEnv:
    """The AWS environment of the session's S3 server and a private $KUBETUNE_CACHE: passed to the servers
    as their environment, and applied in this process only inside `with serving_env.active():`, so
    that tests run after these ones see their usual environment."""
    tmp = tmp_path_factory.mktemp("serving-env")
    set_vars = {"AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
                "AWS_EC2_METADATA_DISABLED": "true", **s3_server.env(),
                "KUBETUNE_CACHE": str(tmp / "kubetune-cache")}
    bucket = s3_server.ensure_bucket("kt-serving")
    return ServingEnv(bucket=bucket, root=f"s3://{bucket}/kt", set_vars=set_vars)


@pytest.fixture(scope="session")
def trained(serving_env, demo, tmp_path_factory, torch_threads) -> Trained:
    """prepare -> train (real LoRA, CPU) -> merge -> quantize -> publish to S3. The eval step is not run here
    (tests/evaluate covers it): its gate verdict is written by hand, as in tests/publish."""
    require_tools()  # before the fine-tune: fail in seconds, not minutes

    from components.common.config import config_from_dict
    from components.merge.step import run as merge
    from components.prepare.step import run as prepare
    from components.publish.step import run as publish
    from components.quantize.step import run as quantize
    from components.train.step import run as train

    cfg = config_from_dict(config_dict(demo, serving_env.root))
    work = tmp_path_factory.mktemp("serving-release")
    figures = {}
    with torch_threads(1):
        prepare(cfg, None, work / "prepared", demo.model_dir)
        t0 = time.monotonic()
        result = train(cfg, work / "prepared", work / "adapter", checkpoint_uri=None, run_id="serving-tests",
                       progress=False)
        figures["train_seconds"] = round(time.monotonic() - t0, 1)
        figures["train_eval_loss"] = [result.metrics.get("initial_eval_loss"), result.metrics.get("final_eval_loss")]
        merge(cfg, demo.model_dir, work / "adapter", work / "merged")
        t0 = time.monotonic()
        quantize(cfg, work / "merged", work / "gguf", eval_data=work / "prepared")
        figures["quantize_seconds"] = round(time.monotonic() - t0, 1)
    eval_dir = work / "eval"
    eval_dir.mkdir()
    (eval_dir / "gate.json").write_text(json.dumps({"passed": True, "checks": [], "note": "written by tests/serving"}))
    (eval_dir / "eval_results.json").write_text(json.dumps({"metrics": {}}))
    with serving_env.active():
        rel = publish(cfg, merged=work / "merged", adapter=work / "adapter", gguf=work / "gguf", eval_dir=eval_dir,
                      lineage={"data_hash": "tests-serving"}, run_id="serving-tests", version="v1")
    return Trained(uri=rel.uri, release=rel.release, cfg=cfg, prepared=work / "prepared", adapter=work / "adapter",
                   merged=work / "merged", figures=figures)


# ---- the servers -------------------------------------------------------------------------------
def require_tools() -> None:
    venv = Path(os.environ.get("KUBETUNE_VLLM_VENV") or REPO / ".venv-vllm")
    if not (venv / ".installed-vllm").is_file():
        pytest.fail(f"vLLM's CPU build is not installed in {venv}: run `make install` (or `make install-vllm`)",
                    pytrace=False)
    if not (shutil.which("helm") or os.access(REPO / ".venv" / "tools" / "helm", os.X_OK)):
        pytest.fail("helm not found: run `make install` (or `make install-helm`)", pytrace=False)


@pytest.fixture(scope="session")
def servers(trained, serving_env, tmp_path_factory, request):
    """Both vLLM CPU servers, started together through `kubetune serve-local` (one startup per session)."""
    require_tools()
    tmp = tmp_path_factory.mktemp("servers")
    started = time.monotonic()
    env = serving_env.environ()
    found = {"merged": start_serve_local("merged", trained.uri, tmp, env),
             "lora": start_serve_local("lora", trained.uri, tmp, env, LORA_VALUES)}
    try:
        wait_healthy(list(found.values()), started)
        record_figures(request, {f"startup_seconds_{k}": s.startup_seconds for k, s in found.items()}
                       | {"concurrent_startups": 2} | trained.figures)
        yield found
    finally:
        for s in found.values():
            kill_group(s.proc)


# ---- Prometheus ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def prometheus(servers, tmp_path_factory):
    prom = start_prometheus({f"vllm-{name}": s.port for name, s in servers.items()},
                            tmp_path_factory.mktemp("prometheus"))
    try:
        yield prom
    finally:
        kill_group(prom.proc)


# ---- GGUF: llama.cpp's server ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def gguf_server(trained, serving_env, tmp_path_factory, request):
    """`kubetune serve-local --gguf` on the release: llama-server with the release's Q4_K_M file."""
    tmp = tmp_path_factory.mktemp("gguf-server")
    started = time.monotonic()
    server = start_serve_local("gguf", trained.uri, tmp, serving_env.environ(), extra_args=["--gguf"])
    try:
        wait_healthy([server], started)
        record_figures(request, {"startup_seconds_gguf": server.startup_seconds})
        yield server
    finally:
        kill_group(server.proc)


@pytest.fixture(scope="session")
def gguf_prometheus(gguf_server, tmp_path_factory):
    prom = start_prometheus({"llama-server": gguf_server.port}, tmp_path_factory.mktemp("gguf-prometheus"))
    try:
        yield prom
    finally:
        kill_group(prom.proc)
