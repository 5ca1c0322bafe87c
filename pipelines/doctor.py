"""Preflight checks of a cluster before the first pipeline run (`kubetune doctor`).

Each check reports PASS or FAIL (or SKIP when an earlier failure makes it meaningless) with one line
saying what was found and, on failure, what to do:

  kubernetes-api   the API server answers (GET /version), with the kube config's credentials
  gpu-nodes        at least one schedulable node has `nvidia.com/gpu` allocatable
  namespace        the namespace the runs execute in exists and is Active
  service-account  the pipeline runner ServiceAccount (k8s/rbac.yaml) exists there
  s3-secret        the S3 Secret exists there with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
                   AWS_ENDPOINT_URL_S3 (the keys every step gets as environment variables), the two
                   credentials non-empty
  model-cache-pvc  the cache PVC exists and is Bound (or Pending on a WaitForFirstConsumer class,
                   which binds when the first step pod starts)
  kfp              KFP's API answers GET /apis/v2beta1/healthz: at --kfp-host when given (with the
                   bearer token in $KF_PIPELINES_TOKEN or $KUBETUNE_KFP_TOKEN, if set), otherwise
                   through the API server's service proxy to <kfp-namespace>/ml-pipeline:8888

It uses the `kubernetes` client with the kube config (--kubeconfig, $KUBECONFIG or ~/.kube/config;
in a pod, the in-cluster config). Only reads: nothing on the cluster is changed.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field

GPU_RESOURCE = "nvidia.com/gpu"
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3")
S3_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
KFP_HEALTHZ = "apis/v2beta1/healthz"
KFP_SERVICE = "ml-pipeline:8888"
KFP_TOKEN_VARS = ("KF_PIPELINES_TOKEN", "KUBETUNE_KFP_TOKEN")  # the bearer token, as `kubetune submit` reads it
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass
class Check:
    name: str
    status: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<16} {self.detail}"


@dataclass
class DoctorOptions:
    namespace: str = "kubetune"
    secret: str = "kubetune-s3"
    pvc: str = "kubetune-model-cache"
    service_account: str = "kubetune-pipeline-runner"
    kfp_host: str | None = None
    kfp_namespace: str = "kubeflow"
    kubeconfig: str | None = None
    context: str | None = None
    timeout: float = 10.0


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks) and any(c.status == PASS for c in self.checks)

    def add(self, name: str, status: str, detail: str) -> Check:
        check = Check(name, status, detail)
        self.checks.append(check)
        return check


def api_client(opts: DoctorOptions):
    """A kubernetes ApiClient from the kube config (or the in-cluster config when there is none)."""
    from kubernetes import client, config

    if opts.kubeconfig or not _in_cluster():
        cfg = client.Configuration()
        config.load_kube_config(config_file=opts.kubeconfig, context=opts.context, client_configuration=cfg)
    else:
        config.load_incluster_config()
        cfg = client.Configuration.get_default_copy()
    cfg.retries = 0
    return client.ApiClient(cfg)


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not os.environ.get("KUBECONFIG") and \
        not os.path.exists(os.path.expanduser("~/.kube/config"))


def _api_error(e: Exception) -> str:
    """A short reason for a kubernetes client exception."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(e, ApiException):
        try:
            message = json.loads(e.body or "{}").get("message")
        except ValueError:
            message = None
        return f"HTTP {e.status} {e.reason}" + (f": {message}" if message else "")
    reason = getattr(e, "reason", None)  # urllib3's MaxRetryError wraps the connection error
    if isinstance(reason, Exception):
        return f"unreachable ({type(reason).__name__}: {str(reason).split(': ', 1)[-1]})"
    return f"{type(e).__name__}: {e}"


def check_api(api, opts: DoctorOptions, report: Report) -> bool:
    from kubernetes import client

    try:
        version = client.VersionApi(api).get_code(_request_timeout=opts.timeout)
    except Exception as e:  # noqa: BLE001 - any failure to reach the API is this check's FAIL
        report.add("kubernetes-api", FAIL, f"{api.configuration.host}: {_api_error(e)}; check the kube config "
                                           "(--kubeconfig, $KUBECONFIG) and that the cluster is reachable")
        return False
    report.add("kubernetes-api", PASS, f"{api.configuration.host}: Kubernetes {version.git_version}")
    return True


def _gpus(node) -> int:
    value = (node.status.allocatable or {}).get(GPU_RESOURCE, "0")
    try:
        return int(str(value))
    except ValueError:
        return 0


def check_gpu_nodes(core, opts: DoctorOptions, report: Report) -> None:
    try:
        nodes = core.list_node(_request_timeout=opts.timeout).items
    except Exception as e:  # noqa: BLE001
        report.add("gpu-nodes", FAIL, f"cannot list nodes ({_api_error(e)})")
        return
    with_gpus = [(n, _gpus(n)) for n in nodes if _gpus(n) > 0]
    usable = [(n, g) for n, g in with_gpus if not (n.spec and n.spec.unschedulable)]
    if not usable:
        cordoned = f"; {len(with_gpus)} with GPUs are cordoned" if with_gpus else ""
        report.add("gpu-nodes", FAIL, f"no schedulable node has {GPU_RESOURCE} allocatable ({len(nodes)} nodes"
                                      f"{cordoned}); install the NVIDIA device plugin or GPU operator on GPU nodes")
        return
    desc = ", ".join(f"{n.metadata.name}: {g}" + (f" {p}" if (p := (n.metadata.labels or {}).get(
        "nvidia.com/gpu.product")) else "") for n, g in usable)
    report.add("gpu-nodes", PASS, f"{len(usable)} node(s), {sum(g for _, g in usable)} GPU(s) allocatable ({desc})")


def check_namespace(core, opts: DoctorOptions, report: Report) -> bool:
    try:
        ns = core.read_namespace(opts.namespace, _request_timeout=opts.timeout)
    except Exception as e:  # noqa: BLE001
        hint = "; apply k8s/ (kubectl apply -k k8s/)" if getattr(e, "status", None) == 404 else ""
        report.add("namespace", FAIL, f"{opts.namespace}: {_api_error(e)}{hint}")
        return False
    phase = ns.status.phase if ns.status else None
    if phase != "Active":
        report.add("namespace", FAIL, f"{opts.namespace}: phase {phase}, expected Active")
        return False
    report.add("namespace", PASS, f"{opts.namespace}: Active")
    return True


def check_service_account(core, opts: DoctorOptions, report: Report) -> None:
    try:
        core.read_namespaced_service_account(opts.service_account, opts.namespace, _request_timeout=opts.timeout)
    except Exception as e:  # noqa: BLE001
        hint = "; apply k8s/rbac.yaml (kubectl apply -k k8s/)" if getattr(e, "status", None) == 404 else ""
        report.add("service-account", FAIL, f"{opts.namespace}/{opts.service_account}: {_api_error(e)}{hint}")
        return
    report.add("service-account", PASS, f"{opts.namespace}/{opts.service_account} exists")


def check_secret(core, opts: DoctorOptions, report: Report) -> None:
    where = f"{opts.namespace}/{opts.secret}"
    # The kubernetes client logs every response body at DEBUG (`kubetune -v`); this one is the Secret's data.
    rest_log = logging.getLogger("kubernetes.client.rest")
    level = rest_log.level
    rest_log.setLevel(max(level, logging.INFO))
    try:
        secret = core.read_namespaced_secret(opts.secret, opts.namespace, _request_timeout=opts.timeout)
    except Exception as e:  # noqa: BLE001
        hint = "; create it from k8s/s3-secret.template.yaml" if getattr(e, "status", None) == 404 else ""
        report.add("s3-secret", FAIL, f"{where}: {_api_error(e)}{hint}")
        return
    finally:
        rest_log.setLevel(level)
    data = {k: base64.b64decode(v or "").decode("utf-8", "replace") for k, v in (secret.data or {}).items()}
    missing = [k for k in S3_KEYS if k not in data]
    empty = [k for k in S3_CREDENTIALS if k in data and not data[k].strip()]
    if missing or empty:
        parts = ([f"missing keys {', '.join(missing)} (a step pod would not start)"] if missing else []) + \
                ([f"empty {', '.join(empty)}"] if empty else [])
        report.add("s3-secret", FAIL, f"{where}: {'; '.join(parts)}; expected the keys of k8s/s3-secret.template.yaml")
        return
    endpoint = data["AWS_ENDPOINT_URL_S3"].strip() or "(empty: AWS's default endpoint)"
    report.add("s3-secret", PASS, f"{where}: {', '.join(S3_KEYS)} set; endpoint {endpoint}")


def check_pvc(core, opts: DoctorOptions, api, report: Report) -> None:
    from kubernetes import client

    where = f"{opts.namespace}/{opts.pvc}"
    try:
        pvc = core.read_namespaced_persistent_volume_claim(opts.pvc, opts.namespace,
                                                           _request_timeout=opts.timeout)
    except Exception as e:  # noqa: BLE001
        hint = "; apply k8s/model-cache-pvc.yaml (kubectl apply -k k8s/)" if getattr(e, "status", None) == 404 \
            else ""
        report.add("model-cache-pvc", FAIL, f"{where}: {_api_error(e)}{hint}")
        return
    phase = pvc.status.phase if pvc.status else None
    size = ((pvc.status.capacity or {}) if pvc.status else {}).get("storage") or \
        ((pvc.spec.resources.requests or {}).get("storage") if pvc.spec.resources else None)
    if phase == "Bound":
        report.add("model-cache-pvc", PASS, f"{where}: Bound ({size})")
        return
    if phase == "Pending":
        sc_name = pvc.spec.storage_class_name
        mode = None
        if sc_name:
            try:
                mode = client.StorageV1Api(api).read_storage_class(
                    sc_name, _request_timeout=opts.timeout).volume_binding_mode
            except Exception:  # noqa: BLE001 - unreadable class: judged as not waiting below
                mode = None
        if mode == "WaitForFirstConsumer":
            report.add("model-cache-pvc", PASS, f"{where}: Pending until the first step pod uses it "
                                                f"(StorageClass {sc_name} binds WaitForFirstConsumer)")
            return
        why = f"StorageClass {sc_name} binds {mode or 'Immediate'}" if sc_name else "no storageClassName"
        report.add("model-cache-pvc", FAIL, f"{where}: Pending and not waiting for a consumer ({why}); "
                                            "check the provisioner (kubectl describe pvc)")
        return
    report.add("model-cache-pvc", FAIL, f"{where}: phase {phase}, expected Bound")


def _kfp_result(report: Report, where: str, body: str) -> None:
    try:
        info = json.loads(body or "{}")
    except ValueError:
        info = None
    if not isinstance(info, dict):
        report.add("kfp", FAIL, f"{where}: answered, but not with KFP's healthz JSON: {body[:120]!r}")
        return
    version = info.get("tag_name") or info.get("commit_sha") or "version unknown"
    mode = " (multi-user)" if info.get("multi_user") else ""
    report.add("kfp", PASS, f"{where}: healthy, KFP {version}{mode}")


def check_kfp(opts: DoctorOptions, api, report: Report, api_ok: bool) -> None:
    if opts.kfp_host:
        url = opts.kfp_host.rstrip("/") + "/" + KFP_HEALTHZ
        request = urllib.request.Request(url)
        token = next((os.environ[v] for v in KFP_TOKEN_VARS if os.environ.get(v)), None)
        if token:  # as `kubetune submit` authenticates (multi-user KFP behind an auth proxy)
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=opts.timeout) as resp:  # noqa: S310 - user-given URL
                body = resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            report.add("kfp", FAIL, f"{url}: HTTP {e.code} {e.reason}")
            return
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            report.add("kfp", FAIL, f"{url}: unreachable ({reason}); check --kfp-host")
            return
        _kfp_result(report, url, body)
        return
    if not api_ok:
        report.add("kfp", SKIP, "no --kfp-host, and the API server (for the service proxy) is unreachable")
        return
    from kubernetes import client

    where = f"service {opts.kfp_namespace}/{KFP_SERVICE} (API server proxy)"
    try:
        # The raw body: the client would otherwise turn the JSON into a Python repr string.
        resp = client.CoreV1Api(api).connect_get_namespaced_service_proxy_with_path(
            KFP_SERVICE, opts.kfp_namespace, KFP_HEALTHZ, _request_timeout=opts.timeout, _preload_content=False)
        body = resp.data.decode("utf-8", "replace")
    except Exception as e:  # noqa: BLE001
        report.add("kfp", FAIL, f"{where}: {_api_error(e)}; install KFP, or pass --kfp-host URL")
        return
    _kfp_result(report, where, body)


def run_checks(opts: DoctorOptions) -> Report:
    from kubernetes import client

    report = Report()
    try:
        api = api_client(opts)
    except Exception as e:  # noqa: BLE001 - a missing or broken kube config
        report.add("kubernetes-api", FAIL, f"no usable kube config ({type(e).__name__}: {e}); pass --kubeconfig")
        api = None
    api_ok = api is not None and check_api(api, opts, report)
    names = ("gpu-nodes", "namespace", "service-account", "s3-secret", "model-cache-pvc")
    if api_ok:
        core = client.CoreV1Api(api)
        check_gpu_nodes(core, opts, report)
        if check_namespace(core, opts, report):
            check_service_account(core, opts, report)
            check_secret(core, opts, report)
            check_pvc(core, opts, api, report)
        else:
            for name in names[2:]:
                report.add(name, SKIP, f"namespace {opts.namespace} is missing")
    else:
        for name in names:
            report.add(name, SKIP, "the Kubernetes API is unreachable")
    check_kfp(opts, api, report, api_ok)
    if api is not None:
        api.close()
    return report
