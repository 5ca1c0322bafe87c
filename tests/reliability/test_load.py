"""Load on the served model (issue 18, section 3): many concurrent clients, a kill in the middle of the load,
and a restart from the warm cache, for both servers `kubetune serve-local` runs.

The release is the demo's random tiny Llama (`demo`, tests/conftest.py: built in seconds, no pre-training)
published to the session's SeaweedFS S3 as a real release (load_helpers.publish_tiny_release: merged/ is the
model directory, gguf/ its Q4_K_M GGUF made with llama.cpp's converter and quantizer). Each scenario serves it
with `kubetune serve-local` (the chart's vLLM arguments on vLLM's CPU build, or `--gguf`: llama.cpp's
llama-server) on 127.0.0.1 and a fixed port, with a private $KUBETUNE_CACHE and release directory, while a
real Prometheus (Debian package) scrapes it every second:

1. **Load.** CLIENTS threads, started together, each sending one chat request at a time (a new
   connection each, MAX_TOKENS tokens with ignore_eos, a socket timeout of REQUEST_TIMEOUT s) until
   DURATION s have passed or it has sent MAX_PER_CLIENT (bounded in time and count). Asserted: 0 errors, 0
   timeouts, no client still running at the end; p50/p95 latency are printed and written as JSON (tmp,
   and the pytest cache key `kubetune/load-figures`). Prometheus' stored counters then equal what was
   sent: vLLM's `vllm:request_success_total` = the requests (and `vllm:generation_tokens_total` = requests
   x MAX_TOKENS); llama-server has no request counter, so its `llamacpp:tokens_predicted_total` = requests x
   MAX_TOKENS.
2. **Kill.** The same clients again, each stopping at its first error; once the load is going, the server's
   process group gets SIGKILL (vLLM's API server, engine core and workers at once). Asserted: every client
   ends with a clean connection error (`refused`, `disconnected`: RemoteDisconnected, or `reset`), none
   times out, all end within KILL_GRACE s of the kill (no hang until the timeout), no error before the
   kill, and Prometheus sees the target down.
3. **Restart.** serve-local again with the same release directory, cache and port: serve-local's fetch
   line says 0 files and 0 bytes downloaded and 0 bytes read from S3 (release.json and values.yaml come from
   the content-addressed cache, every model file is verified in place: same inode and mtime), and the
   server answers AFTER_CLIENTS x AFTER_EACH requests with 0 errors, which Prometheus counts from 0 again.

`@pytest.mark.slow` (`make test-slow`): 64 clients for 60 s on each server. `make test` runs only the GGUF
smoke (8 clients for 5 s, then the kill and the restart; llama-server starts in about a second). vLLM's CPU
build takes 40-90 s to start on 2 cores, so no vLLM scenario fits `make test`'s budget.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from load_helpers import (
    CONNECTION_ERRORS,
    MODEL,
    ServingEnv,
    free_port,
    kill_group,
    port_closed,
    post_chat,
    publish_tiny_release,
    record,
    run_load,
    scraped_sum,
    serve_local,
    sigkill_group,
    start_prometheus,
    wait_for,
    wait_healthy,
)

MAX_TOKENS = 16
# Per request (socket timeout). vLLM answered 64 clients in p95 0.7 s, max 1.6 s; llama-server's 4 slots make
# 64 clients queue: p95 9.8 s, max 14 s on 2 cores shared with other work (load average 8). Hence 60 s.
REQUEST_TIMEOUT = 60.0
KILL_LOAD_SECONDS = 30.0  # the kill phase's clients would run this long; the kill comes after a few seconds
KILL_GRACE = 10.0  # every client has its connection error within this long after the SIGKILL
AFTER_CLIENTS, AFTER_EACH = 8, 2
# Prometheus' counters for each server kind: metric -> how many per request.
COUNTERS = {"vllm": {"vllm:request_success_total": 1, "vllm:generation_tokens_total": MAX_TOKENS},
            "gguf": {"llamacpp:tokens_predicted_total": MAX_TOKENS}}


@pytest.fixture(scope="module")
def load_env(s3_server, tmp_path_factory) -> ServingEnv:
    tmp = tmp_path_factory.mktemp("load-env")
    bucket = s3_server.ensure_bucket("kt-load")
    set_vars = {"AWS_CONFIG_FILE": str(tmp / "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-creds"),
                "AWS_EC2_METADATA_DISABLED": "true", **s3_server.env(), "KUBETUNE_CACHE": str(tmp / "publish-cache")}
    return ServingEnv(bucket=bucket, root=f"s3://{bucket}/load", set_vars=set_vars)


@pytest.fixture(scope="module")
def release(load_env, demo, tmp_path_factory) -> str:
    """The release URI of the tiny random model (merged + Q4_K_M GGUF), published once per module."""
    with load_env.active():
        published = publish_tiny_release(demo.model_dir, load_env.root, tmp_path_factory.mktemp("load-release"))
    assert sorted(published.release["artifacts"]) == ["gguf", "merged"]
    return published.uri


def _files(dest: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every fetched part file (release.json and the fetch marker are rewritten each time)."""
    return {str(p.relative_to(dest)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(dest.glob("*/**/*")) if p.is_file()}


def exercise(kind: str, release: str, load_env: ServingEnv, tmp: Path, request, *, clients: int,
             duration: float, max_per_client: int) -> dict:
    """Load, kill, restart (the module docstring): the assertions, and the figures, returned and recorded."""
    port = free_port()
    dest = tmp / "release"
    env = {**load_env.environ(), "KUBETUNE_CACHE": str(tmp / "cache")}
    extra = ["--gguf"] if kind == "gguf" else []
    counters = COUNTERS[kind]
    figures: dict = {"server": kind, "port": port}
    procs = []

    def expr(metric: str) -> str:
        return f'sum({metric}{{job="{kind}"}})'

    try:
        # ---- cold start: everything downloaded from S3 --------------------------------------------------
        server = serve_local(kind, release, port=port, dest=dest, env=env, log=tmp / "serve-1.log", extra_args=extra)
        procs.append(server.proc)
        figures["startup_seconds_cold"] = wait_healthy(server)
        cold = server.fetch_counts()
        assert cold["downloaded"] > 0 and cold["bytes"] > 0 and cold["s3_bytes"] >= cold["bytes"], cold
        figures["fetch_cold"] = cold
        files_before = _files(dest)
        (tmp / "prometheus").mkdir()
        prom = start_prometheus({kind: port}, tmp / "prometheus")
        procs.append(prom.proc)

        # One request first: the counters exist from here on, and no first-request cost is in the latency.
        post_chat(port, {"model": MODEL, "messages": [{"role": "user", "content": "warm up"}],
                         "max_tokens": MAX_TOKENS, "ignore_eos": True}, REQUEST_TIMEOUT, MAX_TOKENS)
        before = {m: wait_for(prom, expr(m), scraped_sum(server.url, m)) for m in counters}

        # ---- 1. load ------------------------------------------------------------------------------------
        load = run_load(port, clients=clients, duration=duration, timeout=REQUEST_TIMEOUT, max_tokens=MAX_TOKENS,
                        max_per_client=max_per_client)
        figures["load"] = load.figures()
        sent = len(load.outcomes)
        assert not load.hung, f"clients still running after the join deadline: {load.hung}"
        assert load.error_kinds() == {}, f"{len(load.errors)} of {sent} requests failed: {load.error_kinds()}"
        assert len(load.client_ended) == clients and sent >= clients
        after = {m: before[m] + sent * per for m, per in counters.items()}
        figures["prometheus"] = {m: {"before": before[m], "after": wait_for(prom, expr(m), after[m]),
                                     "requests_sent": sent} for m in counters}

        # ---- 2. kill in the middle of the load ----------------------------------------------------------
        killed: dict = {}

        def kill(result) -> None:
            until = time.monotonic() + 10
            while len(result.outcomes) < clients and time.monotonic() < until:  # the load is going
                time.sleep(0.05)
            killed["ok_before"] = len(result.outcomes)
            killed["at"] = time.monotonic()
            killed["group_gone_seconds"] = round(sigkill_group(server.proc), 3)

        storm = run_load(port, clients=clients, duration=KILL_LOAD_SECONDS, timeout=REQUEST_TIMEOUT,
                         max_tokens=MAX_TOKENS, max_per_client=max_per_client, stop_on_error=True, during=kill)
        kinds = storm.error_kinds()
        last_error = max(storm.client_ended.values()) - killed["at"]
        figures["kill"] = {"ok_before_kill": len(storm.ok), "errors": kinds, "clients": clients,
                           "group_gone_seconds": killed["group_gone_seconds"],
                           "last_client_done_seconds_after_kill": round(last_error, 3)}
        assert not storm.hung, f"clients hung after the kill: {storm.hung}"
        assert set(kinds) <= set(CONNECTION_ERRORS), f"not clean connection errors: {kinds}"
        errors = storm.errors
        assert len(errors) == clients, f"expected each of {clients} clients to end on one error: {kinds}"
        assert all(o.started + o.seconds >= killed["at"] for o in errors), "an error before the kill"
        assert last_error < KILL_GRACE, f"a client took {last_error:.1f} s after the kill to fail"
        assert len(storm.ok) >= killed["ok_before"] > 0
        assert port_closed(port)
        assert wait_for(prom, f'up{{job="{kind}"}}', 0) == 0

        # ---- 3. restart from the warm cache: nothing downloaded ---------------------------------------
        again = serve_local(kind, release, port=port, dest=dest, env=env, log=tmp / "serve-2.log", extra_args=extra)
        procs.append(again.proc)
        figures["startup_seconds_warm"] = wait_healthy(again)
        warm = again.fetch_counts()
        figures["fetch_warm"] = warm
        assert warm == {"downloaded": 0, "bytes": 0, "reused": cold["downloaded"] + cold["reused"], "s3_bytes": 0}, \
            (warm, again.fetch_line())
        assert _files(dest) == files_before  # verified in place, not rewritten
        resumed = run_load(port, clients=AFTER_CLIENTS, duration=REQUEST_TIMEOUT, timeout=REQUEST_TIMEOUT,
                           max_tokens=MAX_TOKENS, max_per_client=AFTER_EACH)
        assert resumed.error_kinds() == {} and len(resumed.ok) == AFTER_CLIENTS * AFTER_EACH, resumed.error_kinds()
        n = AFTER_CLIENTS * AFTER_EACH
        figures["after_restart"] = {"requests": n,
                                    **{m: wait_for(prom, expr(m), n * per) for m, per in counters.items()}}
        return figures
    finally:
        for proc in reversed(procs):
            kill_group(proc)
        record(request, tmp, f"{kind}-{clients}x{int(duration)}s", figures)


@pytest.mark.slow
def test_vllm_64_clients_60_s_kill_and_warm_restart(release, load_env, tmp_path, request):
    figures = exercise("vllm", release, load_env, tmp_path, request, clients=64, duration=60, max_per_client=2000)
    assert figures["load"]["ok"] >= 64


@pytest.mark.slow
def test_gguf_64_clients_60_s_kill_and_warm_restart(release, load_env, tmp_path, request):
    figures = exercise("gguf", release, load_env, tmp_path, request, clients=64, duration=60, max_per_client=2000)
    assert figures["load"]["ok"] >= 64


def test_gguf_smoke_8_clients_5_s_kill_and_warm_restart(release, load_env, tmp_path, request):
    figures = exercise("gguf", release, load_env, tmp_path, request, clients=8, duration=5, max_per_client=200)
    assert figures["load"]["ok"] >= 8
