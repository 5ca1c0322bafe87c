"""charts/vllm renders, lints and validates: defaults, every optional feature, HPA and KEDA."""

from __future__ import annotations

import json
import tarfile

import kubernetes_validate
import pytest

# Custom resources: kubernetes-validate has no schema for them; they must parse with these kinds.
CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}
KEDA = {"autoscaling": {"kind": "keda"}}
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas bundled.
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version() + ".0"]
VARIANTS = {
    "default": ((), None),
    "all-features-hpa": (("all-features-values.yaml",), None),
    "all-features-keda": (("all-features-values.yaml",), KEDA),
}


def _lint_ok(proc) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "[ERROR]" not in out and "[WARNING]" not in out, out


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_strict(chart, variant):
    files, values = VARIANTS[variant]
    _lint_ok(chart.lint(values, *files))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("k8s", K8S_VERSIONS)
def test_rendered_objects_validate_strictly(chart, variant, k8s):
    files, values = VARIANTS[variant]
    docs = chart.render(values, *files)
    assert docs
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CRDS:
            assert doc["metadata"]["name"] and doc["spec"], key
            continue
        try:
            kubernetes_validate.validate(doc, k8s, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']} is invalid for Kubernetes {k8s}: "
                        f"{e.message} at {'.'.join(map(str, e.path))}")


def test_defaults_render_only_what_needs_no_crd(chart):
    docs = chart.render()
    assert chart.kinds(docs) == ["Deployment", "Pod", "PodDisruptionBudget", "Service", "ServiceAccount"]
    assert chart.one(docs, "Deployment")["spec"]["replicas"] == 1
    for doc in docs:
        assert doc["metadata"]["namespace"] == chart.namespace


def test_every_optional_feature_renders(chart):
    docs = chart.render(None, "all-features-values.yaml")
    assert chart.kinds(docs) == sorted([
        "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy", "Pod",
        "PodDisruptionBudget", "PrometheusRule", "Service", "ServiceAccount", "ServiceMonitor"])
    keda = chart.render(KEDA, "all-features-values.yaml")
    assert "ScaledObject" in chart.kinds(keda) and "HorizontalPodAutoscaler" not in chart.kinds(keda)
    for d in (docs, keda):
        # The autoscaler owns the replica count: a GitOps sync must not reset it.
        assert "replicas" not in chart.one(d, "Deployment")["spec"]


def test_custom_resources_have_the_right_api(chart):
    docs = chart.render(None, "all-features-values.yaml") + chart.render(KEDA, "all-features-values.yaml")
    found = {(d["apiVersion"], d["kind"]) for d in docs}
    assert CRDS <= found


def test_hpa_scales_the_deployment_on_the_queue(chart):
    hpa = chart.one(chart.render({"autoscaling": {"enabled": True, "maxReplicas": 3}}),
                    "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": chart.fullname}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 3)
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "vllm:num_requests_waiting"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "5"}


def test_keda_scaledobject_queries_the_queue_of_this_deployment(chart):
    so = chart.one(chart.render({"autoscaling": {"enabled": True, "kind": "keda", "targetQueueLength": 3}}),
                   "ScaledObject")["spec"]
    assert so["scaleTargetRef"]["name"] == chart.fullname
    (trigger,) = so["triggers"]
    assert trigger["type"] == "prometheus"
    md = trigger["metadata"]
    selector = f'namespace="{chart.namespace}",job="{chart.fullname}"'
    assert md["query"] == f"sum(vllm:num_requests_waiting{{{selector}}})"
    assert md["threshold"] == "3"
    assert all(isinstance(v, str) for v in md.values()), "KEDA trigger metadata must be strings"


def test_autoscaling_is_off_by_default_and_kinds_are_exclusive(chart):
    kinds = chart.kinds(chart.render())
    assert "HorizontalPodAutoscaler" not in kinds and "ScaledObject" not in kinds


def test_service_and_servicemonitor_use_the_named_port(chart):
    docs = chart.render(None, "all-features-values.yaml")
    svc = chart.one(docs, "Service")
    (port,) = svc["spec"]["ports"]
    assert port["name"] == "http" and port["targetPort"] == "http"
    container_ports = chart.container(docs)["ports"]
    assert container_ports == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    sm = chart.one(docs, "ServiceMonitor")["spec"]
    assert sm["endpoints"][0]["port"] == "http" and sm["endpoints"][0]["path"] == "/metrics"
    # The selector must match the Service's labels.
    assert sm["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    # vllm:* names are only kept by the classic text format (OpenMetrics would store vllm_*).
    assert sm["scrapeProtocols"] == ["PrometheusText0.0.4"]
    assert chart.one(docs, "ServiceMonitor")["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboard_configmap_has_the_sidecar_label_and_valid_json(chart):
    values = {"metrics": {"dashboard": {"enabled": True, "labels": {"grafana_dashboard": "0"}}}}
    cm = chart.one(chart.render(values), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["vllm.json"])
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    for metric in ("vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                   "vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
                   "vllm:request_success_total"):
        assert any(metric in e for e in exprs), metric
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_network_policy_admits_only_selected_peers_scraper_and_helm_test(chart):
    docs = chart.render(None, "all-features-values.yaml")
    np = chart.one(docs, "NetworkPolicy")["spec"]
    dep = chart.one(docs, "Deployment")
    assert np["podSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert np["policyTypes"] == ["Ingress"]
    peers = [r["from"] for r in np["ingress"]]
    assert peers[0] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}},
                        {"podSelector": {"matchLabels": {"app": "chat-frontend"}}}]
    assert peers[1] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                         "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
    test_pod_labels = chart.test_pod(docs)["metadata"]["labels"]
    assert peers[2][0]["podSelector"]["matchLabels"].items() <= test_pod_labels.items()
    for rule in np["ingress"]:
        assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    # No peers configured: only the scraper and the helm test get in.
    minimal = chart.one(chart.render({"networkPolicy": {"enabled": True}}), "NetworkPolicy")["spec"]
    assert len(minimal["ingress"]) == 2


def test_helm_test_pod_is_not_adopted_by_the_deployment(chart):
    docs = chart.render()
    selector = chart.one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    labels = chart.test_pod(docs)["metadata"]["labels"]
    assert not selector.items() <= labels.items(), "the ReplicaSet would adopt the helm test Pod"
    pdb_selector = chart.one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert not pdb_selector.items() <= labels.items()


def test_pdb_defaults_to_max_unavailable_one(chart):
    assert chart.one(chart.render(), "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    docs = chart.render({"podDisruptionBudget": {"minAvailable": "50%"}})
    spec = chart.one(docs, "PodDisruptionBudget")["spec"]
    assert spec["minAvailable"] == "50%" and "maxUnavailable" not in spec
    assert "PodDisruptionBudget" not in chart.kinds(chart.render({"podDisruptionBudget": {"enabled": False}}))


def test_packaged_chart_keeps_helm_test_and_leaves_out_promtool_tests(chart, tmp_path):
    proc = chart.run("package", str(chart.dir), "--destination", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    (tgz,) = tmp_path.glob("vllm-*.tgz")
    names = tarfile.open(tgz).getnames()
    assert "vllm/templates/tests/test-inference.yaml" in names
    assert "vllm/values.schema.json" in names and "vllm/dashboards/vllm.json" in names
    assert not [n for n in names if n.startswith("vllm/tests/")], names
