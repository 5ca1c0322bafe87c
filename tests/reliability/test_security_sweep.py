"""No secret leaks: a distinctive fake secret, planted everywhere a credential comes from, is found 0
times in everything kubetune writes or prints.

The canary `kt-canary-<uuid>` (one value per variable, all sharing that prefix) is put in the
environment of every command: AWS_SECRET_ACCESS_KEY (the real credential of the S3 server used here:
a SeaweedFS started for this module whose identity's secret key IS the canary, so a leak of the
credential actually in use would show), AWS_SESSION_TOKEN is left out (SeaweedFS would reject it),
HF_TOKEN, HUGGING_FACE_HUB_TOKEN, MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_TOKEN, WANDB_API_KEY and
KF_PIPELINES_TOKEN; and in the S3 Secret the pipeline references (cluster.s3_secret_name
`kubetune-s3`), served by the Kubernetes API stand-in (tests/k8s/kube_api_standin.py) that `kubetune
doctor` reads.

Then, each as a child process with DEBUG logging (`kubetune -v`), its stdout and stderr captured:
`kubetune compile` (two configs: the cluster example, and the same with MLflow tracking on, so that
both Secret references are compiled) with --kubernetes-manifests; `kubetune submit`, `schedule` and
`runs` against the KFP API stand-in (tests/pipelines/kfp_standin.py, a named fake; it requires the
canary bearer token, which proves the token reached the client); `kubetune doctor` against the
Kubernetes stand-in; `kubetune s3 cp` of the demo data; `kubetune prepare` and a 4-step `kubetune
train` (checkpoints every 2 steps) of the demo config on that S3 (which checks every request's
signature, so they prove the canary secret was used); `helm template` of charts/vllm (default,
all-features, staging and prod values) and `kubectl kustomize` of every kustomization in k8s/.

Swept afterwards: every captured stdout/stderr, the compiled YAML and manifests, every request the
KFP stand-in received (bodies, uploaded files, query strings and headers other than Authorization),
what it stored, every object in the S3 bucket (downloaded) and each object's metadata, the HOME and
$KUBETUNE_CACHE the commands used, the trainer's local work directory, the rendered chart and
kustomize output. Searched for: the canary prefix (raw and URL-encoded) and each secret's base64.
The full pipeline (`kubetune run-local` / the demo) is not run here: it pre-trains and fine-tunes for
minutes (tests/conftest.py's demo_run); the steps above cover every writer of configs, manifests,
step reports, checkpoints and logs except eval/merge/quantize/publish.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.parse
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "tests" / "pipelines"), str(REPO / "tests" / "k8s")]  # the two stand-ins

from kfp_standin import FakeKfpApiServer  # noqa: E402
from kube_api_standin import StandInKubeAPI, healthy_cluster  # noqa: E402

CANARY = f"kt-canary-{uuid.uuid4().hex}"
SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MLFLOW_TRACKING_PASSWORD",
               "MLFLOW_TRACKING_TOKEN", "WANDB_API_KEY", "KF_PIPELINES_TOKEN")
SECRETS = {name: f"{CANARY}-{name.lower().replace('_', '-')}" for name in SECRET_VARS}
CLUSTER_CONFIG = REPO / "pipelines" / "configs" / "llama3.1-8b-qlora.yaml"
DEMO_CONFIG = REPO / "pipelines" / "configs" / "tiny-cpu-demo.yaml"
CHART = REPO / "charts" / "vllm"
TOOLS = REPO / ".venv" / "tools"
# What would point boto3 or the clients somewhere else than the servers of this test.
NOISE = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID",
         "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CA_BUNDLE", "MLFLOW_TRACKING_URI",
         "MLFLOW_TRACKING_USERNAME", "KUBETUNE_KFP_TOKEN", "KF_PIPELINES_ENDPOINT", "KUBETUNE_RUN_ID")


def needles() -> list[bytes]:
    """What a leak looks like: the canary prefix, raw or URL-encoded, or any one secret in base64."""
    out = {CANARY.encode(), urllib.parse.quote(CANARY).encode()}
    for value in SECRETS.values():
        out.add(base64.b64encode(value.encode()).rstrip(b"="))
        out.add(base64.urlsafe_b64encode(value.encode()).rstrip(b"="))
    return sorted(out)


def sweep(root: Path) -> tuple[int, int, dict[str, int]]:
    """(files searched, bytes searched, {file: hits}) for every regular file under root."""
    files = n_bytes = 0
    hits: dict[str, int] = {}
    pats = needles()
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        files += 1
        n_bytes += len(data)
        found = sum(data.count(p) for p in pats)
        if found:
            hits[str(path.relative_to(root))] = found
    return files, n_bytes, hits


# ---------------------------------------------------------------------------------------- the runs
class Runner:
    """Runs `kubetune -v ...` as a child process with the canary environment; keeps its output."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env, self.n = root, env, 0
        (root / "logs").mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, *argv: str, env: dict | None = None, ok=(0,)) -> subprocess.CompletedProcess:
        self.n += 1
        proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "-v", *argv], cwd=self.root / "cwd",
                              env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=900)
        (self.root / "logs" / f"{self.n:02d}-{name}.stdout").write_text(proc.stdout)
        (self.root / "logs" / f"{self.n:02d}-{name}.stderr").write_text(proc.stderr)
        assert proc.returncode in ok, f"kubetune {' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
        return proc


def tool(name: str) -> str:
    path = TOOLS / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} missing: run `make install-helm`", pytrace=False)
    return str(path)


@pytest.fixture(scope="module")
def canary_s3(tmp_path_factory):
    """A real SeaweedFS whose one identity's secret key is the canary."""
    from pipelines.local_s3 import LocalS3

    server = LocalS3(tmp_path_factory.mktemp("canary-s3"), access_key="KTSWEEPACCESSKEY",
                     secret_key=SECRETS["AWS_SECRET_ACCESS_KEY"])
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def swept(canary_s3, demo, tmp_path_factory):
    """Runs everything (see the module docstring) and returns the sweep root and the stand-ins."""
    from pipelines import local_demo

    root = tmp_path_factory.mktemp("sweep")
    for d in ("cwd", "home", "cache", "compile", "kfp", "doctor", "rendered", "s3", "work", "configs"):
        (root / d).mkdir()
    env = {k: v for k, v in os.environ.items() if k not in NOISE}
    env.update(canary_s3.env())
    env.update(SECRETS, HOME=str(root / "home"), KUBETUNE_CACHE=str(root / "cache"),
               PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               AWS_CONFIG_FILE=str(root / "no-aws-config"), AWS_SHARED_CREDENTIALS_FILE=str(root / "no-aws-creds"),
               AWS_EC2_METADATA_DISABLED="true", KUBECONFIG=str(root / "no-kubeconfig"),
               KF_PIPELINES_SA_TOKEN_PATH=str(root / "no-sa-token"))
    kubetune = Runner(root, env)

    # -- compile: the cluster example, and the same with MLflow tracking (its Secret reference too)
    tracked = yaml.safe_load(CLUSTER_CONFIG.read_text())
    tracked["tracking"] = {"mlflow_uri": "https://mlflow.example.com", "secret_name": "kubetune-mlflow"}
    tracked_cfg = root / "configs" / "tracked.yaml"
    tracked_cfg.write_text(yaml.safe_dump(tracked))
    for name, cfg in (("cluster", CLUSTER_CONFIG), ("tracked", tracked_cfg)):
        kubetune(f"compile-{name}", "compile", "--config", str(cfg), "--output", str(root / "compile" / f"{name}.yaml"),
                 "--kubernetes-manifests", str(root / "compile" / f"{name}-k8s"))

    # -- submit, schedule and runs against the KFP API stand-in, which demands the canary token
    with FakeKfpApiServer(token=SECRETS["KF_PIPELINES_TOKEN"]) as kfp:
        host = ["--host", kfp.url]
        kubetune("submit", "submit", "--config", str(tracked_cfg), *host, "--param", "run_id=sweep-1",
                 "--service-account", "kubetune-pipeline-runner")
        kubetune("schedule", "schedule", "--config", str(tracked_cfg), *host, "--cron", "0 3 * * *")
        kubetune("runs", "runs", *host)
    assert kfp.requests and all(r.headers.get("authorization") == f"Bearer {SECRETS['KF_PIPELINES_TOKEN']}"
                                for r in kfp.requests), "the KFP token did not reach the client"
    for i, r in enumerate(kfp.requests):
        d = root / "kfp" / f"request-{i:02d}"
        d.mkdir()
        headers = {k: v for k, v in r.headers.items() if k != "authorization"}  # the token's one legit place
        (d / "request.json").write_text(json.dumps({"method": r.method, "path": r.path, "query": r.query,
                                                     "headers": headers}))
        (d / "body").write_bytes(r.body)
        for field, (_, data) in r.files.items():
            (d / f"file-{field}").write_bytes(data)
    for vid, spec in kfp.specs.items():
        (root / "kfp" / f"stored-spec-{vid}.yaml").write_bytes(spec)
    (root / "kfp" / "stored-state.json").write_text(json.dumps(
        {"pipelines": kfp.pipelines, "versions": kfp.versions, "experiments": kfp.experiments, "runs": kfp.runs,
         "recurring_runs": kfp.recurring_runs}))

    # -- doctor against the Kubernetes stand-in, whose S3 Secret holds the canary
    objects = healthy_cluster()
    secret = objects["/api/v1/namespaces/kubetune/secrets/kubetune-s3"]
    secret["data"]["AWS_SECRET_ACCESS_KEY"] = base64.b64encode(SECRETS["AWS_SECRET_ACCESS_KEY"].encode()).decode()
    kube = StandInKubeAPI(objects).start()
    try:
        kubeconfig = kube.kubeconfig(root / "doctor" / "kubeconfig")
        proc = kubetune("doctor", "doctor", "--kubeconfig", str(kubeconfig), env={"KUBECONFIG": str(kubeconfig)})
        assert "PASS  s3-secret" in proc.stdout or "PASS s3-secret" in " ".join(proc.stdout.split()), proc.stdout
    finally:
        kube.stop()
    assert any(p.endswith("/secrets/kubetune-s3") for p, _ in kube.requests), "doctor did not read the Secret"

    # -- the demo's data and model on the canary S3, then prepare and train through the CLI
    canary_s3.ensure_bucket(local_demo.DEMO_BUCKET)
    saved = {k: os.environ.get(k) for k in (*canary_s3.env(), "KUBETUNE_CACHE")}
    os.environ.update(canary_s3.env(), KUBETUNE_CACHE=str(root / "cache"))
    try:
        from components.common import storage

        storage.publish_dir(demo.model_dir, local_demo.MODEL_URI, producer="demo-assets", overwrite=True)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    for name, uri in local_demo.DATASET_URIS.items():
        kubetune(f"s3-cp-{name}", "s3", "cp", str(getattr(demo, name)), uri)
    run = f"s3://{local_demo.DEMO_BUCKET}/demo/runs/sweep-1"
    common = ["--config", str(DEMO_CONFIG), "--set", "tracking.mlflow_uri=null"]
    kubetune("prepare", "prepare", *common, "--output", f"{run}/prepare")
    kubetune("train", "train", *common, "--set", "train.max_steps=4", "--set", "train.save_steps=2",
             "--set", "train.eval_steps=2", "--set", "train.logging_steps=1", "--dataset", f"{run}/prepare",
             "--output", f"{run}/train", "--work-dir", str(root / "work"))
    kubetune("s3-cp-back", "s3", "cp", f"{run}/", str(root / "s3" / "copied-back"), "--recursive")

    # -- every object in the bucket, and its metadata
    client = canary_s3.client()
    meta = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=local_demo.DEMO_BUCKET):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            dest = root / "s3" / "bucket" / key
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(local_demo.DEMO_BUCKET, key, str(dest))
            head = client.head_object(Bucket=local_demo.DEMO_BUCKET, Key=key)
            meta[key] = {"Metadata": head.get("Metadata"), "ContentType": head.get("ContentType")}
    (root / "s3" / "object-metadata.json").write_text(json.dumps(meta))

    # -- the chart and k8s/, rendered with the canary environment
    helm, kubectl = tool("helm"), tool("kubectl")
    renders = {"default": [CHART / "ci" / "default-values.yaml"],
               "all-features": [CHART / "ci" / "all-features-values.yaml"],
               **{env_: [REPO / "k8s" / "gitops" / env_ / "values.yaml"] for env_ in ("staging", "prod")}}
    for name, files in renders.items():
        cmd = [helm, "template", "contracts", str(CHART), "--namespace", "llm"]
        for f in files:
            cmd += ["-f", str(f)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=True)
        (root / "rendered" / f"chart-{name}.yaml").write_text(out.stdout + out.stderr)
    for k in sorted(p.parent for p in (REPO / "k8s").rglob("kustomization.yaml")):
        out = subprocess.run([kubectl, "kustomize", str(k)], env=env, capture_output=True, text=True, timeout=120,
                             check=True)
        (root / "rendered" / f"kustomize-{k.relative_to(REPO).as_posix().replace('/', '-')}.yaml").write_text(
            out.stdout + out.stderr)
    return root


def test_no_secret_is_found_in_any_output(swept):
    files, n_bytes, hits = sweep(swept)
    with_kind = {d.name: sum(1 for p in d.rglob("*") if p.is_file()) for d in sorted(swept.iterdir()) if d.is_dir()}
    summary = {"canary": CANARY, "files_searched": files, "bytes_searched": n_bytes, "canary_hits": sum(hits.values()),
               "files_by_area": with_kind}
    (swept.parent / f"{swept.name}-summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\n[security sweep] {json.dumps(summary)}")
    assert not hits, f"secrets leaked into: {hits}"
    # The sweep looked at real output of every kind (so that it can fail).
    assert files >= 60, summary
    for area in ("logs", "compile", "kfp", "s3", "rendered", "cache"):
        assert with_kind.get(area, 0) > 0, (area, summary)
    logs = "".join(p.read_text() for p in (swept / "logs").iterdir())
    assert "DEBUG" in logs, "the commands ran with debug logging"


def test_what_was_swept_is_the_real_output(swept):
    """Guards against an empty sweep: the compiled pipeline references the Secrets by name only, the
    train step published checkpoints and its outputs, prepare its report."""
    compiled = (swept / "compile" / "tracked.yaml").read_text()
    assert "kubetune-s3" in compiled and "kubetune-mlflow" in compiled and "AWS_SECRET_ACCESS_KEY" in compiled
    bucket = swept / "s3" / "bucket" / "demo" / "runs" / "sweep-1"
    assert (bucket / "prepare" / "report.md").is_file() and (bucket / "prepare" / "_manifest.json").is_file()
    assert (bucket / "train" / "_manifest.json").is_file() and (bucket / "train" / "trainer_log.jsonl").is_file()
    assert list((bucket / "train" / "checkpoints").glob("checkpoint-*/trainer_state.json"))
    assert len(list((swept / "kfp").glob("stored-spec-*"))) >= 1


def test_the_sweep_can_fail(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "log.txt").write_text(f"token={SECRETS['HF_TOKEN']}\n")
    encoded = base64.b64encode(SECRETS["AWS_SECRET_ACCESS_KEY"].encode()).decode()
    (tmp_path / "secret.yaml").write_text(f"data:\n  AWS_SECRET_ACCESS_KEY: {encoded}\n")
    (tmp_path / "url.txt").write_text(urllib.parse.quote(f"x={CANARY}/y"))
    (tmp_path / "clean.txt").write_text("nothing here\n")
    files, _, hits = sweep(tmp_path)
    assert files == 4 and set(hits) == {"a/log.txt", "secret.yaml", "url.txt"}, hits


def test_the_canary_s3_checks_the_secret(canary_s3, tmp_path):
    """The S3 runs above prove the canary was the credential in use: a wrong secret is refused."""
    src = tmp_path / "f.txt"
    src.write_text("x")
    canary_s3.ensure_bucket("kt-sweep-check")
    env = {k: v for k, v in os.environ.items() if k not in NOISE}
    env.update(canary_s3.env(), AWS_SECRET_ACCESS_KEY="not-the-secret", PYTHONPATH=str(REPO),
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true", KUBETUNE_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "s3", "cp", str(src), "s3://kt-sweep-check/f.txt"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------- the demo run
def test_the_demo_pipeline_run_leaks_no_secret(demo_run, s3_server, tmp_path):
    """run-local and the demo: the session's one run of the demo pipeline (tests/conftest.py demo_run,
    shared with tests/pipelines, tests/serving and tests/tracking, so this costs no extra training) ran
    with the S3 server's secret key and MLflow credentials in its environment. Neither may appear in
    anything it wrote: the KFP local runner's root (executor inputs and outputs) and every object in
    every bucket of the S3 server (step outputs and reports, checkpoints, the release, MLflow artifacts)."""
    from demo_run import DEMO_RUN_MLFLOW_CREDENTIALS

    secrets = [s3_server.secret_key, DEMO_RUN_MLFLOW_CREDENTIALS["MLFLOW_TRACKING_PASSWORD"]]
    pats = sorted({p for s in secrets for p in (s.encode(), urllib.parse.quote(s).encode(),
                                                 base64.b64encode(s.encode()).rstrip(b"="))})
    client = s3_server.client()
    objects, hits = 0, {}
    for bucket in (b["Name"] for b in client.list_buckets()["Buckets"]):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                data = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                objects += 1
                if found := sum(data.count(p) for p in pats):
                    hits[f"s3://{bucket}/{obj['Key']}"] = found
    files = 0
    for path in sorted(demo_run.pipeline_root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            files += 1
            if found := sum(path.read_bytes().count(p) for p in pats):
                hits[str(path)] = found
    print(f"\n[security sweep, demo run] {objects} S3 objects and {files} local files searched, {len(hits)} hits")
    assert not hits, f"secrets leaked into: {hits}"
    assert objects > 50 and files > 5, (objects, files)  # the run's outputs really were there
