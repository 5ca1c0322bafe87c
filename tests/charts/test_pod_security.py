"""Pod Security Standard "restricted" over every Pod spec kubetune ships, and what the chart's
NetworkPolicy admits, both checked on the objects a real `helm template` (and `kubectl kustomize`)
renders.

tests/charts/test_vllm_chart_pod.py::test_security_contexts already asserts the chart's own
securityContext fields for the default and all-features values, by name (the Deployment and the helm
test Pod). This file does not repeat it field by field; it adds what that test cannot see:

* a checker of the published "restricted" profile (kubernetes.io/docs/concepts/security/
  pod-security-standards, baseline + restricted controls) run over EVERY Pod spec found anywhere in the
  rendered output (Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs), so a
  workload added later is checked without a test change; over five renders: the chart's default and
  all-features CI values, all-features with KEDA, and the staging and prod GitOps values exactly as
  Argo CD / Flux render them; and over k8s/ (every file and every kustomize build);
* a test that the checker fails on a pod breaking each control;
* the NetworkPolicy as a policy: the namespaces and ports it admits, computed from the rendered object,
  equal exactly the ones the values name (no empty selector, no ipBlock, no rule without `from` or
  `ports`), and evaluated on sample peers (admitted, and not).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "vllm"
K8S = REPO / "k8s"
GITOPS_ENVS = ("staging", "prod")

# -- the "restricted" profile (Pod Security Standards, policy version latest) -----------------------
# Baseline: no host namespaces, no privileged containers, capabilities added only from this list,
# no hostPath, no host ports, no Unconfined seccomp/AppArmor, only default /proc mounts, safe sysctls.
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
# Restricted: only these volume types.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"}


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    """(kind/name, pod spec) of every object that runs pods."""
    found = []
    for d in docs:
        kind, name = d.get("kind"), (d.get("metadata") or {}).get("name")
        spec = None
        if kind == "Pod":
            spec = d.get("spec")
        elif kind in POD_TEMPLATE_KINDS:
            spec = d["spec"]["template"]["spec"]
        elif kind == "CronJob":
            spec = d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        if spec is not None:
            found.append((f"{kind}/{name}", spec))
    return found


def restricted_violations(spec: dict) -> list[str]:
    """Every control of the "restricted" profile (which includes baseline) that this pod spec breaks."""
    bad: list[str] = []
    psc = spec.get("securityContext") or {}
    containers = [("container", c) for c in spec.get("containers") or []]
    containers += [("initContainer", c) for c in spec.get("initContainers") or []]
    containers += [("ephemeralContainer", c) for c in spec.get("ephemeralContainers") or []]
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            bad.append(f"{field}: true")
    if psc.get("runAsUser") == 0:
        bad.append("pod runAsUser: 0")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            bad.append(f"unsafe sysctl {sysctl.get('name')}")
    if (psc.get("seLinuxOptions") or {}).get("user") or (psc.get("seLinuxOptions") or {}).get("role"):
        bad.append("pod seLinuxOptions user/role set")
    if (psc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        bad.append("pod appArmorProfile Unconfined")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp == "Unconfined":
        bad.append("pod seccompProfile Unconfined")
    for v in spec.get("volumes") or []:
        types = set(v) - {"name"}
        if "hostPath" in types:
            bad.append(f"volume {v['name']}: hostPath")
        elif not types <= RESTRICTED_VOLUMES:
            bad.append(f"volume {v['name']}: type {sorted(types)} not allowed by restricted")
    for where, c in containers:
        who = f"{where} {c.get('name')}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            bad.append(f"{who}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{who}: allowPrivilegeEscalation is not false")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            bad.append(f"{who}: runAsNonRoot is not true (pod or container)")
        if sc.get("runAsUser") == 0:
            bad.append(f"{who}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{who}: seccompProfile {seccomp!r} (pod or container), expected RuntimeDefault")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad.append(f"{who}: capabilities do not drop ALL")
        added = set(caps.get("add") or [])
        if added - {"NET_BIND_SERVICE"}:
            bad.append(f"{who}: adds capabilities {sorted(added - {'NET_BIND_SERVICE'})}")
        if added - BASELINE_CAPABILITIES:
            bad.append(f"{who}: adds non-baseline capabilities {sorted(added - BASELINE_CAPABILITIES)}")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                bad.append(f"{who}: hostPort {port['hostPort']}")
        if sc.get("procMount", "Default") != "Default":
            bad.append(f"{who}: procMount {sc['procMount']}")
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            bad.append(f"{who}: appArmorProfile Unconfined")
        if (sc.get("seLinuxOptions") or {}).get("user") or (sc.get("seLinuxOptions") or {}).get("role"):
            bad.append(f"{who}: seLinuxOptions user/role set")
    return bad


# -- rendering ----------------------------------------------------------------------------------------
def _docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def helm_template(helm: str, namespace: str, *values_files: Path) -> list[dict]:
    cmd = [helm, "template", "contracts", str(CHART_DIR), "--namespace", namespace]
    for f in values_files:
        cmd += ["-f", str(f)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr}"
    return _docs(proc.stdout)


def _keda(tmp: Path) -> Path:
    path = tmp / "keda.yaml"
    path.write_text(yaml.safe_dump({"autoscaling": {"kind": "keda"}}))
    return path


# name -> (namespace, values files relative to the repo). The GitOps variants are rendered as Argo CD and
# Flux render them: the chart's values.yaml (implicit), then the environment's file.
VARIANTS = {
    "default": ("serving", [CHART_DIR / "ci" / "default-values.yaml"]),
    "all-features": ("serving", [CHART_DIR / "ci" / "all-features-values.yaml"]),
    "all-features-keda": ("serving", [CHART_DIR / "ci" / "all-features-values.yaml", "keda"]),
    **{env: (f"llm-{env}", [K8S / "gitops" / env / "values.yaml"]) for env in GITOPS_ENVS},
}


@pytest.fixture(scope="module")
def rendered(helm, tmp_path_factory) -> dict[str, list[dict]]:
    tmp = tmp_path_factory.mktemp("pss")
    out = {}
    for name, (namespace, files) in VARIANTS.items():
        paths = [_keda(tmp) if f == "keda" else f for f in files]
        out[name] = helm_template(helm, namespace, *paths)
    return out


@pytest.fixture(scope="module")
def k8s_docs(helm) -> dict[str, list[dict]]:
    """Every YAML file under k8s/ and every kustomize build there (kubectl from .venv/tools)."""
    kubectl = str(Path(helm).with_name("kubectl"))  # the helm wheel's kubectl, next to helm in .venv/tools
    if not Path(kubectl).is_file():
        kubectl = shutil.which("kubectl") or pytest.fail("kubectl not found: run `make install-helm`", pytrace=False)
    out = {str(p.relative_to(REPO)): _docs(p.read_text()) for p in sorted(K8S.rglob("*.yaml"))}
    for d in sorted(p.parent for p in K8S.rglob("kustomization.yaml")):
        proc = subprocess.run([kubectl, "kustomize", str(d)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        out[f"kustomize {d.relative_to(REPO)}"] = _docs(proc.stdout)
    return out


# -- Pod Security "restricted" ---------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_chart_pod_meets_restricted(rendered, variant):
    specs = pod_specs(rendered[variant])
    kinds = sorted(w.split("/")[0] for w, _ in specs)
    assert kinds == ["Deployment", "Pod"], f"{variant}: expected the Deployment and the helm test Pod, got {kinds}"
    problems = {where: restricted_violations(spec) for where, spec in specs}
    assert not any(problems.values()), f"{variant}: Pod Security 'restricted' violations: {problems}"
    for where, spec in specs:
        n = len(spec.get("containers", [])) + len(spec.get("initContainers", []))
        assert n >= 1, where
        # The fields the task names, each explicitly on every container (not only inherited).
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert (sc["runAsNonRoot"], sc["allowPrivilegeEscalation"], sc["capabilities"]["drop"],
                    sc["seccompProfile"]["type"]) == (True, False, ["ALL"], "RuntimeDefault"), (where, c["name"])


def test_no_host_access_anywhere_in_the_chart_output(rendered):
    """hostPath/hostNetwork/hostPID/hostIPC/privileged appear nowhere, not even in a CRD object."""
    for variant, docs in rendered.items():
        found = _find_keys(docs, {"hostPath", "hostNetwork", "hostPID", "hostIPC", "hostPort"})
        assert not found, f"{variant}: {found}"
        assert not [p for p, v in _walk(docs) if p.endswith(".privileged") and v], variant


def test_k8s_manifests_run_no_pod_outside_restricted(k8s_docs):
    n_docs = sum(len(d) for d in k8s_docs.values())
    assert n_docs >= 10, k8s_docs.keys()
    specs = [(f"{src}: {w}", s) for src, docs in k8s_docs.items() for w, s in pod_specs(docs)]
    problems = {where: restricted_violations(spec) for where, spec in specs}
    assert not any(problems.values()), problems
    for src, docs in k8s_docs.items():
        found = _find_keys(docs, {"hostPath", "hostNetwork", "hostPID", "hostIPC", "hostPort", "privileged"})
        assert not found, f"{src}: {found}"


def test_pipeline_namespace_enforces_baseline_and_audits_restricted(k8s_docs):
    """k8s/ has no workload of its own: the step pods are created by KFP/Argo, whose launcher and wait
    containers set none of restricted's fields (KFP's PlatformSpec cannot set a securityContext), so
    the namespace enforces baseline and warns/audits restricted (k8s/namespace.yaml says why)."""
    (ns,) = [d for d in k8s_docs["kustomize k8s"] if d["kind"] == "Namespace"]
    labels = ns["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] in ("baseline", "restricted")
    assert labels["pod-security.kubernetes.io/warn"] == labels["pod-security.kubernetes.io/audit"] == "restricted"


BAD_PODS = {
    "privileged": ({"containers": [{"name": "c", "securityContext": {"privileged": True}}]}, "privileged"),
    "escalation": ({"containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": True}}]},
                   "allowPrivilegeEscalation"),
    "root": ({"securityContext": {"runAsNonRoot": False}, "containers": [{"name": "c"}]}, "runAsNonRoot"),
    "uid0": ({"securityContext": {"runAsUser": 0}, "containers": [{"name": "c"}]}, "runAsUser: 0"),
    "caps": ({"containers": [{"name": "c", "securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}]},
             "drop ALL"),
    "add-caps": ({"containers": [{"name": "c", "securityContext": {"capabilities": {"drop": ["ALL"],
                                                                                     "add": ["SYS_ADMIN"]}}}]},
                 "SYS_ADMIN"),
    "seccomp": ({"securityContext": {"seccompProfile": {"type": "Unconfined"}}, "containers": [{"name": "c"}]},
                "Unconfined"),
    "no-seccomp": ({"containers": [{"name": "c"}]}, "seccompProfile None"),
    "hostPath": ({"containers": [{"name": "c"}], "volumes": [{"name": "h", "hostPath": {"path": "/"}}]},
                 "hostPath"),
    "hostNetwork": ({"hostNetwork": True, "containers": [{"name": "c"}]}, "hostNetwork"),
    "hostPID": ({"hostPID": True, "containers": [{"name": "c"}]}, "hostPID"),
    "hostPort": ({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}]}]}, "hostPort"),
    "init": ({"initContainers": [{"name": "i", "securityContext": {"capabilities": {}}}], "containers": []},
             "initContainer i: capabilities do not drop ALL"),
    "nfs": ({"containers": [], "volumes": [{"name": "n", "nfs": {"server": "x", "path": "/"}}]}, "nfs"),
}
GOOD_CONTAINER_SC = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
GOOD_POD_SC = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


@pytest.mark.parametrize("case", list(BAD_PODS))
def test_the_restricted_checker_can_fail(case):
    spec, expected = BAD_PODS[case]
    # Start from a compliant pod and apply the one bad setting on top.
    pod = {"securityContext": {**GOOD_POD_SC, **spec.get("securityContext", {})},
           **{k: v for k, v in spec.items() if k != "securityContext"}}
    for key in ("containers", "initContainers"):
        for c in pod.get(key, []):
            c["securityContext"] = {**GOOD_CONTAINER_SC, **c.get("securityContext", {})}
    if case == "no-seccomp":
        del pod["securityContext"]["seccompProfile"]
    problems = restricted_violations(pod)
    assert any(expected in p for p in problems), (case, problems)
    good = {"securityContext": dict(GOOD_POD_SC),
            "containers": [{"name": "c", "securityContext": dict(GOOD_CONTAINER_SC)}]}
    assert restricted_violations(good) == []
    # And through the workload walker: the same pod inside a CronJob is found and fails.
    cron = {"kind": "CronJob", "metadata": {"name": "x"},
            "spec": {"jobTemplate": {"spec": {"template": {"spec": pod}}}}}
    [(where, found)] = pod_specs([cron])
    assert where == "CronJob/x" and restricted_violations(found) == problems


def _walk(node: Any, path: str = "") -> list[tuple[str, Any]]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((f"{path}.{k}", v))
            out += _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _walk(v, f"{path}[{i}]")
    return out


def _find_keys(docs: list[dict], keys: set[str]) -> list[str]:
    return [p for p, v in _walk(docs) if p.rsplit(".", 1)[-1] in keys and v not in (False, None, 0, {}, [])]


# -- NetworkPolicy -----------------------------------------------------------------------------------------
def _values(files: list) -> dict:
    """The merged values (chart defaults, then each file; lists replace, as helm merges them)."""
    def merge(a, b):
        if isinstance(a, dict) and isinstance(b, dict):
            return {**a, **{k: merge(a.get(k), v) if k in a else v for k, v in b.items()}}
        return b
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    for f in files:
        if f != "keda":
            values = merge(values, yaml.safe_load(Path(f).read_text()))
    return values


def _selects(selector: dict | None, labels: dict) -> bool:
    """A LabelSelector (matchLabels and matchExpressions In/NotIn/Exists/DoesNotExist) against labels."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, vals = e["key"], e["operator"], e.get("values") or []
        if (op == "In" and labels.get(key) not in vals) or (op == "NotIn" and labels.get(key) in vals) \
                or (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


def admits(policy: dict, policy_ns: str, container_ports: dict[str, int], ns: str, ns_labels: dict,
           pod_labels: dict, port: int, protocol: str = "TCP") -> bool:
    """NetworkPolicy ingress semantics (networking.k8s.io/v1) for one peer pod and destination port."""
    spec = policy["spec"]
    for rule in spec.get("ingress") or []:
        ports = rule.get("ports")
        port_ok = not ports or any(
            (p.get("protocol", "TCP") == protocol)
            and (p.get("port") is None or container_ports.get(p["port"], p["port"]) == port)
            for p in ports)
        peers = rule.get("from")
        peer_ok = not peers or any(_peer_admits(peer, policy_ns, ns, ns_labels, pod_labels) for peer in peers)
        if port_ok and peer_ok:
            return True
    return False


def _peer_admits(peer: dict, policy_ns: str, ns: str, ns_labels: dict, pod_labels: dict) -> bool:
    if "ipBlock" in peer:
        return True  # conservatively: an ipBlock may match any pod IP
    ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
    ns_ok = _selects(ns_sel, ns_labels) if ns_sel is not None else ns == policy_ns
    pod_ok = _selects(pod_sel, pod_labels) if pod_sel is not None else True
    return ns_ok and pod_ok


def _ns_labels(name: str) -> dict:
    return {"kubernetes.io/metadata.name": name}


NP_VARIANTS = ["all-features", "prod"]  # staging enables no NetworkPolicy (see test below)


@pytest.mark.parametrize("variant", NP_VARIANTS)
def test_network_policy_admits_exactly_what_values_name(rendered, variant):
    namespace, files = VARIANTS[variant]
    values = _values(files)
    docs = rendered[variant]
    [np] = [d for d in docs if d["kind"] == "NetworkPolicy"]
    [dep] = [d for d in docs if d["kind"] == "Deployment"]
    spec = np["spec"]
    assert np["metadata"]["namespace"] == namespace
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["podSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    # No wildcard anywhere: every rule names its peers and its ports; no empty selector, no ipBlock.
    for rule in spec["ingress"]:
        assert rule.get("from") and rule.get("ports"), rule
        for peer in rule["from"]:
            assert "ipBlock" not in peer, peer
            for sel in ("namespaceSelector", "podSelector"):
                if sel in peer:
                    assert peer[sel].get("matchLabels") or peer[sel].get("matchExpressions"), (sel, peer)
    # The peers are exactly values.networkPolicy.from + the metrics scraper + this release's helm test.
    npv = values["networkPolicy"]
    [test_pod] = [d for d in docs if d["kind"] == "Pod"]
    peers = [p for rule in spec["ingress"] for p in rule["from"]]
    expected = [*npv["from"], npv["metricsScraper"]]
    assert peers[:len(expected)] == expected
    assert len(peers) == len(expected) + 1
    assert peers[-1]["podSelector"]["matchLabels"].items() <= test_pod["metadata"]["labels"].items()
    # The namespaces it admits are exactly the ones the values name (podSelector-only peers: its own).
    named = {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
             for p in expected if "namespaceSelector" in p}
    admitted = {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                if "namespaceSelector" in p else namespace for p in peers}
    assert admitted == named | ({namespace} if any("namespaceSelector" not in p for p in peers) else set())
    # The ports: the one named port "http", which is the vLLM container's only port, values.vllm.port.
    ports = [p for rule in spec["ingress"] for p in rule["ports"]]
    assert all(p == {"port": "http", "protocol": "TCP"} for p in ports), ports
    vllm = next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "vllm")
    assert vllm["ports"] == [{"name": "http", "containerPort": values["vllm"]["port"], "protocol": "TCP"}]


@pytest.mark.parametrize("variant", NP_VARIANTS)
def test_network_policy_evaluated_on_sample_peers(rendered, variant):
    namespace, files = VARIANTS[variant]
    values = _values(files)
    docs = rendered[variant]
    [np] = [d for d in docs if d["kind"] == "NetworkPolicy"]
    [test_pod] = [d for d in docs if d["kind"] == "Pod"]
    port = values["vllm"]["port"]
    ports = {"http": port}

    def ok(ns, pod_labels, p=port, protocol="TCP"):
        return admits(np, namespace, ports, ns, _ns_labels(ns), pod_labels, p, protocol)

    scraper = values["networkPolicy"]["metricsScraper"]
    scraper_ns = scraper["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
    scraper_labels = scraper["podSelector"]["matchLabels"]
    assert ok(scraper_ns, scraper_labels)
    assert not ok(scraper_ns, scraper_labels, p=22), "only the API port"
    assert not ok(scraper_ns, scraper_labels, protocol="UDP")
    assert not ok(scraper_ns, {"app": "grafana"}), "another pod in the monitoring namespace"
    assert not ok("default", scraper_labels), "Prometheus' labels in another namespace"
    assert ok(namespace, test_pod["metadata"]["labels"]), "this release's helm test Pod"
    assert not ok("default", test_pod["metadata"]["labels"])
    for peer in values["networkPolicy"]["from"]:
        if "namespaceSelector" in peer:
            ns = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            assert ok(ns, {"any": "pod"}) and not ok(ns, {"any": "pod"}, p=port + 1)
        else:
            labels = peer["podSelector"]["matchLabels"]
            assert ok(namespace, labels) and not ok("default", labels)
    for stranger in ("default", "kube-system", "kubetune", f"{namespace}-other"):
        assert not ok(stranger, {"app": "curl"}), stranger
    assert not ok(namespace, {"app": "curl"}), "an unlabelled pod in the serving namespace itself"


def test_staging_has_no_network_policy_and_prod_has_one(rendered):
    """Recorded as it is: staging's values leave networkPolicy off (the chart's default), prod turns it on."""
    assert "NetworkPolicy" not in {d["kind"] for d in rendered["staging"]}
    assert "NetworkPolicy" in {d["kind"] for d in rendered["prod"]}


def test_network_policy_follows_custom_values(chart):
    """Other namespaces, a matchExpressions peer and another API port: the rendered policy admits
    exactly those (the helm test's peer is gone with helmTest.enabled false)."""
    values = {"vllm": {"port": 9000}, "helmTest": {"enabled": False},
              "networkPolicy": {"enabled": True, "from": [
                  {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "team-a"}}},
                  {"namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name",
                                                               "operator": "In", "values": ["team-b"]}]},
                   "podSelector": {"matchLabels": {"role": "client"}}}],
                  # helm merges maps: the default podSelector (app.kubernetes.io/name: prometheus) stays
                  "metricsScraper": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "obs"}}}}}
    docs = chart.render(values)
    np = chart.one(docs, "NetworkPolicy")
    assert len(np["spec"]["ingress"]) == 2
    ports = {"http": 9000}
    assert chart.container(docs)["ports"][0]["containerPort"] == 9000

    def ok(ns, labels, p=9000):
        return admits(np, chart.namespace, ports, ns, _ns_labels(ns), labels, p)

    assert ok("team-a", {}) and not ok("team-a", {}, p=8000)
    assert ok("team-b", {"role": "client"}) and not ok("team-b", {"role": "other"})
    prometheus = {"app.kubernetes.io/name": "prometheus"}
    assert ok("obs", prometheus) and not ok("obs", {"app": "grafana"}) and not ok("monitoring", prometheus)
    assert not ok(chart.namespace, {"app.kubernetes.io/component": "helm-test"})
    assert not ok("team-c", {})
