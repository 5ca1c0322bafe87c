"""`kubetune demo`: the whole product on a laptop, with no cluster and no GPU.

1. Build the tiny demo base model and the synthetic datasets (cached after the first time).
2. Start a local SeaweedFS S3 on 127.0.0.1, unless AWS_ENDPOINT_URL_S3 points at one already; and,
   when the demo config tracks (tracking.mlflow_uri on 127.0.0.1), a local MLflow server there,
   unless one answers already (its store in <work dir>/mlflow, its artifacts in the local S3).
3. Upload the base model and the datasets, so that the pipeline reads its inputs from S3 as in a
   cluster (s3://kubetune-demo/models/..., s3://kubetune-demo/datasets/...).
4. Run the pipeline (pipelines/configs/tiny-cpu-demo.yaml) through the KFP local runner.
5. Copy the reports and plots next to you, and print base vs tuned, the gate, the release and GGUFs.
"""

from __future__ import annotations

import logging
import os
import shutil
from contextlib import ExitStack
from pathlib import Path

from components.common import storage
from components.common.config import KubetuneConfig, load_config

log = logging.getLogger("kubetune.demo")

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "tiny-cpu-demo.yaml"
DEMO_BUCKET = "kubetune-demo"
# Where each demo asset goes in S3 (must match the URIs in tiny-cpu-demo.yaml).
MODEL_URI = f"s3://{DEMO_BUCKET}/models/tiny-llama"
DATASET_URIS = {
    "chat": f"s3://{DEMO_BUCKET}/datasets/contracts/chat.jsonl",
    "general": f"s3://{DEMO_BUCKET}/datasets/general/prompt_completion.jsonl",
    "general_heldout": f"s3://{DEMO_BUCKET}/datasets/general/heldout.jsonl",
}


def upload_assets(assets) -> None:
    """Put the demo model (a published directory) and datasets (plain objects) into S3, once."""
    existing = storage.read_manifest(MODEL_URI)
    local_hash = storage.Manifest(uri="", producer="", created_at="", files=[
        storage.FileEntry(p.relative_to(assets.model_dir).as_posix(), p.stat().st_size, storage.sha256_file(p))
        for p in sorted(assets.model_dir.rglob("*")) if p.is_file()]).content_hash()
    if existing is None or existing.content_hash() != local_hash:
        storage.publish_dir(assets.model_dir, MODEL_URI, producer="demo-assets", overwrite=True,
                            lineage={"builder": "pipelines.demo", **assets.model_info})
    for name, uri in DATASET_URIS.items():
        storage.upload_file(getattr(assets, name), uri)


def start_s3(stack: ExitStack, data_dir: Path):
    """A local S3 for the demo, unless the environment already names an endpoint."""
    if os.environ.get("AWS_ENDPOINT_URL_S3"):
        log.info("using the S3 endpoint from AWS_ENDPOINT_URL_S3: %s", os.environ["AWS_ENDPOINT_URL_S3"])
        return None
    from pipelines.local_s3 import LocalS3

    server = stack.enter_context(LocalS3(data_dir))
    os.environ.update(server.env())  # the pipeline's steps (subprocesses) inherit it
    log.info("started a local SeaweedFS S3 at %s (data in %s)", server.endpoint, data_dir)
    return server


MLFLOW_ARTIFACTS = f"s3://{DEMO_BUCKET}/mlflow-artifacts"


def start_mlflow(stack: ExitStack, cfg: KubetuneConfig, data_dir: Path):
    """The demo's MLflow server: when the config tracks into 127.0.0.1/localhost and nothing answers
    there, one is started on that port (`mlflow server` from .venv-mlflow). Returns it, or None."""
    from urllib.parse import urlsplit

    from components.common import tracking

    uri = tracking.tracking_uri(cfg)
    if uri is None:
        return None
    parts = urlsplit(uri)
    if parts.hostname not in ("127.0.0.1", "localhost") or _answers(uri):
        log.info("tracking in the MLflow server at %s", uri)
        return None
    from pipelines.local_mlflow import LocalMlflow

    s3_env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    server = stack.enter_context(LocalMlflow(data_dir, artifacts_uri=MLFLOW_ARTIFACTS, s3_env=s3_env,
                                             port=parts.port or 80))
    log.info("started a local MLflow server at %s (store in %s)", server.url, data_dir)
    return server


def _answers(uri: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2):
            return True
    except OSError:
        return False


def ensure_bucket(server) -> None:
    if server is not None:
        server.ensure_bucket(DEMO_BUCKET)
        return
    client = storage.s3_client()
    try:
        client.head_bucket(Bucket=DEMO_BUCKET)
    except Exception:  # noqa: BLE001 - create it; a real failure surfaces on the create call
        client.create_bucket(Bucket=DEMO_BUCKET)


def copy_reports(run_root: str, outcomes: dict, dest: Path) -> Path:
    """The steps' reports and PNGs, copied out of S3 to dest/<step>/ for people to open."""
    for step in outcomes:
        manifest = storage.read_manifest(storage.join_uri(run_root, step))
        source_uri = (manifest.lineage.get("cached_from") if manifest else None) or storage.join_uri(run_root, step)
        local = storage.fetch_dir(source_uri)
        for path in local.iterdir():
            if path.suffix in (".md", ".png", ".html", ".json") and path.name != storage.MANIFEST_NAME:
                (dest / step).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest / step / path.name)
    return dest


def run_demo(*, work_dir: Path = Path(".kubetune"), config: Path = DEMO_CONFIG, run_id: str | None = None,
             serve: bool = False):
    """serve: after the run, keep the local S3 and MLflow servers up until Ctrl-C (to browse the run)."""
    from pipelines.demo.assets import ensure_demo_assets
    from pipelines.local import run_local
    from pipelines.summary import read_eval_samples

    cfg: KubetuneConfig = load_config(config)
    print("[1/4] demo assets (tiny Llama base model, synthetic contract->JSON datasets)...", flush=True)
    assets = ensure_demo_assets()
    with ExitStack() as stack:
        print("[2/4] local S3...", flush=True)
        server = start_s3(stack, work_dir / "s3")
        ensure_bucket(server)
        mlflow = start_mlflow(stack, cfg, work_dir / "mlflow")
        print("[3/4] uploading the base model and datasets to S3...", flush=True)
        upload_assets(assets)
        print("[4/4] running the pipeline with the KFP local runner "
              "(prepare -> train -> eval -> gate -> merge -> quantize -> publish)...", flush=True)
        result = run_local(cfg, pipeline_root=work_dir / "kfp-local", run_id=run_id)
        reports = copy_reports(result.run_root, result.outcomes, work_dir / "reports" / result.run_id)
        # read here: the summary is printed after the demo's own S3 server has stopped
        samples = read_eval_samples(result)
        if result.mlflow_run_url:
            print(f"MLflow run: {result.mlflow_run_url}", flush=True)
        if serve and (server is not None or mlflow is not None):
            _serve_until_interrupted(result)
    return result, reports, samples


def _serve_until_interrupted(result) -> None:
    import time

    print(f"serving the demo's S3 and MLflow until Ctrl-C; the run: {result.mlflow_run_url or result.run_root}",
          flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("stopping the demo's servers", flush=True)
