"""`kubetune doctor` against the Kubernetes API stand-in (tests/k8s/kube_api_standin.py): every check
passes on a ready cluster, and each way a cluster can be unready fails the right check, non-zero."""

from __future__ import annotations

import base64
import re
import socket

import pytest
from kube_api_standin import TOKEN, gpu_node

from pipelines.cli import main

NS = "/api/v1/namespaces/kubetune"
CHECKS = ["kubernetes-api", "gpu-nodes", "namespace", "service-account", "s3-secret", "model-cache-pvc", "kfp"]


def doctor(capsys, *args: str) -> tuple[int, dict[str, tuple[str, str]], str]:
    code = main(["doctor", *args])
    out = capsys.readouterr().out
    results = {}
    for line in out.splitlines():
        m = re.match(r"^(PASS|FAIL|SKIP)\s+(\S+)\s+(.*)$", line)
        if m:
            results[m.group(2)] = (m.group(1), m.group(3))
    return code, results, out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_all_checks_pass_on_a_ready_cluster(kube_api, kubeconfig, capsys):
    code, results, out = doctor(capsys, "--kubeconfig", str(kubeconfig))
    assert code == 0, out
    assert list(results) == CHECKS
    assert all(status == "PASS" for status, _ in results.values()), out
    assert "all checks passed" in out
    assert "1 node(s), 2 GPU(s)" in results["gpu-nodes"][1] and "gpu-node-1" in results["gpu-nodes"][1]
    assert "KFP 2.17.0" in results["kfp"][1] and "ml-pipeline:8888" in results["kfp"][1]
    # It used the kube config's server and token, and read (GET) exactly what it checks.
    assert all(auth == f"Bearer {TOKEN}" for _, auth in kube_api.requests)
    paths = {p for p, _ in kube_api.requests}
    assert {"/version", "/api/v1/nodes", NS, f"{NS}/secrets/kubetune-s3",
            f"{NS}/serviceaccounts/kubetune-pipeline-runner", f"{NS}/persistentvolumeclaims/kubetune-model-cache",
            "/api/v1/namespaces/kubeflow/services/ml-pipeline:8888/proxy/apis/v2beta1/healthz"} <= paths


def test_kfp_host_is_checked_directly(kube_api, kubeconfig, capsys, monkeypatch):
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "kfp-token")
    kube_api.kfp_token = "kfp-token"
    code, results, out = doctor(capsys, "--kubeconfig", str(kubeconfig), "--kfp-host", kube_api.url + "/")
    assert code == 0, out
    assert results["kfp"][0] == "PASS" and f"{kube_api.url}/apis/v2beta1/healthz" in results["kfp"][1]
    assert ("/apis/v2beta1/healthz", "Bearer kfp-token") in kube_api.requests


def test_names_come_from_the_options(kube_api, kubeconfig, capsys):
    objs = kube_api.objects
    objs["/api/v1/namespaces/team-a"] = {**objs[NS], "metadata": {"name": "team-a"}}
    objs["/api/v1/namespaces/team-a/secrets/s3"] = objs[f"{NS}/secrets/kubetune-s3"]
    objs["/api/v1/namespaces/team-a/persistentvolumeclaims/cache"] = \
        objs[f"{NS}/persistentvolumeclaims/kubetune-model-cache"]
    objs["/api/v1/namespaces/team-a/serviceaccounts/runner"] = objs[f"{NS}/serviceaccounts/kubetune-pipeline-runner"]
    objs["/api/v1/namespaces/ml/services/ml-pipeline:8888/proxy/apis/v2beta1/healthz"] = {"tag_name": "2.17.1"}
    code, results, out = doctor(capsys, "--kubeconfig", str(kubeconfig), "--namespace", "team-a", "--secret", "s3",
                                "--pvc", "cache", "--service-account", "runner", "--kfp-namespace", "ml")
    assert code == 0, out
    assert "team-a/s3" in results["s3-secret"][1] and "KFP 2.17.1" in results["kfp"][1]


def _no_gpus(api):
    api.objects["nodes"] = [gpu_node("cpu-1", 0), gpu_node("cpu-2", 0)]


def _cordoned(api):
    api.objects["nodes"] = [gpu_node("gpu-1", 4, unschedulable=True)]


def _ns_missing(api):
    del api.objects[NS]


def _ns_terminating(api):
    api.objects[NS]["status"]["phase"] = "Terminating"


def _sa_missing(api):
    del api.objects[f"{NS}/serviceaccounts/kubetune-pipeline-runner"]


def _secret_missing(api):
    del api.objects[f"{NS}/secrets/kubetune-s3"]


def _secret_key_missing(api):
    del api.objects[f"{NS}/secrets/kubetune-s3"]["data"]["AWS_ENDPOINT_URL_S3"]


def _secret_blank(api):
    api.objects[f"{NS}/secrets/kubetune-s3"]["data"]["AWS_SECRET_ACCESS_KEY"] = base64.b64encode(b"").decode()


def _secret_forbidden(api):
    api.forbidden.add(f"{NS}/secrets/kubetune-s3")


def _pvc_missing(api):
    del api.objects[f"{NS}/persistentvolumeclaims/kubetune-model-cache"]


def _pvc_pending(api):
    api.objects[f"{NS}/persistentvolumeclaims/kubetune-model-cache"]["status"] = {"phase": "Pending"}


def _pvc_lost(api):
    api.objects[f"{NS}/persistentvolumeclaims/kubetune-model-cache"]["status"] = {"phase": "Lost"}


def _kfp_missing(api):
    del api.objects["/api/v1/namespaces/kubeflow/services/ml-pipeline:8888/proxy/apis/v2beta1/healthz"]


def _kfp_unhealthy(api):
    api.errors["/api/v1/namespaces/kubeflow/services/ml-pipeline:8888/proxy/apis/v2beta1/healthz"] = 503


FAILURES = {
    "no-gpu-nodes": (_no_gpus, "gpu-nodes", "no schedulable node has nvidia.com/gpu allocatable (2 nodes)"),
    "gpu-nodes-cordoned": (_cordoned, "gpu-nodes", "1 with GPUs are cordoned"),
    "namespace-missing": (_ns_missing, "namespace", "kubetune: HTTP 404"),
    "namespace-terminating": (_ns_terminating, "namespace", "phase Terminating, expected Active"),
    "service-account-missing": (_sa_missing, "service-account", "kubetune/kubetune-pipeline-runner: HTTP 404"),
    "secret-missing": (_secret_missing, "s3-secret", "create it from k8s/s3-secret.template.yaml"),
    "secret-key-missing": (_secret_key_missing, "s3-secret", "missing keys AWS_ENDPOINT_URL_S3"),
    "secret-blank": (_secret_blank, "s3-secret", "empty AWS_SECRET_ACCESS_KEY"),
    "secret-forbidden": (_secret_forbidden, "s3-secret", "HTTP 403"),
    "pvc-missing": (_pvc_missing, "model-cache-pvc", "kubetune/kubetune-model-cache: HTTP 404"),
    "pvc-pending-immediate": (_pvc_pending, "model-cache-pvc", "Pending and not waiting for a consumer"),
    "pvc-lost": (_pvc_lost, "model-cache-pvc", "phase Lost, expected Bound"),
    "kfp-missing": (_kfp_missing, "kfp", "HTTP 404"),
    "kfp-unhealthy": (_kfp_unhealthy, "kfp", "HTTP 503"),
}


@pytest.mark.parametrize("case", FAILURES)
def test_each_failure_fails_its_check(kube_api, kubeconfig, capsys, case):
    breaks, check, message = FAILURES[case]
    breaks(kube_api)
    code, results, out = doctor(capsys, "--kubeconfig", str(kubeconfig))
    assert code == 1, out
    assert results[check][0] == "FAIL", out
    assert message in results[check][1], out
    failed = [name for name, (status, _) in results.items() if status == "FAIL"]
    assert failed == [check], out
    assert f"FAILED: {check}" in out
    if check == "namespace":  # what lives in the namespace is not checked, and says why
        assert {results[n][0] for n in ("service-account", "s3-secret", "model-cache-pvc")} == {"SKIP"}


def test_pending_pvc_waiting_for_its_first_consumer_passes(kube_api, kubeconfig, capsys):
    _pvc_pending(kube_api)
    kube_api.objects["/apis/storage.k8s.io/v1/storageclasses/standard"]["volumeBindingMode"] = "WaitForFirstConsumer"
    code, results, out = doctor(capsys, "--kubeconfig", str(kubeconfig))
    assert code == 0, out
    assert results["model-cache-pvc"][0] == "PASS" and "WaitForFirstConsumer" in results["model-cache-pvc"][1]


def test_unreachable_api_server_fails(tmp_path, capsys):
    from kube_api_standin import StandInKubeAPI

    dead = StandInKubeAPI()  # never started: its port is closed
    kubeconfig = dead.kubeconfig(tmp_path / "kubeconfig")
    dead.server.server_close()
    code, results, out = doctor(capsys, "--kubeconfig", str(kubeconfig), "--timeout", "2")
    assert code == 1
    assert results["kubernetes-api"][0] == "FAIL" and "unreachable" in results["kubernetes-api"][1]
    assert {results[n][0] for n in CHECKS[1:]} == {"SKIP"}


def test_wrong_credentials_fail(kube_api, tmp_path, capsys):
    kubeconfig = kube_api.kubeconfig(tmp_path / "kubeconfig", token="expired")
    code, results, out = doctor(capsys, "--kubeconfig", str(kubeconfig))
    assert code == 1
    assert results["kubernetes-api"] == ("FAIL", results["kubernetes-api"][1])
    assert "HTTP 401" in results["kubernetes-api"][1]


def test_missing_kubeconfig_fails(tmp_path, capsys):
    code, results, out = doctor(capsys, "--kubeconfig", str(tmp_path / "nope"))
    assert code == 1
    assert results["kubernetes-api"][0] == "FAIL" and "kube config" in results["kubernetes-api"][1]


@pytest.mark.parametrize("answer", ["unreachable", "401", "not-json"])
def test_kfp_host_failures(kube_api, kubeconfig, capsys, answer):
    host = kube_api.url
    if answer == "unreachable":
        host = f"http://127.0.0.1:{free_port()}"
    elif answer == "401":
        kube_api.kfp_token = "needed"
    else:
        kube_api.objects["/apis/v2beta1/healthz"] = "<html>login</html>"
    code, results, out = doctor(capsys, "--kubeconfig", str(kubeconfig), "--kfp-host", host, "--timeout", "2")
    assert code == 1
    status, detail = results["kfp"]
    assert status == "FAIL", out
    expected = {"unreachable": "unreachable", "401": "HTTP 401", "not-json": "not with KFP's healthz JSON"}
    assert expected[answer] in detail
