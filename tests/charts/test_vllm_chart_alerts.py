"""The PrometheusRule: promtool checks the rendered rules and runs the chart's unit tests of the alerts
(charts/vllm/tests/alerts_test.yaml); only vLLM's current v1 metric names appear in the chart."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

RULES_FILE = "vllm-rules.yaml"  # the name alerts_test.yaml's rule_files expects
ALERTS = {"VLLMRequestErrorRateHigh", "VLLMHTTPServerErrorRateHigh", "VLLMRequestQueueGrowing",
          "VLLMTimeToFirstTokenHigh", "VLLMInterTokenLatencyHigh", "VLLMKVCacheNearlyFull",
          "VLLMPodDown", "VLLMNoPodUp"}
# v0 names that vLLM's v1 engine removed (or renamed): none may appear in the chart. Checked against
# vLLM 0.32's vllm/v1/metrics (kv_cache_usage_perc and inter_token_latency_seconds replace the first
# and third).
REMOVED = ["gpu_cache_usage_perc", "cpu_cache_usage_perc", "time_per_output_token_seconds",
           "num_requests_swapped", "gpu_prefix_cache_hit_rate", "cpu_prefix_cache_hit_rate",
           "avg_prompt_throughput_toks_per_s", "avg_generation_throughput_toks_per_s"]
# vLLM v1 metrics the chart may use (the histograms with their _bucket series).
V1 = {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
      "vllm:request_success_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
      "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
      "vllm:e2e_request_latency_seconds_bucket", "vllm:time_to_first_token_seconds",
      "vllm:inter_token_latency_seconds", "vllm:e2e_request_latency_seconds"}
RULES_ON = {"metrics": {"prometheusRule": {"enabled": True}}}


def _rules(chart, **prometheus_rule) -> dict:
    values = {"metrics": {"prometheusRule": {"enabled": True, **prometheus_rule}}}
    return chart.one(chart.render(values), "PrometheusRule")["spec"]


def _alerts(spec) -> dict[str, dict]:
    return {r["alert"]: r for g in spec["groups"] for r in g["rules"]}


def _promtool(promtool, *args, cwd):
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_every_alert_is_rendered(chart):
    assert set(_alerts(_rules(chart))) == ALERTS


def test_promtool_checks_the_rules(chart, promtool, tmp_path):
    for files in ((), ("all-features-values.yaml",)):
        spec = chart.one(chart.render(RULES_ON, *files), "PrometheusRule")["spec"]
        (tmp_path / RULES_FILE).write_text(yaml.safe_dump(spec, sort_keys=False))
        proc = _promtool(promtool, "check", "rules", RULES_FILE, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"SUCCESS: {len(ALERTS)} rules found" in proc.stdout


def test_promtool_unit_tests_of_the_alerts(chart, promtool, tmp_path):
    (tmp_path / RULES_FILE).write_text(yaml.safe_dump(_rules(chart), sort_keys=False))
    shutil.copy(chart.dir / "tests" / "alerts_test.yaml", tmp_path)
    proc = _promtool(promtool, "test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tested = set(re.findall(r"alertname: (\w+)", (chart.dir / "tests" / "alerts_test.yaml").read_text()))
    assert tested == ALERTS, f"alerts without a unit test: {ALERTS - tested}"


def test_unit_tests_fail_when_a_threshold_moves(chart, promtool, tmp_path):
    """The unit tests pin the default thresholds: raising the queue threshold breaks them."""
    spec = _rules(chart, alerts={"queue": {"threshold": 30}})
    (tmp_path / RULES_FILE).write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy(chart.dir / "tests" / "alerts_test.yaml", tmp_path)
    proc = _promtool(promtool, "test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert proc.returncode != 0 and "VLLMRequestQueueGrowing" in proc.stdout + proc.stderr


def test_thresholds_and_switches_come_from_values(chart):
    spec = _rules(chart, rateWindow="2m", alerts={
        "queue": {"threshold": 42, "for": "3m", "severity": "critical"},
        "kvCache": {"threshold": 0.9},
        "timeToFirstToken": {"thresholdSeconds": 1.5},
        "interTokenLatency": {"enabled": False},
        "podDown": {"enabled": False},
    })
    alerts = _alerts(spec)
    assert set(alerts) == ALERTS - {"VLLMInterTokenLatencyHigh", "VLLMPodDown", "VLLMNoPodUp"}
    queue = alerts["VLLMRequestQueueGrowing"]
    assert queue["expr"].rstrip().endswith("> 42") and queue["for"] == "3m"
    assert queue["labels"]["severity"] == "critical"
    assert alerts["VLLMKVCacheNearlyFull"]["expr"].rstrip().endswith("> 0.9")
    assert "> 1.5" in alerts["VLLMTimeToFirstTokenHigh"]["expr"]
    assert "[2m]" in alerts["VLLMRequestErrorRateHigh"]["expr"]


def test_rules_select_this_deployment(chart):
    for rule in _alerts(_rules(chart)).values():
        assert f'namespace="{chart.namespace}",job="{chart.fullname}"' in rule["expr"], rule["alert"]
    custom = _alerts(_rules(chart, selector='service="llm"'))
    assert all('{service="llm"' in r["expr"] for r in custom.values())


def test_alerts_use_the_named_v1_metrics(chart):
    alerts = _alerts(_rules(chart))
    expect = {
        "VLLMRequestErrorRateHigh": "vllm:request_success_total",
        "VLLMRequestQueueGrowing": "vllm:num_requests_waiting",
        "VLLMTimeToFirstTokenHigh": "vllm:time_to_first_token_seconds_bucket",
        "VLLMInterTokenLatencyHigh": "vllm:inter_token_latency_seconds_bucket",
        "VLLMKVCacheNearlyFull": "vllm:kv_cache_usage_perc",
    }
    for alert, metric in expect.items():
        assert metric in alerts[alert]["expr"], alert
    assert "histogram_quantile(0.95" in alerts["VLLMTimeToFirstTokenHigh"]["expr"]
    assert "histogram_quantile(0.95" in alerts["VLLMInterTokenLatencyHigh"]["expr"]


def _chart_files(chart):
    return [p for p in chart.dir.rglob("*") if p.is_file()]


@pytest.mark.parametrize("name", REMOVED)
def test_no_removed_metric_name_anywhere_in_the_chart(chart, name):
    # Whole names only: vllm:request_time_per_output_token_seconds is a current metric.
    pattern = re.compile(rf"(?<![A-Za-z0-9_]){name}")
    hits = [str(p.relative_to(chart.dir)) for p in _chart_files(chart)
            if pattern.search(p.read_text(errors="replace"))]
    assert not hits, f"{name} (removed from vLLM) appears in {hits}"


def test_only_known_v1_metrics_are_queried(chart):
    """Catches typos: every vllm:* series in the rendered rules, dashboard and scaler is a v1 metric."""
    values = {"metrics": {"prometheusRule": {"enabled": True}, "dashboard": {"enabled": True}},
              "autoscaling": {"enabled": True, "kind": "keda"}}
    proc = chart.template_raw(values)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    used = set(re.findall(r"vllm:[a-z0-9_]+", text))
    assert used, "no vllm:* metric rendered"
    unknown = used - V1
    assert not unknown, f"not vLLM v1 metrics: {unknown}"
