"""A real Prometheus (Debian package) scrapes the real vLLM CPU servers every 200 ms; after N requests,
the request counters and the running-requests gauge queried through its HTTP API match N exactly.

Names as stored: Debian's Prometheus 2.42 has no `scrape_protocols` setting (2.49+), so it negotiates
OpenMetrics; vLLM's /metrics still answers in the classic text format there, and the colon names
(`vllm:num_requests_running`, ...) are stored as they are. test_metric_names_as_stored checks it, so a
change (for example `vllm_*` under OpenMetrics escaping, see ENVIRONMENT.md) fails here first.
"""

from __future__ import annotations

import threading
import time

import pytest
from serving_helpers import LORA_NAME, MODEL, conversation, http_text, record_figures, run_concurrently, wait_for

N = 5
# Tokens per request, with ignore_eos: the N requests must run together across at least one 200 ms
# scrape (conftest.prometheus) for Prometheus to store "running" at N. The merged server (compiled, ~3 ms
# a step for this model) needs long generations; the LoRA one runs eagerly, several times slower.
MAX_TOKENS = {"merged": 768, "lora": 160}
MAX_BURSTS = 5
SUCCESS = "vllm:request_success_total"
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
PROMPT = "vllm:prompt_tokens_total"
GENERATION = "vllm:generation_tokens_total"
HTTP = "http_requests_total"
E2E = "vllm:e2e_request_latency_seconds_count"
CHAT = '/v1/chat/completions'


def scraped_sum(url: str, metric: str, must: str = "") -> float | None:
    """The sum of a metric's samples on the server's /metrics right now (None: no such samples yet)."""
    total, seen = 0.0, False
    for line in http_text(url + "/metrics").splitlines():
        if line.startswith(metric + "{") and must in line:
            total += float(line.rsplit(" ", 1)[1])
            seen = True
    return total if seen else None


def burst(prom, server, sel: str, bodies: list[dict]) -> tuple[list[float], list[dict], float]:
    """Send the requests together while polling Prometheus for the running gauge every 50 ms."""
    peaks: list[float] = []
    done = threading.Event()

    def poll_running():
        while not done.is_set():
            peaks.append(prom.value(f"sum({RUNNING}{{{sel}}})") or 0.0)
            time.sleep(0.05)

    poller = threading.Thread(target=poll_running)
    poller.start()
    t0 = time.monotonic()
    try:
        results = run_concurrently(lambda b: server.post("/v1/chat/completions", b), [(b,) for b in bodies])
    finally:
        done.set()
        poller.join(timeout=60)
    return peaks, results, time.monotonic() - t0


def test_metric_names_as_stored(servers, prometheus, trained):
    # A labelled counter (http_requests_total{handler=...}) exists only once a request was served: one
    # short request per server first, so this test does not depend on others having run before it.
    for name, model in (("merged", MODEL), ("lora", LORA_NAME)):
        servers[name].post("/v1/chat/completions", {"model": model, "max_tokens": 2,
                                                    "messages": conversation(trained.prepared, 0)[:-1]})
    deadline = time.monotonic() + 30
    while HTTP not in (names := set(prometheus.names())) and time.monotonic() < deadline:
        time.sleep(0.2)
    for metric in (RUNNING, WAITING, SUCCESS, PROMPT, GENERATION, "vllm:kv_cache_usage_perc",
                   "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
                   "vllm:e2e_request_latency_seconds_bucket", HTTP):
        assert metric in names, f"{metric} is not stored; vllm names stored: {sorted(n for n in names if 'vllm' in n)}"
    assert not {n for n in names if n.startswith("vllm_")}, "OpenMetrics-escaped names were stored"
    # the removed v0 names (the chart must not use them) are not exposed either
    assert "vllm:gpu_cache_usage_perc" not in names and "vllm:time_per_output_token_seconds_bucket" not in names


@pytest.mark.parametrize(("name", "model"), [("merged", MODEL), ("lora", LORA_NAME)])
def test_counts_match_n_requests(name, model, servers, prometheus, trained, request):
    server, sel = servers[name], f'job="vllm-{name}"'
    prom = prometheus
    counters = {SUCCESS: "", PROMPT: "", GENERATION: "", E2E: "", HTTP: f'handler="{CHAT}"'}

    def expr(metric: str) -> str:
        extra = counters[metric]
        return f"sum({metric}{{{sel}{',' + extra if extra else ''}}})"

    # baseline: wait until Prometheus has scraped the server's current values (nothing else calls it now)
    before = {}
    for metric, must in counters.items():
        direct = scraped_sum(server.url, metric, must)
        before[metric] = 0.0 if direct is None else wait_for(prom, expr(metric), direct)
    assert prom.value(f"sum({RUNNING}{{{sel}}})") == 0

    bodies = [{"model": model, "messages": conversation(trained.prepared, i)[:-1], "max_tokens": MAX_TOKENS[name],
               "temperature": 0, "ignore_eos": True} for i in range(N)]
    # N requests at once; again (at most MAX_BURSTS times) only if no 200 ms scrape fell while all N ran,
    # which a fast machine can cause. Every burst counts in the counters below.
    peaks: list[float] = []
    bursts, prompt_tokens, seconds = 0, 0, []
    while bursts < MAX_BURSTS and max(peaks, default=0) < N:
        burst_peaks, results, took = burst(prom, server, sel, bodies)
        bursts += 1
        peaks += burst_peaks
        seconds.append(round(took, 2))
        assert all(r["usage"]["completion_tokens"] == MAX_TOKENS[name] and r["model"] == model for r in results)
        prompt_tokens += sum(r["usage"]["prompt_tokens"] for r in results)
    sent = bursts * N

    after = {SUCCESS: before[SUCCESS] + sent, HTTP: before[HTTP] + sent, PROMPT: before[PROMPT] + prompt_tokens,
             GENERATION: before[GENERATION] + sent * MAX_TOKENS[name], E2E: before[E2E] + sent}
    for metric, want in after.items():
        assert wait_for(prom, expr(metric), want) == want
    length = prom.value(f'sum({SUCCESS}{{{sel},finished_reason="length"}})')
    assert length >= sent  # ignore_eos + max_tokens: each request finished by length
    # the gauge: N running together at the peak (seen live and in the stored series), none after
    assert max(peaks) == N, f"running gauge polled: {peaks}; seconds per burst: {seconds}"
    assert prom.value(f"max_over_time({RUNNING}{{{sel}}}[5m])") == N
    assert wait_for(prom, f"sum({RUNNING}{{{sel}}})", 0) == 0
    assert prom.value(f"sum({WAITING}{{{sel}}})") == 0
    record_figures(request, {f"prometheus_{name}": {
        "requests_at_once": N, "bursts": bursts, "seconds_per_burst": seconds,
        "request_success_total": [before[SUCCESS], after[SUCCESS]],
        "http_requests_total_chat": [before[HTTP], after[HTTP]],
        "prompt_tokens_total": [before[PROMPT], after[PROMPT]],
        "generation_tokens_total": [before[GENERATION], after[GENERATION]],
        "e2e_request_latency_seconds_count": [before[E2E], after[E2E]],
        "num_requests_running_peak": max(peaks), "finished_by_length": length}})
