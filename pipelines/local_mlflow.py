"""A local, real MLflow tracking server for `kubetune demo` and the tests (tests/tracking).

`mlflow server` from its own venv (`make install-mlflow`: .venv-mlflow, or $KUBETUNE_MLFLOW_VENV), on
127.0.0.1, with a SQLite backend store under data_dir and run artifacts in S3 (the project's
SeaweedFS; the server proxies them, so a client needs no S3 access of its own):

    with LocalMlflow(tmp_dir, artifacts_uri="s3://kubetune-demo/mlflow", s3_env=s3.env()) as server:
        os.environ["MLFLOW_TRACKING_URI"] = server.url
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import suppress
from pathlib import Path

from components.common.errors import KubetuneError
from pipelines.local_s3 import free_ports, log_tail, stop_process_group

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120.0  # the first start creates the SQLite schema (alembic migrations), ~20 s on 2 cores


class MlflowServerError(KubetuneError):
    """The local MLflow server could not be found or started."""


def mlflow_binary() -> Path:
    venv = Path(os.environ.get("KUBETUNE_MLFLOW_VENV") or REPO / ".venv-mlflow")
    binary = venv / "bin" / "mlflow"
    if not binary.is_file():
        raise MlflowServerError(f"{binary}: not found; the MLflow server has its own venv: run `make install` "
                                "(or `make install-mlflow`)")
    return binary


class LocalMlflow:
    """One `mlflow server` process on 127.0.0.1:<port>; its store and log under data_dir."""

    def __init__(self, data_dir: str | os.PathLike, *, artifacts_uri: str, s3_env: dict[str, str],
                 port: int | None = None):
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.artifacts_uri, self.s3_env, self.port = artifacts_uri, dict(s3_env), port
        self.log_path = self.data_dir / "mlflow-server.log"
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> LocalMlflow:
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_ports(1)[0]
        cmd = [str(mlflow_binary()), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{self.data_dir / 'mlflow.db'}",
               "--artifacts-destination", self.artifacts_uri]
        # The server writes artifacts with boto3: the standard AWS environment of the S3 server, and
        # MLflow's own name for the endpoint.
        env = {**os.environ, **self.s3_env, "MLFLOW_S3_ENDPOINT_URL": self.s3_env.get("AWS_ENDPOINT_URL_S3", "")}
        log_file = open(self.log_path, "ab")  # the child keeps its own copy of the fd
        try:
            self._proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=env, start_new_session=True)
        finally:
            log_file.close()
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise MlflowServerError(f"mlflow server exited with code {self._proc.returncode} before it answered "
                                        f"on {self.url}; log {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        log.info("MLflow server ready at %s (store %s, artifacts %s)", self.url, self.data_dir,
                                 self.artifacts_uri)
                        return
            except (urllib.error.URLError, OSError) as e:  # not up yet
                last = e
            time.sleep(0.5)
        raise MlflowServerError(f"MLflow did not answer on {self.url} within {START_TIMEOUT_S:.0f}s (last error: "
                                f"{last}); log {self.log_path}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def kill(self) -> None:
        """SIGKILL the server's whole process group at once: a server that dies, not one that stops."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with suppress(Exception):
            atexit.unregister(self.stop)
        stop_process_group(proc, timeout)  # the group: uvicorn's worker is a child process

    def __enter__(self) -> LocalMlflow:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
