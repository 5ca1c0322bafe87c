"""Fixtures for tests/serving: one real release, the real vLLM CPU servers and a real Prometheus.

Session fixtures (each built once, shared by every test of the session):
  serving_env     the AWS environment of the session's SeaweedFS S3 server, and a private $KUBETUNE_CACHE
  trained         the release of the session's one demo pipeline run (`demo_run`, tests/conftest.py): a
                  real full fine-tune of the pre-trained demo model, quantized (Q4_K_M, Q8_0) and
                  published (merged, adapter and gguf parts) to the local S3: a model that answers in
                  the trained JSON format
  lora_trained    a second, shorter run of the demo pipeline with train.method lora, in the same S3:
                  the demo trains all weights, so its release has no adapter to serve
  servers         two `kubetune serve-local` processes started together, each one vLLM's CPU build:
                  "merged" serves the demo release as published (its values.yaml only), "lora" serves
                  lora_trained's base with its adapter (LORA_VALUES, through --lora-modules)
  prometheus      a real Prometheus (Debian package) on 127.0.0.1 scraping both every 200 ms
  gguf_server     `kubetune serve-local --gguf`: llama.cpp's llama-server (--metrics) on the release's GGUF
  gguf_prometheus another real Prometheus, scraping only the GGUF server

Nothing is skipped: without the vLLM venv, helm or prometheus the tests fail and say `make install`.
Every process runs in its own process group and the group is killed on teardown. Startup time and
request latency go to the pytest cache (`kubetune/serving-figures`) and to stdout (`pytest -s`).
"""

from __future__ import annotations

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
def trained(demo_run) -> Trained:
    """The release of the session's one demo pipeline run (tests/conftest.py `demo_run`: prepare -> a
    real full fine-tune on CPU -> eval -> merge -> quantize -> publish, through the KFP local runner),
    and its step outputs, fetched: the model every serving test serves."""
    require_tools()  # fail in seconds, not after the pipeline

    result = demo_run.result
    assert result.release is not None, "the demo run published no release (its gate failed?)"
    figures = {"train_seconds": round(result.step_seconds.get("train", 0.0), 1),
               "quantize_seconds": round(result.step_seconds.get("quantize", 0.0), 1)}
    cfg = demo_run.cfg.model_copy(deep=True)  # the run's config, with its base model read from disk here
    cfg.model.base = str(demo_run.assets.model_dir)
    return Trained(uri=result.release["uri"], release=result.release, cfg=cfg,
                   prepared=demo_run.step_dir("prepare"), adapter=demo_run.step_dir("train"),
                   merged=demo_run.step_dir("merge"), figures=figures)


# A LoRA variant of the demo run for the "lora" server. It exists to test serving an adapter, not
# learning (the demo run's own tests check that), so its gate only asks for no regression.
LORA_RUN = {"train.method": "lora", "train.lora.r": 16, "train.lora.alpha": 32, "train.lr": 0.002,
            "train.max_steps": 200, "train.eval_steps": 200, "eval.max_examples": 8,
            "eval.gate.min_primary_improvement": 0.0, "eval.gate.min_json_valid_rate": None,
            "quantize.types": ["Q8_0"], "quantize.generate_records": 2}


@pytest.fixture(scope="session")
def lora_trained(demo_run, tmp_path_factory) -> Trained:
    from demo_run import DEMO_RUN_SHORTER, environ

    from components.common import storage
    from components.common.config import load_config
    from pipelines import local_demo
    from pipelines.local import run_local

    with environ(demo_run.env):
        cfg = load_config(local_demo.DEMO_CONFIG, {**DEMO_RUN_SHORTER, **LORA_RUN,
                                                   "storage.root": f"s3://{local_demo.DEMO_BUCKET}/tests-lora"})
        result = run_local(cfg, pipeline_root=tmp_path_factory.mktemp("lora-run-kfp"), run_id="lora-1")
        assert result.release is not None, "the LoRA run published no release"
        merged, adapter = (storage.fetch_dir(storage.join_uri(result.run_root, step)) for step in ("merge", "train"))
    cfg = cfg.model_copy(deep=True)
    cfg.model.base = str(demo_run.assets.model_dir)
    return Trained(uri=result.release["uri"], release=result.release, cfg=cfg,
                   prepared=demo_run.step_dir("prepare"), adapter=adapter, merged=merged,
                   figures={"lora_train_seconds": round(result.step_seconds.get("train", 0.0), 1)})


# ---- the servers -------------------------------------------------------------------------------
def require_tools() -> None:
    venv = Path(os.environ.get("KUBETUNE_VLLM_VENV") or REPO / ".venv-vllm")
    if not (venv / ".installed-vllm").is_file():
        pytest.fail(f"vLLM's CPU build is not installed in {venv}: run `make install` (or `make install-vllm`)",
                    pytrace=False)
    if not (shutil.which("helm") or os.access(REPO / ".venv" / "tools" / "helm", os.X_OK)):
        pytest.fail("helm not found: run `make install` (or `make install-helm`)", pytrace=False)


@pytest.fixture(scope="session")
def servers(trained, lora_trained, serving_env, tmp_path_factory, request):
    """Both vLLM CPU servers, started together through `kubetune serve-local` (one startup per session)."""
    require_tools()
    tmp = tmp_path_factory.mktemp("servers")
    started = time.monotonic()
    env = serving_env.environ()
    found = {"merged": start_serve_local("merged", trained.uri, tmp, env),
             "lora": start_serve_local("lora", lora_trained.uri, tmp, env, LORA_VALUES)}
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
    # Every 200 ms, not every second: on a fast CI machine the merged server's 768-token bursts were over
    # between two 1 s scrapes (three bursts, six 0.25 s polls, all 0), so test_serving_prometheus.py never
    # saw the N requests running together.
    prom = start_prometheus({f"vllm-{name}": s.port for name, s in servers.items()},
                            tmp_path_factory.mktemp("prometheus"), scrape_interval="200ms")
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
