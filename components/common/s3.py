"""S3 from the standard AWS environment: the boto3 client, error translation, concurrent transfers
with progress bars, and the single-object and listing helpers (which also take file:// and plain paths).

Endpoint and credentials come from AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ... (or IRSA).
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from components.common.storage_errors import AccessDenied, EndpointUnreachable, HashMismatch, NotFound, StorageError
from components.common.uris import MiB, is_s3, join_uri, local_path, sha256_file, split_s3, walk_files

# Transfer tuning; read at call time, so tests and benchmarks may lower them (set them on this module).
MULTIPART_THRESHOLD = 64 * MiB
MULTIPART_CHUNKSIZE = 16 * MiB
MAX_CONCURRENCY = 10
MAX_ATTEMPTS = 5  # botocore "standard" retries; AWS_MAX_ATTEMPTS overrides
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 60
PROGRESS_MIN_BYTES = 50 * MiB  # show a tqdm bar (stderr) for transfers larger than this


@dataclass
class ObjectInfo:
    uri: str
    size: int
    etag: str


class TransferStats:
    """Bytes of file data actually moved (manifests not counted). Thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.bytes_uploaded = self.bytes_downloaded = self.files_uploaded = self.files_downloaded = 0

    def add(self, direction: str, nbytes: int = 0, files: int = 0) -> None:
        with self._lock:
            setattr(self, f"bytes_{direction}", getattr(self, f"bytes_{direction}") + nbytes)
            setattr(self, f"files_{direction}", getattr(self, f"files_{direction}") + files)


transfer_stats = TransferStats()

# ---- S3 client and errors ---------------------------------------------------------------------
ENV_KEYS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "AWS_MAX_ATTEMPTS",
            "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")
_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()


def s3_client():
    """A boto3 S3 client configured from the standard AWS environment (cached per environment)."""
    import boto3
    from botocore.config import Config

    key = tuple(os.environ.get(k) for k in ENV_KEYS) + (MAX_ATTEMPTS, CONNECT_TIMEOUT, READ_TIMEOUT)
    with _clients_lock:
        if key in _clients:
            return _clients[key]
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        attempts = int(os.environ.get("AWS_MAX_ATTEMPTS") or MAX_ATTEMPTS)
        config = Config(
            retries={"mode": "standard", "max_attempts": attempts},
            connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
            max_pool_connections=max(10, 2 * MAX_CONCURRENCY),
            # S3-compatible stores (SeaweedFS, MinIO, Ceph) want path-style; no trailing CRC checksums.
            s3={"addressing_style": "path" if endpoint else "auto"},
            request_checksum_calculation="when_required", response_checksum_validation="when_required")
        session = boto3.session.Session()
        try:
            client = session.client("s3", endpoint_url=endpoint or None, config=config,
                                    region_name=session.region_name or "us-east-1")
        except ValueError as e:
            raise StorageError(f"AWS_ENDPOINT_URL_S3={endpoint!r}: invalid S3 endpoint URL ({e}); "
                               "expected e.g. http://127.0.0.1:8333") from e
        if len(_clients) > 8:
            _clients.clear()
        _clients[key] = client
        return client


def s3_error(exc: BaseException, uri: str, action: str, client=None) -> StorageError:
    """The StorageError (NotFound, AccessDenied, EndpointUnreachable, ...) for a boto3/OS error on uri."""
    from botocore.exceptions import ClientError, HTTPClientError, NoCredentialsError, PartialCredentialsError
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from s3transfer.exceptions import RetriesExceededError

    endpoint = getattr(getattr(client, "meta", None), "endpoint_url", None) or "the S3 endpoint"
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, RetriesExceededError) and exc.last_exception is not None:
        return s3_error(exc.last_exception, uri, action, client)
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code, msg = str(err.get("Code", "")), err.get("Message", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        bucket, key = split_s3(uri) if is_s3(uri) else ("?", "?")
        if code in ("404", "NotFound") and client is not None:  # HEAD has no body: which one is missing?
            try:
                client.head_bucket(Bucket=bucket)
            except ClientError as e:
                if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    code = "NoSuchBucket"
        if code == "NoSuchBucket":
            return NotFound(f"{uri}: bucket {bucket!r} does not exist on {endpoint} ({action}); "
                            "expected an existing bucket (create it first)")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return NotFound(f"{uri}: no object with key {key!r} in bucket {bucket!r} on {endpoint} "
                            f"({action})")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                    "InvalidToken", "403") or status == 403:
            return AccessDenied(f"{uri}: access denied by {endpoint} while {action} ({code}: {msg}); check "
                                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's permissions")
        return StorageError(f"{uri}: {action} failed on {endpoint}: {code or status} {msg}")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return AccessDenied(f"{uri}: no usable S3 credentials while {action} ({exc}); expected "
                            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or IRSA) in the environment")
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        return EndpointUnreachable(f"S3 endpoint {endpoint} is unreachable while {action} {uri}: {exc}; "
                                   "check AWS_ENDPOINT_URL_S3 and that the server is running")
    if isinstance(exc, FileNotFoundError):
        return NotFound(f"{exc.filename}: local file not found while {action} {uri}")
    return StorageError(f"{uri}: {action} failed: {type(exc).__name__}: {exc}")


@contextmanager
def translated(uri: str, action: str, client=None):
    """Raise boto3/OS errors inside the block as the StorageError of s3_error."""
    from botocore.exceptions import BotoCoreError, ClientError
    from s3transfer.exceptions import RetriesExceededError

    try:
        yield
    except (ClientError, BotoCoreError, RetriesExceededError, OSError) as e:
        raise s3_error(e, uri, action, client) from e


# ---- transfers --------------------------------------------------------------------------------
def _progress(total: int, desc: str):
    if total < PROGRESS_MIN_BYTES or os.environ.get("KUBETUNE_PROGRESS") == "0":
        return nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr,
                mininterval=0.5 if sys.stderr.isatty() else 10)


def _subscriber(direction: str, bar, size: int | None = None):
    from s3transfer.subscribers import BaseSubscriber

    class Sub(BaseSubscriber):
        def on_queued(self, future, **kwargs):
            if size is not None:  # saves a HEAD request per download
                future.meta.provide_transfer_size(size)

        def on_progress(self, future, bytes_transferred, **kwargs):
            transfer_stats.add(direction, bytes_transferred)
            if bar is not None:
                bar.update(bytes_transferred)

        def on_done(self, future, **kwargs):
            try:
                future.result()
                transfer_stats.add(direction, files=1)
            except Exception:  # the caller reports the error, from the same future
                pass

    return Sub()


def _manager(client):
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNKSIZE,
                            max_concurrency=MAX_CONCURRENCY, num_download_attempts=5,
                            preferred_transfer_client="classic")
    return create_transfer_manager(client, config)


def transfer(direction: str, jobs: list[tuple[str, str, str, str, dict, int]]) -> None:
    """Run (local path, bucket, key, uri, extra, size) transfers concurrently; the first error raises."""
    client = s3_client()
    with _progress(sum(j[5] for j in jobs), direction) as bar, _manager(client) as tm:
        futures = []
        for local, bucket, key, uri, extra, size in jobs:
            with translated(uri, f"{direction[:-2]}ing {local}", client):
                if direction == "uploaded":
                    fut = tm.upload(local, bucket, key, extra_args=extra,
                                    subscribers=[_subscriber(direction, bar)])
                else:
                    fut = tm.download(bucket, key, local, subscribers=[_subscriber(direction, bar, size)])
            futures.append((fut, local, uri))
        for fut, local, uri in futures:  # leaving the `with` on an error cancels the rest
            with translated(uri, f"{direction[:-2]}ing {local}", client):
                fut.result()


def upload_file(local: str | os.PathLike, dest_uri: str, *, sha256: str | None = None) -> str:
    """Upload (s3) or copy (local) one file; the sha256 is stored as object metadata. Returns the sha256."""
    src = Path(local)
    if not src.is_file():
        raise NotFound(f"{src}: local file not found (expected a file to upload to {dest_uri})")
    if not is_s3(dest_uri):
        return copy_hashed(src, local_path(dest_uri))
    sha256 = sha256 or sha256_file(src)
    bucket, key = split_s3(dest_uri)
    extra = {"Metadata": {"sha256": sha256}}
    transfer("uploaded", [(str(src), bucket, key, dest_uri, extra, src.stat().st_size)])
    return sha256


def download_file(uri: str, local: str | os.PathLike) -> Path:
    """Download (s3) or copy (local) one file to `local`; verified when the object carries sha256 metadata."""
    dst = Path(local)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not is_s3(uri):
        src = local_path(uri)
        if not src.is_file():
            raise NotFound(f"{uri}: local file not found (expected a file to download to {dst})")
        copy_hashed(src, dst, "downloaded")
        return dst
    bucket, key = split_s3(uri)
    client = s3_client()
    with translated(uri, "reading object metadata", client):
        head = client.head_object(Bucket=bucket, Key=key)
    transfer("downloaded", [(str(dst), bucket, key, uri, {}, head["ContentLength"])])
    expected = head.get("Metadata", {}).get("sha256")
    if expected and (actual := sha256_file(dst)) != expected:
        raise HashMismatch(f"{uri}: sha256 {actual} of the downloaded file {dst} does not match the "
                           f"expected {expected} (object metadata)")
    return dst


def copy_hashed(src: Path, dst: Path, direction: str = "uploaded") -> str:
    """Copy src to dst atomically (temp file + rename) while hashing; returns the sha256."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")
    h = hashlib.sha256()
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(4 * MiB):
                h.update(chunk)
                fout.write(chunk)
                transfer_stats.add(direction, len(chunk))
        os.replace(tmp, dst)
        transfer_stats.add(direction, files=1)
    finally:
        tmp.unlink(missing_ok=True)
    return h.hexdigest()


# ---- single objects and listings -------------------------------------------------------------
def write_text(uri: str, text: str) -> None:
    """Write text (a manifest, JSON) to an s3 key or, atomically, to a local file."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client()
        with translated(uri, "writing", client):
            client.put_object(Bucket=bucket, Key=key, Body=text.encode(), ContentType="application/json")
        return
    path = local_path(uri)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with translated(uri, "writing"):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)


def create_exclusive(uri: str, text: str) -> bool:
    """Create an s3 key (a conditional PUT, If-None-Match: *) or a local file (O_EXCL) holding text, only
    if nothing is there yet: True when this call created it, False when it already existed. Of writers
    racing for one name, exactly one gets True."""
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        client = s3_client()
        with translated(uri, "creating", client):
            try:
                client.put_object(Bucket=bucket, Key=key, Body=text.encode(), IfNoneMatch="*",
                                  ContentType="application/json")
            except ClientError as e:  # 412: it exists; 409: a concurrent conditional write won
                if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
                    return False
                raise
        return True
    path = local_path(uri)
    with translated(uri, "creating"):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
    return True


def delete(uri: str) -> None:
    """Delete an s3 key or a local file; a missing local file is not an error."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client()
        with translated(uri, "deleting", client):
            client.delete_object(Bucket=bucket, Key=key)
    else:
        local_path(uri).unlink(missing_ok=True)


def list_objects(prefix_uri: str, suffixes: tuple[str, ...] = ()) -> list[ObjectInfo]:
    """Every object/file under a prefix (treated as a directory: s3://b/data lists s3://b/data/...)
    or a local directory (recursive), optionally only names ending in one of suffixes; sorted by uri."""
    prefix_uri, suffixes = str(prefix_uri), tuple(suffixes)
    keep = (lambda name: name.endswith(suffixes)) if suffixes else (lambda name: True)
    out: list[ObjectInfo] = []
    if is_s3(prefix_uri):
        bucket, prefix = split_s3(prefix_uri)
        prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        client = s3_client()
        with translated(prefix_uri, "listing", client):
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                out += [ObjectInfo(f"s3://{bucket}/{o['Key']}", o["Size"], o.get("ETag", "").strip('"'))
                        for o in page.get("Contents", []) if not o["Key"].endswith("/") and keep(o["Key"])]
    else:
        root = local_path(prefix_uri)
        if not root.is_dir():
            raise NotFound(f"{prefix_uri}: local directory not found (expected a directory to list)")
        for p in walk_files(root):
            if keep(p.name):
                st = p.stat()
                out.append(ObjectInfo(join_uri(prefix_uri, p.relative_to(root).as_posix()), st.st_size,
                                      f"{st.st_mtime_ns:x}-{st.st_size:x}"))
    return sorted(out, key=lambda o: o.uri)
