"""Shared fixtures: a real local S3 server (SeaweedFS), and the benchmark collection rule.

Fixtures:
  s3_server  (session)  a running `LocalS3` on free 127.0.0.1 ports, started on first use.
  s3_env     (function) points the standard AWS environment at s3_server, creates a fresh bucket,
                        isolates $KUBETUNE_CACHE in the test's tmp_path and resets transfer_stats.
                        Yields an `S3Env` (bucket, endpoint, uri(...), client()).
  demo       (session)  the demo assets with a random (not pre-trained) base, kept in the pytest
                        cache between runs (tests/train and tests/quantize have their own).
  torch_threads (session) torch_threads(n): a context manager running its block on n intra-op threads.
  mlflow_server (session) a real `mlflow server` (.venv-mlflow) on 127.0.0.1: SQLite store, artifacts
                        in s3_server (bucket kt-mlflow). A `LocalMlflow` (.url, .kill()).
  demo_run   (session)  ONE run of the demo's pipeline (its config, a shorter eval) through the KFP local
                        runner on s3_server, with the demo's own pre-trained assets: its release, its
                        step outputs and its config; tracked in mlflow_server (tests/tracking reads it
                        back). Every test that only reads a fine-tune, a release or a served model uses
                        it (tests/pipelines, tests/eval, tests/serving, tests/tracking), so the suite
                        pre-trains and fine-tunes the demo once.

tests/bench/ (speed and memory figures, not pass/fail) is collected only when it is named on the
command line (`pytest tests/bench`, as `make bench` does), so `make test` never runs it. There,
`bench_*.py` files are collected as test modules too.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from demo_run import DEMO_RUN_MLFLOW_CREDENTIALS, DEMO_RUN_SHORTER, DEMO_RUN_TRACKING, DemoRun, environ

BENCH_DIR = Path(__file__).resolve().parent / "bench"


@pytest.fixture(scope="session")
def demo_run(s3_server, mlflow_server, tmp_path_factory) -> DemoRun:
    import os

    from components.common.config import load_config
    from pipelines import local_demo
    from pipelines.demo.assets import ensure_demo_assets
    from pipelines.local import run_local

    # MLflow credentials that the (unauthenticated) test server ignores: tests/tracking checks that they
    # reach no param, tag or artifact.
    env = {**s3_server.env(), "KUBETUNE_CACHE": str(tmp_path_factory.mktemp("demo-run-cache")),
           **DEMO_RUN_MLFLOW_CREDENTIALS}
    pipeline_root = tmp_path_factory.mktemp("demo-run-kfp")
    with environ(env):
        s3_server.ensure_bucket(local_demo.DEMO_BUCKET)
        # KUBETUNE_TEST_DEMO_DIR: reuse a demo build across sessions (rebuilt only when stale).
        assets = ensure_demo_assets(os.environ.get("KUBETUNE_TEST_DEMO_DIR") or tmp_path_factory.mktemp("demo"))
        local_demo.upload_assets(assets)
        cfg = load_config(local_demo.DEMO_CONFIG, {**DEMO_RUN_SHORTER, **DEMO_RUN_TRACKING,
                                                   "storage.root": f"s3://{local_demo.DEMO_BUCKET}/tests",
                                                   "tracking.mlflow_uri": mlflow_server.url})
        result = run_local(cfg, pipeline_root=pipeline_root, run_id="e2e-1")
    return DemoRun(cfg=cfg, result=result, assets=assets, pipeline_root=pipeline_root, env=env,
                   mlflow_url=mlflow_server.url)


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory):
    """One real MLflow tracking server for the session (about 10 s to start)."""
    from pipelines.local_mlflow import LocalMlflow

    bucket = s3_server.ensure_bucket("kt-mlflow")
    server = LocalMlflow(tmp_path_factory.mktemp("mlflow"), artifacts_uri=f"s3://{bucket}/artifacts",
                         s3_env=s3_server.env())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def demo(request, tmp_path_factory):
    """The demo assets with a random (not pre-trained) base, kept in the pytest cache between runs."""
    from pipelines.demo.assets import ensure_demo_assets

    cache = getattr(request.config, "cache", None)
    root = cache.mkdir("kubetune-demo-p0") if cache is not None else tmp_path_factory.mktemp("demo")
    return ensure_demo_assets(root, pretrain_steps=0, progress=False)


@contextlib.contextmanager
def _torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def torch_threads():
    """`with torch_threads(1):` on a shared 2-core machine, OpenMP threads spin-waiting on each other make
    tiny-model forwards ~10x slower than a single thread; tests of the tiny model run on one."""
    return _torch_threads


def _under_bench(path: Path) -> bool:
    return path == BENCH_DIR or BENCH_DIR in path.parents


def _bench_requested(config) -> bool:
    base = Path(config.invocation_params.dir)
    return any(_under_bench((base / arg.split("::")[0]).resolve()) for arg in config.args)


def pytest_ignore_collect(collection_path, config):
    if _under_bench(Path(collection_path).resolve()) and not _bench_requested(config):
        return True
    return None


def pytest_collect_file(file_path, parent):
    path = Path(file_path)
    if parent.session.isinitpath(path):  # named on the command line: pytest collects it anyway
        return None
    if path.suffix == ".py" and path.name.startswith("bench_") and _under_bench(path.resolve().parent):
        return pytest.Module.from_parent(parent, path=path)
    return None


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One real SeaweedFS S3 server for the whole session (about 1 s to start, ~850 MB RSS)."""
    from pipelines.local_s3 import LocalS3

    server = LocalS3(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@dataclass
class S3Env:
    server: object
    bucket: str
    env: dict = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def uri(self, *parts: str) -> str:
        """s3://<bucket>/<parts joined by />"""
        return "/".join([f"s3://{self.bucket}", *(p.strip("/") for p in parts)])

    def client(self):
        return self.server.client()


# Variables that would point boto3 somewhere else than the test server.
_AWS_NOISE = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_MAX_ATTEMPTS",
              "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CA_BUNDLE")


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path) -> Iterator[S3Env]:
    """The AWS environment of s3_server for this test, with a fresh bucket and a private cache."""
    from components.common import storage

    for name in _AWS_NOISE:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    env = s3_server.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "kubetune-cache"))
    bucket = s3_server.ensure_bucket(f"kt-{uuid.uuid4().hex[:12]}")
    storage.transfer_stats.reset()
    yield S3Env(server=s3_server, bucket=bucket, env=env)
    # Give the bucket's volume back: the session's one server has a fixed number of them.
    s3_server.delete_bucket(bucket)


# ---- phase times: how long each test folder took (setup, call and teardown), printed at the end ----
_FOLDER_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    parts = Path(report.nodeid.split("::")[0]).parts
    folder = "/".join(parts[:2]) if len(parts) > 2 else parts[0]
    _FOLDER_SECONDS[folder] = _FOLDER_SECONDS.get(folder, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    """One line per test folder, slowest first, so that the next slowdown is visible in CI's log (a
    session fixture's cost counts in the folder of the first test that uses it)."""
    if not _FOLDER_SECONDS:
        return
    terminalreporter.section("phase times (seconds per test folder)")
    for folder, seconds in sorted(_FOLDER_SECONDS.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{seconds:8.1f}  {folder}")
    terminalreporter.write_line(f"{sum(_FOLDER_SECONDS.values()):8.1f}  all tests")
