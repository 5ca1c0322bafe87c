"""`kubetune serve-local --gguf`: llama.cpp's own llama-server (built by `make install-llama-server`) serves
the session release's GGUF file, answers in the trained format with the trained chat template, and a real
Prometheus (Debian package) scraping its /metrics (--metrics) stores token counters that match the requests.

llama-server's metrics are `llamacpp:*`: it has no request counter, so the counters checked are the tokens
(`tokens_predicted_total` against the sum of the responses' completion tokens, and `prompt_tokens_total`
plus `prompt_tokens_cached_total` against their prompt tokens), and the gauge is `requests_processing`, back
at 0 afterwards. The demo model answers 4 requests in well under the 1 s scrape interval, so unlike the
vLLM test no scrape can see them running.
"""

from __future__ import annotations

import time
from pathlib import Path

from serving_helpers import (
    MODEL,
    TRAINED_PREFIX,
    conversation,
    http_text,
    record_figures,
    run_concurrently,
    wait_for,
)

from components.common.storage import sha256_file

N = 4  # llama-server's default: 4 request slots
MAX_TOKENS = 64
PREDICTED = "llamacpp:tokens_predicted_total"
PROMPT = "llamacpp:prompt_tokens_total"
CACHED = "llamacpp:prompt_tokens_cached_total"
PROCESSING = "llamacpp:requests_processing"


def scraped(url: str, metric: str) -> float:
    """The metric's value on the server's /metrics right now."""
    for line in http_text(url + "/metrics").splitlines():
        if line.startswith(metric + " "):
            return float(line.split(" ", 1)[1])
    raise AssertionError(f"{metric} is not on {url}/metrics")


def test_running_server_is_llama_server_on_the_release_gguf(gguf_server, trained):
    cmd = gguf_server.cmdline()  # serve-local exec'd into llama-server: same pid
    assert Path(cmd[0]).name == "llama-server" and "--metrics" in cmd and "--jinja" in cmd
    model = Path(cmd[cmd.index("--model") + 1])
    assert model == gguf_server.dest / "gguf" / f"{MODEL}-Q4_K_M.gguf"  # the preferred type
    # the file served is the release's, byte for byte (fetch checked it; checked again here)
    entry = next(f for f in trained.release["artifacts"]["gguf"]["files"] if f["path"] == model.name)
    assert sha256_file(model) == entry["sha256"]
    assert cmd[cmd.index("--alias") + 1] == MODEL and cmd[cmd.index("--ctx-size") + 1] == "1024"


def test_models_lists_the_served_name(gguf_server):
    assert [m["id"] for m in gguf_server.get("/v1/models")["data"]] == [MODEL]


def test_chat_completion_answers_in_the_trained_format(gguf_server, trained, request):
    messages = conversation(trained.prepared)[:-1]  # system + user of a held-out conversation
    body = {"model": MODEL, "messages": messages, "max_tokens": 48, "temperature": 0}
    t0 = time.monotonic()
    r = gguf_server.post("/v1/chat/completions", body)
    latency = time.monotonic() - t0
    content = r["choices"][0]["message"]["content"]
    assert content.startswith(TRAINED_PREFIX), content
    assert "<|im_end|>" not in content and "<|im_start|>" not in content
    assert r["model"] == MODEL and 0 < r["usage"]["completion_tokens"] <= 48
    record_figures(request, {"gguf_latency_seconds_48_tokens": round(latency, 3),
                             "gguf_completion_tokens": r["usage"]["completion_tokens"], "gguf_sample_answer": content})


def test_token_counters_in_prometheus_match_the_requests(gguf_server, gguf_prometheus, trained, request):
    prom, url = gguf_prometheus, gguf_server.url
    counters = (PREDICTED, PROMPT, CACHED)
    # baseline: Prometheus has scraped the server's current values (nothing else calls it now)
    before = {m: wait_for(prom, m, scraped(url, m)) for m in counters}
    assert prom.value(PROCESSING) == 0

    bodies = [{"model": MODEL, "messages": conversation(trained.prepared, i)[:-1], "max_tokens": MAX_TOKENS,
               "temperature": 0, "ignore_eos": True} for i in range(N)]
    t0 = time.monotonic()
    results = run_concurrently(lambda b: gguf_server.post("/v1/chat/completions", b), [(b,) for b in bodies])
    took = time.monotonic() - t0
    assert all(r["usage"]["completion_tokens"] == MAX_TOKENS for r in results), [r["usage"] for r in results]
    prompt_tokens = sum(r["usage"]["prompt_tokens"] for r in results)

    want_predicted = before[PREDICTED] + N * MAX_TOKENS
    assert wait_for(prom, PREDICTED, want_predicted) == want_predicted
    # every prompt token was either computed or taken from the slot's cache
    want_prompt = before[PROMPT] + before[CACHED] + prompt_tokens
    assert wait_for(prom, f"{PROMPT} + {CACHED}", want_prompt) == want_prompt
    assert wait_for(prom, PROCESSING, 0) == 0
    record_figures(request, {"prometheus_gguf": {
        "requests_at_once": N, "seconds": round(took, 2),
        "tokens_predicted_total": [before[PREDICTED], want_predicted],
        "prompt_tokens_total_plus_cached": [before[PROMPT] + before[CACHED], want_prompt]}})
