"""A STAND-IN for the Kubeflow Pipelines API server: a fake KFP v2beta1 API for tests.

No real KFP API server can run here (it needs a Kubernetes cluster, MySQL and object storage), so
the client code of `kubetune submit`, `schedule` and `runs` is tested against this small
`http.server` on 127.0.0.1 that answers just the v2beta1 endpoints that code uses, with the JSON
shapes of the KFP API (as kfp_server_api deserializes them), and records every request it gets.
It is not KFP: it runs nothing, validates little and keeps its state in memory.

Endpoints: GET healthz; GET pipelines (display_name filter); POST pipelines/upload and
pipelines/upload_version (multipart `uploadfile`); GET pipelines/{id}/versions (filter, newest
first); GET/POST experiments; GET/POST runs, GET runs/{id}; GET/POST recurringruns.
With `token=`, requests without `Authorization: Bearer <token>` get 401 (they are still recorded).
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API = "/apis/v2beta1"


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    json: Any = None
    files: dict[str, tuple[str | None, bytes]] = field(default_factory=dict)  # multipart name -> (filename, bytes)

    def q(self, name: str) -> str | None:
        """The single value of a query parameter."""
        values = self.query.get(name)
        return values[0] if values else None


class _ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    return {part.get_param("name", header="content-disposition"): (part.get_filename(),
                                                                    part.get_payload(decode=True))
            for part in msg.iter_parts()}


def _name_filter(raw: str | None) -> str | None:
    """The display_name of an EQUALS filter (the only filter kubetune sends), else None."""
    if not raw:
        return None
    predicates = json.loads(raw).get("predicates", [])
    for p in predicates:
        if p.get("key") in ("display_name", "name") and p.get("operation") in ("EQUALS", 1):  # kfp sends 1
            return p.get("stringValue") or p.get("string_value")
    raise _ApiError(400, f"stand-in: unsupported filter {raw}")


class FakeKfpApiServer:
    """Stand-in (fake) KFP v2beta1 API server: `with FakeKfpApiServer() as kfp: ... kfp.url, kfp.requests`."""

    def __init__(self, token: str | None = None, multi_user: bool = False):
        self.token, self.multi_user = token, multi_user
        self.requests: list[RecordedRequest] = []
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}  # version id -> version (with pipeline_id)
        self.specs: dict[str, bytes] = {}  # version id -> uploaded file bytes
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.recurring_runs: dict[str, dict] = {}
        self._clock = itertools.count()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # -- lifecycle
    def start(self) -> FakeKfpApiServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server._handle(self, "GET")

            def do_POST(self):
                server._handle(self, "POST")

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True, name="kfp-standin").start()
        return self

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> FakeKfpApiServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # -- helpers for tests
    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests]

    def add_run(self, display_name: str, state: str, experiment_id: str = "", error: str | None = None) -> dict:
        with self._lock:
            run = {"run_id": str(uuid.uuid4()), "display_name": display_name, "experiment_id": experiment_id,
                   "state": state, "created_at": self._now(), "storage_state": "AVAILABLE"}
            if error:
                run["error"] = {"code": 2, "message": error}
            self.runs[run["run_id"]] = run
            return run

    def _now(self) -> str:  # a strictly increasing clock, so "newest first" is deterministic
        t = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=next(self._clock))
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")

    # -- HTTP
    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        req = RecordedRequest(method, parts.path, parse_qs(parts.query, keep_blank_values=True),
                              {k.lower(): v for k, v in h.headers.items()}, body)
        ctype = h.headers.get("Content-Type", "")
        if ctype.startswith("application/json") and body:
            req.json = json.loads(body)
        elif ctype.startswith("multipart/form-data"):
            req.files = _multipart(ctype, body)
        with self._lock:
            self.requests.append(req)
            try:
                if self.token and req.headers.get("authorization") != f"Bearer {self.token}":
                    raise _ApiError(401, "Unauthenticated: missing or invalid bearer token")
                status, payload = 200, self._route(req)
            except _ApiError as e:
                status, payload = e.status, {"code": {401: 16, 404: 5, 409: 6}.get(e.status, 3),
                                             "message": e.message, "details": []}
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _route(self, req: RecordedRequest) -> dict:
        m, p = req.method, req.path
        if not p.startswith(API + "/"):
            raise _ApiError(404, f"stand-in: no route {m} {p}")
        p = p[len(API):]
        seg = p.strip("/").split("/")
        if (m, p) == ("GET", "/healthz"):
            return {"multi_user": self.multi_user, "pipeline_store": "database"}
        if (m, p) == ("GET", "/pipelines"):
            name = _name_filter(req.q("filter"))
            found = [x for x in self.pipelines.values() if name is None or x["display_name"] == name]
            return {"pipelines": found, "total_size": len(found)}
        if (m, p) == ("POST", "/pipelines/upload"):
            return self._upload(req)
        if (m, p) == ("POST", "/pipelines/upload_version"):
            pipeline_id = req.q("pipelineid")
            if pipeline_id not in self.pipelines:
                raise _ApiError(404, f"pipeline {pipeline_id} not found")
            return self._add_version(pipeline_id, req)
        if m == "GET" and len(seg) == 3 and seg[0] == "pipelines" and seg[2] == "versions":
            name = _name_filter(req.q("filter"))
            found = [v for v in self.versions.values() if v["pipeline_id"] == seg[1]
                     and (name is None or v["display_name"] == name)]
            found.sort(key=lambda v: v["created_at"], reverse=(req.q("sort_by") or "").endswith(" desc"))
            return {"pipeline_versions": found[:int(req.q("page_size") or 10)], "total_size": len(found)}
        if (m, p) == ("GET", "/experiments"):
            name = _name_filter(req.q("filter"))
            found = [x for x in self.experiments.values() if name is None or x["display_name"] == name]
            return {"experiments": found, "total_size": len(found)}
        if (m, p) == ("POST", "/experiments"):
            exp = {**req.json, "experiment_id": str(uuid.uuid4()), "created_at": self._now(),
                   "storage_state": "AVAILABLE"}
            self.experiments[exp["experiment_id"]] = exp
            return exp
        if (m, p) == ("POST", "/runs"):
            self._check_refs(req.json)
            run = {**req.json, "run_id": str(uuid.uuid4()), "state": "PENDING", "created_at": self._now(),
                   "storage_state": "AVAILABLE"}
            self.runs[run["run_id"]] = run
            return run
        if (m, p) == ("GET", "/runs"):
            return self._page([r for r in self.runs.values()
                               if req.q("experiment_id") in (None, r.get("experiment_id"))], req, "runs")
        if m == "GET" and len(seg) == 2 and seg[0] == "runs":
            if seg[1] not in self.runs:
                raise _ApiError(404, f"run {seg[1]} not found")
            return self.runs[seg[1]]
        if (m, p) == ("POST", "/recurringruns"):
            self._check_refs(req.json)
            job = {**req.json, "recurring_run_id": str(uuid.uuid4()), "created_at": self._now(),
                   "status": "ENABLED"}
            self.recurring_runs[job["recurring_run_id"]] = job
            return job
        if (m, p) == ("GET", "/recurringruns"):
            name = _name_filter(req.q("filter"))
            found = [j for j in self.recurring_runs.values()
                     if req.q("experiment_id") in (None, j.get("experiment_id"))
                     and (name is None or j["display_name"] == name)]
            return {"recurringRuns": found, "total_size": len(found)}
        raise _ApiError(404, f"stand-in: no route {m} {API}{p}")

    def _upload(self, req: RecordedRequest) -> dict:
        if "uploadfile" not in req.files:
            raise _ApiError(400, "missing multipart field uploadfile")
        name = req.q("name") or req.q("display_name") or req.files["uploadfile"][0]
        if any(x["display_name"] == name for x in self.pipelines.values()):
            raise _ApiError(409, f"pipeline {name} already exists")
        pipeline = {"pipeline_id": str(uuid.uuid4()), "display_name": name, "name": name,
                    "description": req.q("description") or "", "created_at": self._now()}
        if req.q("namespace"):
            pipeline["namespace"] = req.q("namespace")
        self.pipelines[pipeline["pipeline_id"]] = pipeline
        self._add_version(pipeline["pipeline_id"], req)  # KFP creates the first version with the pipeline
        return pipeline

    def _add_version(self, pipeline_id: str, req: RecordedRequest) -> dict:
        if "uploadfile" not in req.files:
            raise _ApiError(400, "missing multipart field uploadfile")
        name = req.q("name") or req.q("display_name")
        if any(v["pipeline_id"] == pipeline_id and v["display_name"] == name for v in self.versions.values()):
            raise _ApiError(409, f"pipeline version {name} already exists")
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": str(uuid.uuid4()), "display_name": name,
                   "name": name, "description": req.q("description") or "", "created_at": self._now()}
        self.versions[version["pipeline_version_id"]] = version
        self.specs[version["pipeline_version_id"]] = req.files["uploadfile"][1]
        return version

    def _check_refs(self, body: dict) -> None:
        ref = body.get("pipeline_version_reference") or {}
        version = self.versions.get(ref.get("pipeline_version_id"))
        if version is None or version["pipeline_id"] != ref.get("pipeline_id"):
            raise _ApiError(404, f"pipeline version {ref} not found")
        if body.get("experiment_id") not in self.experiments:
            raise _ApiError(404, f"experiment {body.get('experiment_id')} not found")

    @staticmethod
    def _page(items: list[dict], req: RecordedRequest, key: str) -> dict:
        items = sorted(items, key=lambda r: r["created_at"], reverse=(req.q("sort_by") or "").endswith(" desc"))
        start, size = int(req.q("page_token") or 0), int(req.q("page_size") or 10)
        page = {key: items[start:start + size], "total_size": len(items)}
        if start + size < len(items):
            page["next_page_token"] = str(start + size)
        return page
