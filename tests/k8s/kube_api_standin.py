"""A STAND-IN for the Kubernetes API server (and KFP's health endpoint), for testing `kubetune doctor`.

This is not Kubernetes. No API server can run on the test machine, so `StandInKubeAPI` is a small
`http.server` on 127.0.0.1 that answers exactly the read-only GET endpoints doctor calls, with JSON
shaped like the real API's, from an editable in-memory table of objects:

  GET /version
  GET /api/v1/nodes
  GET /api/v1/namespaces/{ns}
  GET /api/v1/namespaces/{ns}/serviceaccounts/{name}
  GET /api/v1/namespaces/{ns}/secrets/{name}
  GET /api/v1/namespaces/{ns}/persistentvolumeclaims/{name}
  GET /apis/storage.k8s.io/v1/storageclasses/{name}
  GET /api/v1/namespaces/{ns}/services/{name}:{port}/proxy/{path}   (the KFP service, proxied)
  GET /apis/v2beta1/healthz                                          (KFP itself, for --kfp-host)

Anything else is a 404 Status. Every Kubernetes request must carry `Authorization: Bearer <token>` (the
token of the generated kube config), else 401; `forbidden` paths answer 403, `errors` paths the given
status. KFP's own healthz needs no token unless `kfp_token` is set (as standalone KFP). Requests are
recorded with their Authorization header.
"""

from __future__ import annotations

import base64
import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import yaml

TOKEN = "stand-in-token"
KFP_HEALTHZ = {"commit_sha": "0123abc", "tag_name": "2.17.0", "multi_user": False}


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def gpu_node(name: str, gpus: int = 1, *, unschedulable: bool = False, product: str = "NVIDIA-L4") -> dict:
    allocatable = {"cpu": "16", "memory": "64Gi"}
    if gpus:
        allocatable["nvidia.com/gpu"] = str(gpus)
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product} if gpus else {}},
            "spec": {"unschedulable": True} if unschedulable else {},
            "status": {"allocatable": allocatable, "capacity": allocatable}}


def healthy_cluster(namespace: str = "kubetune") -> dict:
    """The objects of a cluster ready for kubetune: every doctor check passes against it."""
    ns = f"/api/v1/namespaces/{namespace}"
    return {
        "nodes": [gpu_node("gpu-node-1", 2), gpu_node("cpu-node-1", 0)],
        ns: {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace},
             "status": {"phase": "Active"}},
        f"{ns}/serviceaccounts/kubetune-pipeline-runner": {
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "kubetune-pipeline-runner", "namespace": namespace}},
        f"{ns}/secrets/kubetune-s3": {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "kubetune-s3", "namespace": namespace},
            "data": {"AWS_ACCESS_KEY_ID": _b64("AKIASTANDIN"), "AWS_SECRET_ACCESS_KEY": _b64("s3cr3t"),
                     "AWS_ENDPOINT_URL_S3": _b64("https://s3.example.com")}},
        f"{ns}/persistentvolumeclaims/kubetune-model-cache": {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "kubetune-model-cache", "namespace": namespace},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard",
                     "resources": {"requests": {"storage": "200Gi"}}},
            "status": {"phase": "Bound", "capacity": {"storage": "200Gi"}}},
        "/apis/storage.k8s.io/v1/storageclasses/standard": {
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "standard"},
            "provisioner": "stand-in.csi.example.com", "volumeBindingMode": "Immediate"},
        # The KFP API server behind the ml-pipeline Service, reached through the API server's proxy.
        "/api/v1/namespaces/kubeflow/services/ml-pipeline:8888/proxy/apis/v2beta1/healthz": KFP_HEALTHZ,
        "/apis/v2beta1/healthz": KFP_HEALTHZ,
    }


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class StandInKubeAPI:
    """Stand-in (fake) Kubernetes API server on 127.0.0.1 for doctor's tests; see the module docstring."""

    def __init__(self, objects: dict | None = None):
        self.objects = objects if objects is not None else healthy_cluster()
        self.forbidden: set[str] = set()
        self.kfp_token: str | None = None
        self.errors: dict[str, int] = {}  # path -> HTTP status to answer instead
        self.requests: list[tuple[str, str | None]] = []  # (path, Authorization header)
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):  # noqa: N802 (http.server's naming)
                # Decoded, as the real API server routes it (the client escapes ':' and the proxied path's '/').
                path = unquote(self.path.split("?", 1)[0]).rstrip("/") or "/"
                standin.requests.append((path, self.headers.get("Authorization")))
                code, body = standin.answer(path, self.headers.get("Authorization"))
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> StandInKubeAPI:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, path: str, auth: str | None) -> tuple[int, dict]:
        if path == "/apis/v2beta1/healthz":  # KFP's API server itself (--kfp-host)
            if self.kfp_token and auth != f"Bearer {self.kfp_token}":
                return 401, {"error": "Unauthorized", "code": 16}
            if path in self.errors:
                return self.errors[path], {"error": "stand-in KFP error", "code": 14}
            return (200, copy.deepcopy(self.objects[path])) if path in self.objects else (404, {"code": 5})
        if auth != f"Bearer {TOKEN}":
            return 401, _status(401, "Unauthorized", "Unauthorized")
        if path in self.errors:
            code = self.errors[path]
            return code, _status(code, "ServiceUnavailable" if code >= 500 else "Error", f"stand-in error {code}")
        if path in self.forbidden:
            return 403, _status(403, "Forbidden", f"{path} is forbidden: User cannot get this resource")
        if path == "/version":
            return 200, {"major": "1", "minor": "31", "gitVersion": "v1.31.4", "gitCommit": "0" * 40,
                         "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
                         "compiler": "gc", "platform": "linux/amd64"}
        if path == "/api/v1/nodes":
            return 200, {"apiVersion": "v1", "kind": "NodeList", "metadata": {},
                         "items": copy.deepcopy(self.objects.get("nodes", []))}
        if path in self.objects:
            return 200, copy.deepcopy(self.objects[path])
        return 404, _status(404, "NotFound", f"{path} not found")

    def kubeconfig(self, path: Path, token: str = TOKEN) -> Path:
        """A kube config whose current context points at this stand-in with a bearer token."""
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
            "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
            "users": [{"name": "stand-in-user", "user": {"token": token}}],
            "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "stand-in-user"}}],
        }
        path.write_text(yaml.safe_dump(config))
        return path
