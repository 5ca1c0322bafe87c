"""Helpers of test_faults.py (issue 18, section 2): real processes to break, and ways to break them.

  OwnedS3           a SeaweedFS server (pipelines.local_s3.LocalS3) that one test owns: SIGKILLed and
                    restarted on the same ports and data directory (the session's shared server is never
                    touched)
  clean_env         the environment of a kubetune subprocess: one OpenMP thread, no progress bars, the AWS
                    variables of the given S3 only
  kubetune          the real CLI (`python -m pipelines.cli`) in a subprocess
  tmpfs             a size-limited tmpfs, unmounted (and removed) in a finally
  step_process      the process of one KFP task (e.g. train) under a local run's process tree
  pipeline_config   a fast pipeline config on the tiny random demo model

Run as a script, it is the child process of some tests (so a fault can hit a separate process):

  python faults_helpers.py publish-dir SRC URI               storage.publish_dir, one transfer at a time
  python faults_helpers.py pipeline CONFIG RUN_ID ROOT N OUT  pipelines.local.run_local(retries=N), summary to OUT
  python faults_helpers.py publish CONFIG DIRS VERSION RUN_ID GO   publish.step.run once the file GO exists
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve()
if str(REPO) not in sys.path:  # run as a script from any directory
    sys.path.insert(0, str(REPO))

# How many transfers publish-dir runs at once (components.common.s3.MAX_CONCURRENCY, a tuning constant):
# one, so that an upload of a few MB lasts long enough for the test to kill the server in its middle.
PUBLISH_CONCURRENCY = 1
# The KFP retry backoff of the pipeline run by `pipeline` (pipelines.finetune.RETRY_BACKOFF, 60 s on a
# cluster): a local retry after a preemption need not wait a minute.
LOCAL_RETRY_BACKOFF = "1s"


# ---- environments and subprocesses -------------------------------------------------------------
def clean_env(s3: dict | None = None, **extra: str) -> dict[str, str]:
    """os.environ without any AWS or MLflow setting, plus the given S3 environment and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.update({"OMP_NUM_THREADS": "1", "KUBETUNE_PROGRESS": "0", "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1", "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull})
    env.update(s3 or {})
    env.update(extra)
    return env




def kubetune(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """The kubetune CLI in a subprocess (stdout and stderr captured as text)."""
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def start(args: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    """A child process (this interpreter), its output appended to log_path."""
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_until(predicate, timeout: float, interval: float = 0.02, what: str = "condition", proc=None):
    """Poll predicate() until it returns something truthy (returned); fail after timeout, or as soon as
    `proc` exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process exited with {proc.returncode} before {what}")
        time.sleep(interval)
    raise AssertionError(f"no {what} within {timeout:.0f} s")


# ---- an S3 server of one's own -----------------------------------------------------------------
class OwnedS3:
    """A LocalS3 this test started: kill() is SIGKILL to its whole process group (no clean shutdown),
    restart() starts it again on the same ports (S3 and every internal one) and data directory, with
    the same credential (LocalS3 keeps it in data_dir/s3cfg.json)."""

    def __init__(self, data_dir: Path):
        from pipelines.local_s3 import LocalS3

        self.data_dir = Path(data_dir)
        self.server = LocalS3(self.data_dir)

    def start(self) -> OwnedS3:
        self.server.start()
        self.port, self.ports = self.server.port, list(self.server._ports)
        return self

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        return {**self.server.env(), **extra}

    def client(self):
        """A boto3 client of the server as it runs now (one attempt per request: no retries)."""
        return self.server.client(max_attempts=1)

    def kill(self) -> None:
        proc = self.server._proc
        assert proc is not None and proc.poll() is None, "the owned S3 server is not running"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        self.server.stop()  # the process is gone: this only removes its sockets

    def restart(self, timeout: float = 30) -> None:
        from pipelines import local_s3

        self.server = local_s3.LocalS3(self.data_dir, port=self.port)
        real_free_ports = local_s3.free_ports
        local_s3.free_ports = lambda n: list(self.ports)  # the same internal ports as before
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    self.server.start()
                    break
                except local_s3.S3ServerError:  # a port still held by the dying process: try again
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
        finally:
            local_s3.free_ports = real_free_ports
        self._wait_readable(timeout)

    def _wait_readable(self, timeout: float) -> None:
        """S3 answers a listing before the volume server has re-registered with the master; until then
        a read is a 500 InternalError. Wait until an object (if there is one) can be read."""
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            try:
                for bucket in client.list_buckets().get("Buckets", []):
                    found = client.list_objects_v2(Bucket=bucket["Name"], MaxKeys=1).get("Contents", [])
                    if found:
                        client.get_object(Bucket=bucket["Name"], Key=found[0]["Key"])["Body"].read()
                return
            except Exception:  # noqa: BLE001 - not ready yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        self.server.stop()


def bucket_objects(client, bucket: str, prefix: str = "") -> dict[str, int]:
    """{key: size} of every object under the prefix."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def count_objects(client, bucket: str, prefix: str = "") -> int:
    """How many objects are under the prefix, or -1 when the server does not answer."""
    try:
        return len(bucket_objects(client, bucket, prefix))
    except Exception:  # noqa: BLE001 - a server being killed answers anything
        return -1


def object_sha256(client, bucket: str, key: str) -> tuple[str, str | None]:
    """(sha256 of the object's bytes, the sha256 of its metadata or None)."""
    import hashlib

    got = client.get_object(Bucket=bucket, Key=key)
    return hashlib.sha256(got["Body"].read()).hexdigest(), got.get("Metadata", {}).get("sha256")


def write_random_files(root: Path, n: int, size: int) -> dict[str, str]:
    """n files of `size` random bytes under root (two levels); {relative path: sha256}."""
    import hashlib

    out = {}
    for i in range(n):
        rel = f"part-{i // 10}/shard-{i:03d}.bin"
        data = os.urandom(size)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        out[rel] = hashlib.sha256(data).hexdigest()
    return out


# ---- a small filesystem ------------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A tmpfs of `size` (e.g. "40m") mounted at path for the block; unmounted in a finally. Raises
    OSError with mount's message when it cannot be mounted (not root, no CAP_SYS_ADMIN)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=1777", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise OSError(f"mount -t tmpfs at {path} failed: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.5)  # a child may still be closing a file there
        else:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill_disk(directory: Path, chunk: int = 1 << 20) -> int:
    """Write a file under directory until the filesystem is full (ENOSPC); returns the bytes written.
    The file stays: the disk stays full until it is deleted."""
    path = Path(directory) / f"filler-{uuid.uuid4().hex[:8]}"
    written = 0
    block = b"\0" * chunk
    try:
        with open(path, "wb", buffering=0) as f:
            while True:
                written += f.write(block)
    except OSError:
        try:  # the last few KiB too
            with open(path, "ab", buffering=0) as f:
                while True:
                    written += f.write(b"\0" * 4096)
        except OSError:
            pass
    return written


# ---- the processes of a local pipeline run -----------------------------------------------------
def step_process(root_pid: int, function: str):
    """The Python process of the KFP task running `function` (the component's function name, e.g.
    "train") anywhere under root_pid, or None."""
    import psutil

    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for p in children:
        try:
            cmd = p.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if "--function_to_execute" in cmd and cmd[cmd.index("--function_to_execute") + 1:][:1] == [function] \
                and "python" in Path(cmd[0]).name and "-m" in cmd:
            return p
    return None


def pipeline_config(*, root: str, model_uri: str, data_uri: str, max_steps: int = 30, save_steps: int = 5,
                    seed: int = 7, version: str | None = None) -> dict:
    """The whole pipeline on the tiny random demo model, as fast as it goes: LoRA for `max_steps`, a
    short eval whose gate always passes (a random model improves on nothing), one GGUF type. No step is
    cached, so every run computes its own outputs, and nothing is tracked."""
    from components.common.steps import STEP_NAMES

    return {
        "model": {"name": "faults-tiny", "base": model_uri, "dtype": "float32"},
        "data": {"sources": [{"uri": data_uri, "name": "contracts"}]},
        "storage": {"root": root},
        "prepare": {"max_seq_len": 256, "max_records": 64, "test_ratio": 0.125, "seed": 7},
        "train": {"method": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "max_steps": max_steps,
                  "per_device_batch_size": 2, "gradient_accumulation_steps": 1, "lr": 0.003,
                  "max_grad_norm": 1.0, "optim": "adamw_torch", "gradient_checkpointing": False,
                  "warmup_ratio": 0.0, "eval_steps": 1000, "save_steps": save_steps, "logging_steps": 5,
                  "seed": seed},
        "eval": {"max_new_tokens": 8, "batch_size": 4, "max_examples": 4, "num_samples_in_report": 1,
                 "gate": {"min_primary_improvement": -1.0}},
        "merge": {"dtype": "float32", "verify_prompts": 1},
        "quantize": {"types": ["Q8_0"], "eval_records": 2, "generate_records": 1, "generate_tokens": 4,
                     "eval_max_tokens": 64, "hf_reference": False, "max_ppl_delta_pct": 1000.0, "threads": 1},
        "publish": {"version": version},
        "cluster": {"steps": {name: {"caching": False, "use_gpu": False} for name in STEP_NAMES}},
        "tracking": {"mlflow_uri": None},
    }


# ---- the child processes -----------------------------------------------------------------------
def _publish_dir(src: str, uri: str) -> int:
    from components.common import s3, storage

    s3.MAX_CONCURRENCY = PUBLISH_CONCURRENCY
    try:
        manifest = storage.publish_dir(src, uri, producer="faults-test")
    except storage.StorageError as e:
        print(f"publish-dir: error: {e}", file=sys.stderr, flush=True)
        return 2
    print(f"published {len(manifest.files)} files to {uri} (content {manifest.content_hash()})", flush=True)
    return 0


def _pipeline(config: str, run_id: str, pipeline_root: str, retries: str, out: str) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import pipelines.finetune as finetune
    from components.common.config import KubetuneConfig
    from components.common.errors import KubetuneError
    from pipelines.local import run_local

    finetune.RETRY_BACKOFF = LOCAL_RETRY_BACKOFF
    cfg = KubetuneConfig.model_validate_json(Path(config).read_text())
    started = time.monotonic()
    try:
        result = run_local(cfg, pipeline_root=pipeline_root, run_id=run_id, retries=int(retries))
    except KubetuneError as e:
        print(f"pipeline: error: {e}", file=sys.stderr, flush=True)
        return 2
    Path(out).write_text(json.dumps({"run_id": result.run_id, "run_root": result.run_root,
                                     "wall_seconds": time.monotonic() - started,
                                     "outcomes": result.outcomes, "release": result.release}, default=str))
    return 0


def _publish(config: str, dirs: str, version: str, run_id: str, go: str) -> int:
    from components.common.config import KubetuneConfig
    from components.common.errors import KubetuneError
    from components.publish import step

    cfg = KubetuneConfig.model_validate_json(Path(config).read_text())
    parts = {k: Path(v) if v else None for k, v in json.loads(Path(dirs).read_text()).items()}
    while not Path(go).exists():  # both racers start publishing at the same moment
        time.sleep(0.002)
    try:
        release = step.run(cfg, merged=parts["merged"], eval_dir=parts["eval_dir"], adapter=parts["adapter"],
                           gguf=parts["gguf"], run_id=run_id, version=version)
    except KubetuneError as e:
        print(f"publish: error: {e}", file=sys.stderr, flush=True)
        return 2
    print(f"published {release.uri} content {release.manifest.content_hash()}", flush=True)
    return 0


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    sys.exit({"publish-dir": _publish_dir, "pipeline": _pipeline, "publish": _publish}[command](*rest))
