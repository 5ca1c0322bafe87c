"""Helpers for tests/serving (not in conftest.py: tests import them by module name)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MODEL = "contracts-tiny"
LORA_NAME = "contracts-tiny-lora"
MAX_MODEL_LEN = 1024  # the demo model's max_position_embeddings: room for long test generations
# Values a user gives serve-local (and the chart) to serve the base model with the release's adapter.
LORA_VALUES = {"model": {"source": "base"}, "lora": {"adapters": [{"name": LORA_NAME, "path": "adapter"}],
                                                      "maxLoraRank": 16}}
TRAINED_PREFIX = '{"parties":[{"name":"'
# Startup is 40-90 s on an idle 2-core machine, several minutes when it is shared; bounded all the same.
STARTUP_TIMEOUT = 900
REQUEST_TIMEOUT = 180


# ---- small HTTP helpers ----------------------------------------------------------------------------
def http_json(url: str, body: dict | None = None, timeout: float = REQUEST_TIMEOUT) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def http_text(url: str, timeout: float = 30) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM the process's group (started with start_new_session, so its id is the pid), wait until
    every member is gone (vLLM's engine core and workers too), SIGKILL what is left after `grace`."""
    pgid = proc.pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        proc.poll()
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader: a zombie keeps the group alive
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def log_tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# Variables that would point boto3 somewhere else than the test server (as in tests/conftest.py).
AWS_NOISE = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_MAX_ATTEMPTS",
             "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CA_BUNDLE")


@dataclass
class ServingEnv:
    bucket: str
    root: str
    set_vars: dict

    def environ(self) -> dict:
        """os.environ as the servers get it."""
        env = {k: v for k, v in os.environ.items() if k not in AWS_NOISE}
        return {**env, **self.set_vars}

    @contextlib.contextmanager
    def active(self):
        """This environment in this process, for the block."""
        with pytest.MonkeyPatch.context() as mp:
            for name in AWS_NOISE:
                mp.delenv(name, raising=False)
            for name, value in self.set_vars.items():
                mp.setenv(name, value)
            yield


@dataclass
class Trained:
    uri: str
    release: dict
    cfg: object
    prepared: Path
    adapter: Path
    merged: Path
    figures: dict


def conversation(prepared: Path, index: int = 0) -> list[dict]:
    """A conversation of the prepared test split (system, user, assistant)."""
    lines = (prepared / "test.jsonl").read_text().splitlines()
    return json.loads(lines[index])["messages"]


def record_figures(request, figures: dict) -> None:
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        cache.set("kubetune/serving-figures", {**(cache.get("kubetune/serving-figures", {}) or {}), **figures})
    print(f"\nserving figures: {json.dumps(figures)}", flush=True)


def placeholder_release(s3_env, tmp_path: Path, version: str = "v1"):
    """A published release (merged, adapter, gguf parts; placeholder bytes) with base in its lineage."""
    from components.common.config import config_from_dict
    from components.publish import step as publish

    def write(d: Path, files: dict[str, bytes]) -> Path:
        d.mkdir(parents=True)
        for name, data in files.items():
            (d / name).write_bytes(data)
        return d

    base = write(tmp_path / "base-model", {"config.json": b"{}", "model.safetensors": b"base weights"})
    merged = write(tmp_path / "merged", {"config.json": b"{}", "model.safetensors": b"merged" * 100,
                                        "chat_template.jinja": b"{{ messages }}"})
    adapter = write(tmp_path / "adapter", {"adapter_config.json": b"{}", "adapter_model.safetensors": b"lora"})
    gguf = write(tmp_path / "gguf", {f"{MODEL}-Q8_0.gguf": b"GGUF8", f"{MODEL}-Q4_K_M.gguf": b"GGUF4",
                                     "Modelfile.Q8_0": b"FROM x"})
    eval_dir = write(tmp_path / "eval", {"gate.json": b'{"passed": true}', "eval_results.json": b"{}"})
    cfg = config_from_dict({"model": {"name": MODEL, "base": str(base)}, "data": {"sources": [{"uri": "d.jsonl"}]},
                            "storage": {"root": s3_env.uri("kt")}, "serve": {"max_model_len": 1024}})
    return publish.run(cfg, merged=merged, adapter=adapter, gguf=gguf, eval_dir=eval_dir, run_id="r", version=version)


# ---- the servers -------------------------------------------------------------------------------
@dataclass
class Server:
    name: str
    url: str
    port: int
    proc: subprocess.Popen
    log: Path
    dest: Path
    startup_seconds: float | None = None
    extra: dict = field(default_factory=dict)

    def get(self, path: str) -> dict:
        return http_json(self.url + path)

    def post(self, path: str, body: dict) -> dict:
        return http_json(self.url + path, body)

    def cmdline(self) -> list[str]:
        """The running server's command line (serve-local exec'd into vLLM: same pid)."""
        return Path(f"/proc/{self.proc.pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")


def start_serve_local(name: str, release: str, tmp: Path, env: dict, values: dict | None = None,
                      extra_args: list[str] = ()) -> Server:
    port = free_port()
    dest = tmp / name / MODEL / "v1"
    cmd = [sys.executable, "-m", "pipelines.cli", "serve-local", "--release", release, "--port", str(port),
           "--dest", str(dest), *extra_args]
    if values is not None:
        vf = tmp / f"{name}-values.yaml"
        vf.write_text(yaml.safe_dump(values, sort_keys=False))
        cmd += ["--values", str(vf)]
    log = tmp / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # a group of its own, killed whole
    return Server(name=name, url=f"http://127.0.0.1:{port}", port=port, proc=proc, log=log, dest=dest)


def wait_healthy(servers: list[Server], started: float) -> None:
    pending = list(servers)
    deadline = started + STARTUP_TIMEOUT
    while pending:
        for s in list(pending):
            if s.proc.poll() is not None:
                pytest.fail(f"serve-local {s.name} exited with {s.proc.returncode} before serving:\n{log_tail(s.log)}",
                            pytrace=False)
            try:
                with urllib.request.urlopen(s.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        s.startup_seconds = round(time.monotonic() - started, 1)
                        pending.remove(s)
            except (OSError, urllib.error.URLError):
                pass
        if pending and time.monotonic() > deadline:
            pytest.fail(f"the server did not answer /health within {STARTUP_TIMEOUT} s: "
                        + "; ".join(f"{s.name}:\n{log_tail(s.log)}" for s in pending), pytrace=False)
        if pending:
            time.sleep(1)


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen
    log: Path

    def query(self, expr: str) -> list[dict]:
        body = http_json(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}), timeout=30)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        """The single value of a scalar-like query (None when there is no series)."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr}: expected at most one series, got {result}"
        return float(result[0]["value"][1]) if result else None

    def names(self) -> list[str]:
        return http_json(f"{self.url}/api/v1/label/__name__/values", timeout=30)["data"]


def wait_for(prom: Prometheus, expr: str, want: float, timeout: float = 60) -> float:
    """Poll `expr` until Prometheus returns `want` (a scrape may lag the server by a second or two)."""
    deadline, got = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        got = prom.value(expr)
        if got == want:
            return got
        time.sleep(0.5)
    raise AssertionError(f"{expr}: Prometheus has {got}, expected {want} (waited {timeout} s)")


def start_prometheus(targets: dict[str, int], tmp: Path, scrape_interval: str = "1s") -> Prometheus:
    """A real Prometheus on 127.0.0.1 scraping each 127.0.0.1:<port> every `scrape_interval` (job = the name);
    returned once every target is up. The caller kills its process group."""
    binary = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK)
                                            else None)
    if binary is None:
        pytest.fail("prometheus is not installed: run `make install` (or `make install-prometheus`: the Debian "
                    "package prometheus)", pytrace=False)
    config = {"global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                         "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                                 for job, port in targets.items()]}
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log = tmp / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, f"--config.file={tmp / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                                 "--storage.tsdb.retention.time=1h"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    prom = Prometheus(url=f"http://127.0.0.1:{port}", proc=proc, log=log)
    deadline = time.monotonic() + 60
    while True:
        try:
            ups = prom.query("up")
            if len(ups) == len(targets) and all(r["value"][1] == "1" for r in ups):
                return prom
        except (OSError, urllib.error.URLError, AssertionError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            kill_group(proc)
            pytest.fail(f"prometheus on {prom.url} did not scrape {sorted(targets)} within 60 s:\n{log_tail(log)}",
                        pytrace=False)
        time.sleep(0.5)


def run_concurrently(fn, args_list: list) -> list:
    """fn(*args) for each args in threads started together; the results in order (errors re-raised)."""
    results: list = [None] * len(args_list)
    errors: list = []
    barrier = threading.Barrier(len(args_list))

    def work(i, args):
        try:
            barrier.wait(timeout=30)
            results[i] = fn(*args)
        except Exception as e:  # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i, a)) for i, a in enumerate(args_list)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=REQUEST_TIMEOUT + 60)
    if errors:
        raise errors[0]
    return results
