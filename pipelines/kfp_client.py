"""Talking to a Kubeflow Pipelines API server (v2beta1) for `kubetune submit`, `schedule` and `runs`.

The flow: compile the pipeline for a cluster (image names required) -> connect (GET healthz once,
with a short timeout and no retries, so that an unreachable host fails fast, naming its URL) ->
upload the pipeline, or a new version of it when a pipeline of that name exists (the version is
named after the spec's sha256, so submitting the same spec again reuses it) -> find or create the
experiment -> create the run or the recurring run. Run URLs are `<UI host>/#/runs/details/<id>`;
the UI host is --host unless $KF_PIPELINES_UI_ENDPOINT says otherwise (as in kfp.Client).

Auth, first found wins: a bearer token in $KF_PIPELINES_TOKEN or $KUBETUNE_KFP_TOKEN; in a pod, the
projected service-account token that kfp reads ($KF_PIPELINES_SA_TOKEN_PATH, kfp's
ServiceAccountTokenVolumeCredentials); the user token of the kube config's context ($KUBECONFIG or
~/.kube/config, exec plugins included), sent only to a loopback host (a port-forward) or to that
cluster's own API server (its service proxy to ml-pipeline); else none. Tokens go only into the
Authorization header and are never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import ipaddress
import json
import logging
import os
import re
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from components.common.errors import KubetuneError

log = logging.getLogger(__name__)

TOKEN_ENVS = ("KF_PIPELINES_TOKEN", "KUBETUNE_KFP_TOKEN")
HEALTHZ_PATH = "/apis/v2beta1/healthz"
DEFAULT_EXPERIMENT = "kubetune"
MAX_CONCURRENCY = (1, 10)  # what the KFP API server accepts for a recurring run

# ---------------------------------------------------------------------------------------- cron
# KFP parses schedules with robfig/cron v1: six fields, seconds first, or a descriptor.
_MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)}
_DAYS = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}
_CRON_FIELDS = (("second", 0, 59, None), ("minute", 0, 59, None), ("hour", 0, 23, None),
                ("day-of-month", 1, 31, None), ("month", 1, 12, _MONTHS), ("day-of-week", 0, 6, _DAYS))
_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_CRON_SHAPE = "5 fields (minute hour day-of-month month day-of-week) or 6 (second first)"


def to_kfp_cron(expr: str) -> str:
    """A standard 5-field cron becomes KFP's 6 fields (second 0 first); 6 fields pass as they are."""
    text = " ".join(expr.split())
    if not text:
        raise KubetuneError(f"--cron: empty; expected {_CRON_SHAPE}, e.g. '0 3 * * MON'")
    if text.startswith("@"):
        if text.lower() in _DESCRIPTORS:
            return text.lower()
        raise KubetuneError(f"--cron {expr!r}: unknown descriptor; expected one of {', '.join(_DESCRIPTORS)}")
    fields = text.split(" ")
    if len(fields) == 5:
        fields = ["0", *fields]
    elif len(fields) != 6:
        raise KubetuneError(f"--cron {expr!r}: {len(fields)} fields; expected {_CRON_SHAPE}")
    for value, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        _check_cron_field(expr, value, name, low, high, names)
    return " ".join(fields)


def _check_cron_field(expr: str, value: str, name: str, low: int, high: int, names: dict | None) -> None:
    def bad(why: str) -> KubetuneError:
        return KubetuneError(f"--cron {expr!r}: {name} field {value!r}: {why}")

    def number(part: str) -> int:
        if part.isdigit():
            n = int(part)
        elif names and part.lower() in names:
            n = names[part.lower()]
        else:
            kinds = f"a number {low}-{high}" + (f" or a name ({', '.join(n.upper() for n in names)})" if names else "")
            raise bad(f"{part!r} is not {kinds}")
        if not low <= n <= high:
            hint = " (Sunday is 0 or SUN)" if name == "day-of-week" and n == 7 else ""
            raise bad(f"{part} is out of range {low}-{high}{hint}")
        return n

    for item in value.split(","):
        if not item:
            raise bad("empty item in the list")
        span, slash, step = item.partition("/")
        if slash and (not step.isdigit() or int(step) == 0):
            raise bad(f"step {step!r} in {item!r} must be a positive integer")
        if span in ("*", "?"):
            continue
        ends = span.split("-")
        if len(ends) > 2:
            raise bad(f"{item!r} has more than one '-'")
        first, last = number(ends[0]), number(ends[-1])
        if first > last:
            raise bad(f"range {span!r} runs backwards")


# ---------------------------------------------------------------------------------- parameters
_TRUE, _FALSE = {"true", "1", "yes", "y", "on"}, {"false", "0", "no", "n", "off"}
RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def parse_params(pairs: list[str], parameters: dict[str, str]) -> dict[str, Any]:
    """`--param NAME=VALUE` pairs, checked against the compiled pipeline's parameters (name -> KFP type)."""
    valid = ", ".join(sorted(parameters))
    values: dict[str, Any] = {}
    for pair in pairs:
        name, eq, raw = pair.partition("=")
        name = name.strip()
        if not eq or not name:
            raise KubetuneError(f"--param {pair!r}: expected NAME=VALUE; the pipeline's parameters: {valid}")
        if name not in parameters:
            raise KubetuneError(f"--param {name}: unknown pipeline parameter; valid: {valid}")
        if name in values:
            raise KubetuneError(f"--param {name}: given twice")
        values[name] = _param_value(name, raw, parameters[name])
    return values


def _param_value(name: str, raw: str, kind: str) -> Any:
    from components.common.config import config_from_dict, load_config

    if name == "config":  # the whole config: @FILE (YAML) or JSON, validated by the schema
        if raw.startswith("@"):
            return load_config(raw[1:]).model_dump_json()
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise KubetuneError(f"--param config: not JSON ({e.msg}); pass @FILE for a YAML config") from None
        if not isinstance(data, dict):
            raise KubetuneError("--param config: expected a JSON object (the config) or @FILE")
        return config_from_dict(data, source="--param config").model_dump_json()
    if name == "run_id" and raw and not RUN_ID_RE.fullmatch(raw):
        raise KubetuneError(f"--param run_id={raw!r}: expected letters, digits, '.', '_' or '-' (at most 128), "
                            "as it becomes a path segment under <storage.root>/runs/")
    try:
        if kind == "BOOLEAN":
            if raw.strip().lower() not in _TRUE | _FALSE:
                raise ValueError("expected true or false")
            return raw.strip().lower() in _TRUE
        if kind == "NUMBER_INTEGER":
            return int(raw)
        if kind == "NUMBER_DOUBLE":
            return float(raw)
        if kind in ("STRUCT", "LIST"):
            value = json.loads(raw)
            if not isinstance(value, dict if kind == "STRUCT" else list):
                raise ValueError(f"expected a JSON {'object' if kind == 'STRUCT' else 'array'}")
            return value
    except ValueError as e:
        raise KubetuneError(f"--param {name}={raw!r}: not a valid {kind.lower()} ({e})") from None
    return raw


# ------------------------------------------------------------------------------------- compile
@dataclass(frozen=True)
class CompiledPipeline:
    path: Path
    name: str
    description: str
    digest: str  # sha256 of the compiled YAML
    parameters: dict[str, str]  # root parameter name -> KFP parameter type

    @property
    def version_name(self) -> str:
        return f"{self.name}-{self.digest[:12]}"


def compile_for_cluster(cfg, out_dir: Path, source: str = "config") -> CompiledPipeline:
    """Compile for a cluster: every image name must be set (`check_images`) before anything else."""
    from pipelines.compile import check_images, compile_pipeline

    check_images(cfg, source)
    path = Path(out_dir) / "pipeline.yaml"
    compile_pipeline(cfg, path, require_images=True, source=source)
    data = path.read_bytes()
    spec = next(yaml.safe_load_all(data))
    params = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    info = spec["pipelineInfo"]
    return CompiledPipeline(path=path, name=info["name"], description=info.get("description", ""),
                            digest=hashlib.sha256(data).hexdigest(),
                            parameters={k: v.get("parameterType", "STRING") for k, v in params.items()})


# ---------------------------------------------------------------------------------------- auth
@dataclass(frozen=True)
class Auth:
    token: str | None = None
    credentials: Any = None  # a kfp TokenCredentialsBase
    source: str = "none"


def resolve_auth(host: str, kube_context: str | None = None) -> Auth:
    for env in TOKEN_ENVS:
        if os.environ.get(env, "").strip():
            return Auth(token=os.environ[env].strip(), source=f"${env}")
    from kfp import client as kfp_client
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    sa_path = os.environ.get(kfp_client.KF_PIPELINES_SA_TOKEN_ENV) or kfp_client.KF_PIPELINES_SA_TOKEN_PATH
    if os.path.isfile(sa_path):
        return Auth(credentials=ServiceAccountTokenVolumeCredentials(sa_path), source=f"token file {sa_path}")
    token, server = _kube_config_token(kube_context)
    if token and not (_is_loopback(host) or _origin(host) == _origin(server)):
        log.warning("not sending the kube config token to %s: it is neither a loopback address (port-forward) nor "
                    "the cluster's API server %s; set $%s to send a token there", host, server, TOKEN_ENVS[0])
        token = None
    return Auth(token=token, source="kube config") if token else Auth()


def _kube_config_token(context: str | None) -> tuple[str | None, str]:
    """The current (or named) context's bearer token, exec plugins included, and its cluster's server URL."""
    paths = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    if not any(os.path.isfile(p) for p in paths.split(os.pathsep) if p):
        if context:
            raise KubetuneError(f"--kube-context {context}: no kube config at {paths}")
        return None, ""
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    conf = k8s_client.Configuration()
    try:
        k8s_config.load_kube_config(config_file=paths, client_configuration=conf, context=context)
    except Exception as e:  # a broken kube config must not stop a token-less port-forward
        if context:
            raise KubetuneError(f"--kube-context {context}: cannot load the kube config: {e}") from None
        log.warning("cannot load the kube config (%s); connecting without a token", e)
        return None, ""
    value = conf.api_key.get("authorization") or ""
    return value.removeprefix("Bearer ").strip() or None, conf.host or ""


def _origin(url: str) -> tuple:
    parts = urlparse(url)
    return parts.scheme, parts.hostname, parts.port or {"http": 80, "https": 443}.get(parts.scheme)


def _is_loopback(url: str) -> bool:
    host = urlparse(url).hostname
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError, TypeError):
        return ipaddress.ip_address(host).is_loopback
    return False


# -------------------------------------------------------------------------------------- client
def normalize_host(host: str | None) -> str:
    host = (host or "").strip().rstrip("/")
    if not host:
        raise KubetuneError("--host: missing; pass the KFP API URL (or set $KF_PIPELINES_ENDPOINT)")
    if urlparse(host).scheme not in ("http", "https") or not urlparse(host).netloc:
        raise KubetuneError(f"--host {host!r}: expected an http(s) URL such as http://localhost:8888 "
                            "or https://kubeflow.example.com/pipeline")
    return host


def add_connection_arguments(parser) -> None:
    parser.add_argument("--host", default=os.environ.get("KF_PIPELINES_ENDPOINT"), metavar="URL",
                        help="KFP API URL, e.g. http://localhost:8888 (default: $KF_PIPELINES_ENDPOINT)")
    parser.add_argument("--namespace", help="Kubernetes namespace (multi-user KFP only)")
    parser.add_argument("--kube-context", help="kube config context whose token to use (default: current)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="how long to wait for the KFP health check (default: 10)")


# A Kubernetes object name (DNS-1123 subdomain), as a ServiceAccount name must be.
K8S_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def add_service_account_argument(parser) -> None:
    parser.add_argument("--service-account", metavar="NAME", type=service_account_name,
                        help="Kubernetes ServiceAccount of the run's pods, e.g. kubetune-pipeline-runner "
                             "(k8s/rbac.yaml; it must exist in the namespace the runs execute in). "
                             "Default: KFP's (DEFAULT_PIPELINE_RUNNER_SERVICE_ACCOUNT, or default-editor "
                             "in multi-user Kubeflow)")


def service_account_name(value: str) -> str:
    if len(value) > 253 or not K8S_NAME_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r}: expected a Kubernetes object name (lower-case letters, "
                                         "digits, '-' and '.', starting and ending with a letter or digit)")
    return value


def _reason(e: BaseException) -> str:
    inner = getattr(e, "reason", None)
    text = str(inner if isinstance(inner, BaseException) else e)
    if "timed out" in text.lower():
        return "no answer in time"
    return text.rsplit(": ", 1)[-1] if ": " in text else text


def _api_message(body: Any) -> str:
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        message = json.loads(body).get("message")
        return f": {message}" if message else ""
    return ""


class KfpSession:
    """One connection to a KFP API server; wraps kfp.Client and turns its failures into KubetuneErrors."""

    def __init__(self, host: str | None, *, namespace: str | None = None, kube_context: str | None = None,
                 timeout: float = 10.0):
        self.host = normalize_host(host)
        self.ui = normalize_host(os.environ.get("KF_PIPELINES_UI_ENDPOINT") or self.host)
        self.namespace = namespace
        self.kube_context = kube_context
        self.timeout = timeout
        self.client = None

    @classmethod
    def from_args(cls, args) -> KfpSession:
        return cls(args.host, namespace=args.namespace, kube_context=args.kube_context, timeout=args.timeout)

    def run_url(self, run_id: str) -> str:
        return f"{self.ui}/#/runs/details/{run_id}"

    def recurring_run_url(self, recurring_run_id: str) -> str:
        return f"{self.ui}/#/recurringrun/details/{recurring_run_id}"

    # -- connecting
    def connect(self) -> KfpSession:
        import kfp
        import kfp_server_api
        import urllib3

        auth = resolve_auth(self.host, self.kube_context)
        log.debug("KFP auth: %s", auth.source)
        conf = kfp_server_api.Configuration(host=self.host)
        conf.retries = False  # one attempt: a wrong --host must fail now, not after urllib3's retries
        if auth.token or auth.credentials:
            conf.api_key["authorization"] = auth.token or "placeholder"
            conf.api_key_prefix["authorization"] = "Bearer"
            if auth.credentials:
                conf.refresh_api_key_hook = auth.credentials.refresh_api_key_hook
        url = self.host + HEALTHZ_PATH
        try:
            api = kfp_server_api.HealthzServiceApi(kfp_server_api.ApiClient(conf))
            api.healthz_service_get_healthz(_request_timeout=(self.timeout, self.timeout))
        except kfp_server_api.ApiException as e:
            if e.status in (401, 403):
                raise KubetuneError(f"{url}: HTTP {e.status} {e.reason}{_api_message(e.body)}: not authorized "
                                    f"(auth: {auth.source}); set ${TOKEN_ENVS[0]} to a valid token") from None
            if e.status == 0:  # kfp_server_api's wrapping of TLS and protocol errors
                raise KubetuneError(f"cannot reach the KFP API at {url}: {e.reason}") from None
            raise KubetuneError(f"{url}: HTTP {e.status} {e.reason}{_api_message(e.body)}; "
                                "is --host a KFP v2 API server?") from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise KubetuneError(f"cannot reach the KFP API at {url}: {self._failure(e)}; check --host "
                                "(e.g. `kubectl -n kubeflow port-forward svc/ml-pipeline 8888:8888`)") from None
        except ValueError as e:  # an answer that is not a KFP healthz response
            raise KubetuneError(f"{url}: unexpected answer ({e}); is --host a KFP v2 API server?") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "This client only works with KFP v2.0.0-beta.2 and later"
            self.client = self._call("connecting", kfp.Client, host=self.host, existing_token=auth.token,
                                     credentials=auth.credentials, namespace=self.namespace or "kubeflow")
        return self

    def _failure(self, e: BaseException) -> str:
        reason = _reason(e)
        return f"no answer within {self.timeout:g} s" if reason == "no answer in time" else reason

    def _call(self, what: str, fn, *args, **kwargs):
        """Call kfp quietly (it prints its own links) and report failures as one clear line."""
        import kfp_server_api
        import urllib3

        try:
            with contextlib.redirect_stdout(io.StringIO()):
                return fn(*args, **kwargs)
        except kfp_server_api.ApiException as e:
            raise KubetuneError(f"{self.host}: {what}: HTTP {e.status} {e.reason}{_api_message(e.body)}") from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise KubetuneError(f"{self.host}: {what}: connection failed ({_reason(e)})") from None
        except ValueError as e:  # kfp's own checks, e.g. several experiments with one name
            raise KubetuneError(f"{self.host}: {what}: {e}") from None

    @staticmethod
    def _name_filter(name: str) -> str:
        return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})

    # -- pipelines and experiments
    def ensure_pipeline(self, compiled: CompiledPipeline) -> tuple[str, str, str]:
        """(pipeline id, version id, what happened): upload, add a version, or reuse the same spec's version."""
        c = self.client
        found = self._call("finding the pipeline", c.list_pipelines, filter=self._name_filter(compiled.name),
                           namespace=self.namespace).pipelines or []
        if not found:
            pipeline = self._call("uploading the pipeline", c.upload_pipeline, str(compiled.path),
                                  pipeline_name=compiled.name, description=compiled.description,
                                  namespace=self.namespace)
            versions = self._call("listing its versions", c.list_pipeline_versions, pipeline.pipeline_id,
                                  page_size=1, sort_by="created_at desc").pipeline_versions or []
            if not versions:
                raise KubetuneError(f"{self.host}: uploaded pipeline {compiled.name} has no version")
            return pipeline.pipeline_id, versions[0].pipeline_version_id, "uploaded"
        pipeline_id = found[0].pipeline_id
        same = self._call("listing pipeline versions", c.list_pipeline_versions, pipeline_id, page_size=1,
                          filter=self._name_filter(compiled.version_name)).pipeline_versions or []
        if same:
            return pipeline_id, same[0].pipeline_version_id, "unchanged (same spec)"
        version = self._call("uploading a pipeline version", c.upload_pipeline_version, str(compiled.path),
                             compiled.version_name, pipeline_id=pipeline_id,
                             description=f"{compiled.description} (spec sha256:{compiled.digest})")
        return pipeline_id, version.pipeline_version_id, "new version"

    def ensure_experiment(self, name: str) -> str:
        experiment = self._call(f"experiment {name}", self.client.create_experiment, name,
                                namespace=self.namespace)
        return experiment.experiment_id

    # -- runs
    def submit(self, experiment_id: str, pipeline_id: str, version_id: str, run_name: str,
               params: dict[str, Any], service_account: str | None = None) -> str:
        run = self._call("creating the run", self.client.run_pipeline, experiment_id, run_name, params=params,
                         pipeline_id=pipeline_id, version_id=version_id, service_account=service_account)
        return run.run_id

    def schedule(self, experiment_id: str, pipeline_id: str, version_id: str, name: str, *, cron: str,
                 max_concurrency: int, no_catchup: bool, params: dict[str, Any], description: str,
                 service_account: str | None = None) -> str:
        existing = self._call("listing recurring runs", self.client.list_recurring_runs,
                              experiment_id=experiment_id, filter=self._name_filter(name)).recurring_runs or []
        if existing:
            raise KubetuneError(f"recurring run {name!r} already exists in this experiment: "
                                f"{self.recurring_run_url(existing[0].recurring_run_id)}; delete or disable it "
                                "in KFP first, or pass another --name")
        job = self._call("creating the recurring run", self.client.create_recurring_run, experiment_id, name,
                         description=description, cron_expression=cron, max_concurrency=max_concurrency,
                         no_catchup=no_catchup, params=params, pipeline_id=pipeline_id, version_id=version_id,
                         enabled=True, service_account=service_account)
        return job.recurring_run_id

    def list_runs(self, limit: int = 20, experiment: str | None = None) -> list:
        experiment_id = None
        if experiment:
            experiment_id = self._call(f"experiment {experiment}", self.client.get_experiment,
                                       experiment_name=experiment, namespace=self.namespace).experiment_id
        runs, token = [], ""
        while len(runs) < limit:
            page = self._call("listing runs", self.client.list_runs, page_token=token,
                              page_size=min(100, limit - len(runs)), sort_by="created_at desc",
                              experiment_id=experiment_id, namespace=self.namespace)
            runs.extend(page.runs or [])
            token = page.next_page_token
            if not token or not page.runs:
                break
        return runs[:limit]


def default_run_name(pipeline_name: str, suffix: str = "") -> str:
    return f"{pipeline_name}{suffix}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
