"""Shared fixtures: a real local S3 server (SeaweedFS), and the benchmark collection rule.

Fixtures:
  s3_server  (session)  a running `LocalS3` on free 127.0.0.1 ports, started on first use.
  s3_env     (function) points the standard AWS environment at s3_server, creates a fresh bucket,
                        isolates $KUBETUNE_CACHE in the test's tmp_path and resets transfer_stats.
                        Yields an `S3Env` (bucket, endpoint, uri(...), client()).
  demo       (session)  the demo assets with a random (not pre-trained) base, kept in the pytest
                        cache between runs (tests/train and tests/quantize have their own).
  torch_threads (session) torch_threads(n): a context manager running its block on n intra-op threads.

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

BENCH_DIR = Path(__file__).resolve().parent / "bench"


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
