"""Helpers for tests/reliability/test_load.py: a release of the tiny demo model, `kubetune serve-local` on a
fixed port (so that a restart answers where the clients and Prometheus look), and a bounded load generator.

The servers, Prometheus and the small HTTP helpers are tests/serving's (serving_helpers.py), imported from
there: serve-local, kill_group, start_prometheus and wait_for behave here as they do in tests/serving.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from serving_helpers import (  # noqa: E402 - the path above first
    MAX_MODEL_LEN,
    MODEL,
    REPO,
    STARTUP_TIMEOUT,
    ServingEnv,
    free_port,
    kill_group,
    log_tail,
    start_prometheus,
    wait_for,
)

__all__ = ["MAX_MODEL_LEN", "MODEL", "REPO", "ServingEnv", "free_port", "kill_group", "start_prometheus",
           "wait_for"]

# Errors a client may get from a server that was killed: a request in flight sees the connection closed
# (RemoteDisconnected, or a reset), a later one finds nothing listening (refused). Anything else (a timeout,
# an HTTP error, a malformed body) is a failure.
CONNECTION_ERRORS = ("refused", "disconnected", "reset")


# ---- a release of the tiny demo model (merged + gguf), published to the test S3 ---------------------
def publish_tiny_release(model_dir: Path, root: str, work: Path, version: str = "v1"):
    """The demo's random tiny Llama as a release: merged/ = the model directory itself, gguf/ = its Q4_K_M
    GGUF (llama.cpp's converter to F16, then llama_model_quantize), and a passed gate. Needs the AWS
    environment of the S3 server active in this process."""
    from components.common.config import config_from_dict
    from components.publish import step as publish
    from components.quantize import convert, native

    gguf = work / "gguf"
    gguf.mkdir(parents=True)
    f16 = convert.convert(model_dir, work / f"{MODEL}-F16.gguf", "f16", timeout=600).path
    native.quantize(f16, gguf / f"{MODEL}-Q4_K_M.gguf", "Q4_K_M", nthread=1)
    eval_dir = work / "eval"
    eval_dir.mkdir()
    (eval_dir / "gate.json").write_text(json.dumps({"passed": True, "reason": "load test release"}))
    (eval_dir / "eval_results.json").write_text("{}")
    cfg = config_from_dict({"model": {"name": MODEL, "base": str(model_dir)},
                            "data": {"sources": [{"uri": "unused.jsonl"}]},
                            "storage": {"root": root}, "serve": {"max_model_len": MAX_MODEL_LEN}})
    return publish.run(cfg, merged=model_dir, gguf=gguf, eval_dir=eval_dir, run_id="load", version=version)


# ---- serve-local on a fixed port ---------------------------------------------------------------------
@dataclass
class Served:
    """One `kubetune serve-local` process (serve-local exec's into the server: same pid, own group)."""

    name: str
    port: int
    proc: subprocess.Popen
    log: Path
    dest: Path
    startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fetch_line(self) -> str:
        """serve-local's line about the fetch: files downloaded, already present, bytes from S3."""
        found = [ln for ln in self.log.read_text(errors="replace").splitlines()
                 if ln.startswith("serve-local: ") and "file(s) downloaded" in ln]
        assert len(found) == 1, f"{self.name}: expected one fetch line in {self.log}:\n{log_tail(self.log)}"
        return found[0]

    def fetch_counts(self) -> dict:
        line = self.fetch_line()
        m = re.search(r"\((\d+) file\(s\) downloaded \((\d+) bytes\), (\d+) already present, all verified; "
                      r"(\d+) bytes read from S3\)", line)
        assert m, f"{self.name}: unexpected fetch line: {line}"
        return dict(zip(("downloaded", "bytes", "reused", "s3_bytes"), map(int, m.groups()), strict=True))


def serve_local(name: str, release: str, *, port: int, dest: Path, env: dict, log: Path,
                extra_args: list[str] = ()) -> Served:
    cmd = [sys.executable, "-m", "pipelines.cli", "serve-local", "--release", release, "--port", str(port),
           "--dest", str(dest), *extra_args]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # its own group, killed whole
    return Served(name=name, port=port, proc=proc, log=log, dest=dest)


def wait_healthy(server: Served, timeout: float = STARTUP_TIMEOUT) -> float:
    """Seconds until /health answers 200 (fails the test if the process exits or the time runs out)."""
    started = time.monotonic()
    while True:
        if server.proc.poll() is not None:
            pytest.fail(f"serve-local {server.name} exited with {server.proc.returncode} before serving:\n"
                        f"{log_tail(server.log)}", pytrace=False)
        try:
            with urllib.request.urlopen(server.url + "/health", timeout=5) as r:
                if r.status == 200:
                    server.startup_seconds = round(time.monotonic() - started, 1)
                    return server.startup_seconds
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() - started > timeout:
            pytest.fail(f"serve-local {server.name} did not answer /health within {timeout} s:\n"
                        f"{log_tail(server.log)}", pytrace=False)
        time.sleep(0.5)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def sigkill_group(proc: subprocess.Popen, timeout: float = 30) -> float:
    """SIGKILL the server's whole process group (vLLM's API server, engine core and workers) and wait until
    every member is gone; the seconds that took."""
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGKILL)
    while group_alive(proc.pid):
        proc.poll()  # reap the leader: a zombie keeps the group alive
        if time.monotonic() - started > timeout:
            raise AssertionError(f"process group {proc.pid} still alive {timeout} s after SIGKILL")
        time.sleep(0.05)
    proc.wait(timeout=10)
    return time.monotonic() - started


def port_closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


# ---- the load generator ---------------------------------------------------------------------------------
def chat_body(client: int, i: int, max_tokens: int) -> dict:
    """A short chat request, a different prompt per client and request; ignore_eos makes every answer
    exactly max_tokens long, so the token counters are exact too."""
    return {"model": MODEL, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "messages": [{"role": "system", "content": "Extract the parties of the contract as JSON."},
                         {"role": "user", "content": f"Client {client}, request {i}: this agreement is made "
                                                     f"between Acme Ltd ({i}) and Beta GmbH ({client})."}]}


def classify(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, http.client.RemoteDisconnected):  # before ConnectionResetError: it is one
        return "disconnected"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    return f"{type(exc).__name__}: {exc}"


def post_chat(port: int, body: dict, timeout: float, max_tokens: int) -> None:
    """One request on a new connection; raises on anything but a 200 with max_tokens completion tokens."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise BadResponse(f"HTTP {resp.status}: {data[:200]!r}")
    try:
        answer = json.loads(data)
        tokens = answer["usage"]["completion_tokens"]
        answer["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise BadResponse(f"malformed response ({e!r}): {data[:200]!r}") from None
    if tokens != max_tokens:
        raise BadResponse(f"{tokens} completion tokens, expected {max_tokens}")


class BadResponse(Exception):
    pass


@dataclass
class Outcome:
    client: int
    started: float  # time.monotonic()
    seconds: float
    error: str | None = None  # None: a 200 with the expected answer; else classify()'s kind


@dataclass
class LoadResult:
    clients: int
    duration: float
    timeout: float
    outcomes: list[Outcome] = field(default_factory=list)
    client_ended: dict[int, float] = field(default_factory=dict)  # client -> time.monotonic() it stopped
    hung: list[int] = field(default_factory=list)  # clients still running after the join deadline
    started: float = 0.0
    wall_seconds: float = 0.0

    @property
    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error is None]

    @property
    def errors(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error is not None]

    def error_kinds(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for o in self.errors:
            kinds[o.error] = kinds.get(o.error, 0) + 1
        return kinds

    def latency(self, q: float) -> float:
        """The q-quantile (nearest rank) of the successful requests' latency, in seconds."""
        values = sorted(o.seconds for o in self.ok)
        assert values, "no successful request"
        return values[min(len(values) - 1, max(0, round(q * len(values) + 0.5) - 1))]

    def figures(self) -> dict:
        ok = self.ok
        return {"clients": self.clients, "duration_seconds": self.duration, "request_timeout_seconds": self.timeout,
                "wall_seconds": round(self.wall_seconds, 2), "requests": len(self.outcomes), "ok": len(ok),
                "errors": len(self.errors), "error_kinds": self.error_kinds(),
                "timeouts": self.error_kinds().get("timeout", 0),
                "requests_per_second": round(len(ok) / self.wall_seconds, 2) if self.wall_seconds else None,
                "latency_p50_seconds": round(self.latency(0.50), 4) if ok else None,
                "latency_p95_seconds": round(self.latency(0.95), 4) if ok else None,
                "latency_max_seconds": round(max(o.seconds for o in ok), 4) if ok else None,
                # the 5 slowest: (seconds into the run when sent, latency), to tell a warm-up from a stall
                "slowest": [(round(o.started - self.started, 2), round(o.seconds, 3))
                            for o in sorted(ok, key=lambda o: -o.seconds)[:5]]}


def run_load(port: int, *, clients: int, duration: float, timeout: float, max_tokens: int,
             max_per_client: int, stop_on_error: bool = False, during=None) -> LoadResult:
    """`clients` threads, started together, each sending one chat request at a time on a new connection
    until `duration` seconds have passed or it has sent `max_per_client` (bounded in time and count), each
    request with a socket timeout of `timeout` seconds. With stop_on_error a client stops at its first error
    (a killed server). `during(result)`, if given, runs in this thread once the clients are going (the kill);
    the clients are joined afterwards, for at most duration + timeout + 30 s."""
    result = LoadResult(clients=clients, duration=duration, timeout=timeout)
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        barrier.wait(timeout=60)
        deadline = result.started + duration
        sent = 0
        try:
            while sent < max_per_client and time.monotonic() < deadline:
                t0 = time.monotonic()
                error = None
                try:
                    post_chat(port, chat_body(c, sent, max_tokens), timeout, max_tokens)
                except Exception as e:  # noqa: BLE001 - every failure is recorded and asserted on
                    error = classify(e)
                sent += 1
                with lock:
                    result.outcomes.append(Outcome(c, t0, time.monotonic() - t0, error))
                if error is not None and stop_on_error:
                    break
        finally:
            with lock:
                result.client_ended[c] = time.monotonic()

    threads = [threading.Thread(target=client, args=(c,), daemon=True, name=f"load-{c}") for c in range(clients)]
    for t in threads:
        t.start()
    result.started = time.monotonic()
    barrier.wait(timeout=60)
    if during is not None:
        during(result)
    join_deadline = result.started + duration + timeout + 30
    for t in threads:
        t.join(timeout=max(0.0, join_deadline - time.monotonic()))
    result.hung = [c for c, t in enumerate(threads) if t.is_alive()]
    result.wall_seconds = max(result.client_ended.values(), default=time.monotonic()) - result.started
    return result


# ---- Prometheus -----------------------------------------------------------------------------------------
def scraped_sum(url: str, metric: str) -> float:
    """The sum of a metric's samples on the server's /metrics right now (0 when it has none yet)."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith((metric + "{", metric + " ")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def record(request, tmp: Path, name: str, figures: dict) -> Path:
    """The figures as JSON under tmp, in the pytest cache (kubetune/load-figures) and on stdout."""
    path = tmp / f"load-{name}.json"
    path.write_text(json.dumps(figures, indent=2))
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        cache.set("kubetune/load-figures", {**(cache.get("kubetune/load-figures", {}) or {}), name: figures})
    print(f"\nload figures {name} ({path}): {json.dumps(figures)}", flush=True)
    return path
