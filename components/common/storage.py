"""Artifacts through S3 (or file:// and plain paths): publish a directory with a manifest, fetch it back.

A published directory is its files plus `_manifest.json` (sizes, sha256, producer, lineage), written
last, so a directory with a manifest is complete. Fetches verify every sha256 and go through the
content-addressed cache in `components.common.cache`; a second fetch of the same content downloads
no file data. Endpoint and credentials come from the standard AWS environment (AWS_ENDPOINT_URL_S3,
AWS_ACCESS_KEY_ID, ... or IRSA).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from components.common import cache
from components.common.errors import KubetuneError

MANIFEST_NAME = "_manifest.json"
MiB = 1024 * 1024
# Transfer tuning; read at call time, so tests and benchmarks may lower them.
MULTIPART_THRESHOLD = 64 * MiB
MULTIPART_CHUNKSIZE = 16 * MiB
MAX_CONCURRENCY = 10
MAX_ATTEMPTS = 5  # botocore "standard" retries; AWS_MAX_ATTEMPTS overrides
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 60
PROGRESS_MIN_BYTES = 50 * MiB  # show a tqdm bar (stderr) for transfers larger than this
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt"]


class StorageError(KubetuneError):
    """An artifact could not be stored or fetched."""


class NotFound(StorageError):
    """Missing bucket, key, local path or manifest."""


class AccessDenied(StorageError):
    """403, bad credentials or a signature mismatch."""


class EndpointUnreachable(StorageError):
    """Connection refused, DNS failure or timeout; the message names the endpoint URL."""


class HashMismatch(StorageError):
    """A file's content does not match the sha256 its manifest or metadata promised."""


@dataclass
class FileEntry:
    path: str  # relative to the manifest's directory, posix
    size: int
    sha256: str


@dataclass
class Manifest:
    uri: str
    producer: str
    created_at: str
    files: list[FileEntry]
    lineage: dict = field(default_factory=dict)

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for path, sha in sorted((f.path, f.sha256) for f in self.files):
            h.update(f"{path}\0{sha}\n".encode())
        return h.hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(version=1, content_hash=self.content_hash(), total_bytes=self.total_bytes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        try:
            m = cls(uri=d["uri"], producer=d["producer"], created_at=d["created_at"],
                    files=[FileEntry(f["path"], int(f["size"]), f["sha256"]) for f in d["files"]],
                    lineage=dict(d.get("lineage") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise StorageError(f"manifest {d.get('uri', '?') if isinstance(d, dict) else '?'}: expected keys "
                               f"uri, producer, created_at, files[path,size,sha256], lineage ({e!r})") from e
        for f in m.files:  # fetches write these paths under a local directory: keep them inside it
            parts = PurePosixPath(f.path).parts
            if not parts or f.path.startswith("/") or ".." in parts or "\\" in f.path:
                raise StorageError(f"manifest {m.uri}: unsafe file path {f.path!r}; expected a relative "
                                   "posix path inside the published directory")
        if "content_hash" in d and d["content_hash"] != m.content_hash():
            raise StorageError(f"manifest {m.uri}: content_hash {d['content_hash']} does not match its files "
                               f"({m.content_hash()}); the manifest was edited or corrupted")
        return m

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


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

# ---- URIs -------------------------------------------------------------------------------------
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def is_hf(uri: str) -> bool:
    return str(uri).startswith("hf://")


def split_s3(uri: str) -> tuple[str, str]:
    if not is_s3(uri):
        raise StorageError(f"{uri!r}: expected an s3://BUCKET/KEY URI")
    bucket, _, key = uri[5:].partition("/")
    if not _BUCKET_RE.match(bucket):
        raise StorageError(f"{uri!r}: bucket name {bucket!r} is invalid (expected 3-63 lowercase letters, "
                           "digits, dots or hyphens, as in s3://BUCKET/KEY)")
    return bucket, key.lstrip("/")


def join_uri(base: str, *parts: str) -> str:
    base = str(base)
    tail = "/".join(p.strip("/") for p in map(str, parts) if p.strip("/"))
    if not tail:
        return base
    return f"{base.rstrip('/')}/{tail}" if base.rstrip("/") or not base else f"/{tail}"


def local_path(uri: str | os.PathLike) -> Path:
    uri = str(uri)
    if uri.startswith("file://"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise StorageError(f"{uri!r}: expected file:///ABSOLUTE/PATH (a local file URI, no host)")
        return Path(unquote(parts.path))
    if "://" in uri:
        raise StorageError(f"{uri!r}: expected a local path or a file:// URI here")
    return Path(uri).expanduser()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def _walk(local_dir: Path) -> list[Path]:
    files = (p for p in local_dir.rglob("*") if p.is_file())
    return sorted(files, key=lambda p: p.relative_to(local_dir).as_posix())


# ---- S3 client and errors ---------------------------------------------------------------------
_ENV_KEYS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
             "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "AWS_MAX_ATTEMPTS",
             "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")
_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()


def s3_client():
    """A boto3 S3 client configured from the standard AWS environment (cached per environment)."""
    import boto3
    from botocore.config import Config

    key = tuple(os.environ.get(k) for k in _ENV_KEYS) + (MAX_ATTEMPTS, CONNECT_TIMEOUT, READ_TIMEOUT)
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


def _s3_error(exc: BaseException, uri: str, action: str, client=None) -> StorageError:
    from botocore.exceptions import ClientError, HTTPClientError, NoCredentialsError, PartialCredentialsError
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from s3transfer.exceptions import RetriesExceededError

    endpoint = getattr(getattr(client, "meta", None), "endpoint_url", None) or "the S3 endpoint"
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, RetriesExceededError) and exc.last_exception is not None:
        return _s3_error(exc.last_exception, uri, action, client)
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
def _translated(uri: str, action: str, client=None):
    from botocore.exceptions import BotoCoreError, ClientError
    from s3transfer.exceptions import RetriesExceededError

    try:
        yield
    except (ClientError, BotoCoreError, RetriesExceededError, OSError) as e:
        raise _s3_error(e, uri, action, client) from e


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


def _transfer(direction: str, jobs: list[tuple[str, str, str, str, dict, int]]) -> None:
    """Run (local path, bucket, key, uri, extra, size) transfers concurrently; the first error raises."""
    client = s3_client()
    with _progress(sum(j[5] for j in jobs), direction) as bar, _manager(client) as tm:
        futures = []
        for local, bucket, key, uri, extra, size in jobs:
            with _translated(uri, f"{direction[:-2]}ing {local}", client):
                if direction == "uploaded":
                    fut = tm.upload(local, bucket, key, extra_args=extra,
                                    subscribers=[_subscriber(direction, bar)])
                else:
                    fut = tm.download(bucket, key, local, subscribers=[_subscriber(direction, bar, size)])
            futures.append((fut, local, uri))
        for fut, local, uri in futures:  # leaving the `with` on an error cancels the rest
            with _translated(uri, f"{direction[:-2]}ing {local}", client):
                fut.result()


def upload_file(local: str | os.PathLike, dest_uri: str, *, sha256: str | None = None) -> str:
    """Upload (s3) or copy (local) one file; the sha256 is stored as object metadata. Returns the sha256."""
    src = Path(local)
    if not src.is_file():
        raise NotFound(f"{src}: local file not found (expected a file to upload to {dest_uri})")
    if not is_s3(dest_uri):
        return _copy_hashed(src, local_path(dest_uri))
    sha256 = sha256 or sha256_file(src)
    bucket, key = split_s3(dest_uri)
    extra = {"Metadata": {"sha256": sha256}}
    _transfer("uploaded", [(str(src), bucket, key, dest_uri, extra, src.stat().st_size)])
    return sha256


def download_file(uri: str, local: str | os.PathLike) -> Path:
    """Download (s3) or copy (local) one file to `local`; verified when the object carries sha256 metadata."""
    dst = Path(local)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not is_s3(uri):
        src = local_path(uri)
        if not src.is_file():
            raise NotFound(f"{uri}: local file not found (expected a file to download to {dst})")
        _copy_hashed(src, dst, "downloaded")
        return dst
    bucket, key = split_s3(uri)
    client = s3_client()
    with _translated(uri, "reading object metadata", client):
        head = client.head_object(Bucket=bucket, Key=key)
    _transfer("downloaded", [(str(dst), bucket, key, uri, {}, head["ContentLength"])])
    expected = head.get("Metadata", {}).get("sha256")
    if expected and (actual := sha256_file(dst)) != expected:
        raise HashMismatch(f"{uri}: sha256 {actual} of the downloaded file {dst} does not match the "
                           f"expected {expected} (object metadata)")
    return dst


def _copy_hashed(src: Path, dst: Path, direction: str = "uploaded") -> str:
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


# ---- publish ----------------------------------------------------------------------------------
def publish_dir(local_dir: str | os.PathLike, dest_uri: str, *, producer: str, lineage: dict | None = None,
                overwrite: bool = False) -> Manifest:
    """Store every file under local_dir at dest_uri, then write dest_uri/_manifest.json last."""
    src = Path(local_dir)
    if not src.is_dir():
        raise NotFound(f"{src}: local directory not found (expected a directory to publish to {dest_uri})")
    dest_uri = str(dest_uri).rstrip("/") or str(dest_uri)
    files = [p for p in _walk(src) if p.relative_to(src).as_posix() != MANIFEST_NAME]
    old = read_manifest(dest_uri)
    if old is not None and not overwrite:
        raise StorageError(f"{dest_uri}: already published by {old.producer} at {old.created_at} (content "
                           f"{old.content_hash()[:12]}); expected a new destination, or pass overwrite=True")
    if is_s3(dest_uri):
        if old:  # the destination is incomplete until the new manifest lands
            _delete(join_uri(dest_uri, MANIFEST_NAME))
        entries = [FileEntry(p.relative_to(src).as_posix(), p.stat().st_size, sha256_file(p)) for p in files]
        bucket, prefix = split_s3(dest_uri)
        _transfer("uploaded", [(str(p), bucket, join_uri(prefix, e.path) if prefix else e.path,
                                join_uri(dest_uri, e.path), {"Metadata": {"sha256": e.sha256}}, e.size)
                               for p, e in zip(files, entries, strict=True)])
    else:
        dest = local_path(dest_uri).resolve()
        if dest != src.resolve() and dest.is_relative_to(src.resolve()):
            raise StorageError(f"{dest_uri}: destination lies inside the published directory {src}; "
                               "expected a separate directory (or the same one, to publish in place)")
        if old:
            (dest / MANIFEST_NAME).unlink()
        same = dest == src.resolve()
        with _translated(dest_uri, f"copying files from {src}"):
            dest.mkdir(parents=True, exist_ok=True)
            entries = [FileEntry(rel := p.relative_to(src).as_posix(), p.stat().st_size,
                                 sha256_file(p) if same else _copy_hashed(p, dest / rel)) for p in files]
    manifest = Manifest(uri=dest_uri, producer=producer, files=entries, lineage=dict(lineage or {}),
                        created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"))
    _write_text(join_uri(dest_uri, MANIFEST_NAME), manifest.to_json())
    for stale in {f.path for f in old.files} - {e.path for e in entries} if old else ():
        _delete(join_uri(dest_uri, stale))
    return manifest


def _write_text(uri: str, text: str) -> None:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client()
        with _translated(uri, "writing", client):
            client.put_object(Bucket=bucket, Key=key, Body=text.encode(), ContentType="application/json")
        return
    path = local_path(uri)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with _translated(uri, "writing"):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)


def _delete(uri: str) -> None:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client()
        with _translated(uri, "deleting", client):
            client.delete_object(Bucket=bucket, Key=key)
    else:
        local_path(uri).unlink(missing_ok=True)


def read_manifest(uri: str) -> Manifest | None:
    """The manifest of a directory URI (or of the manifest's own URI), or None when there is none."""
    uri = str(uri).rstrip("/") or str(uri)
    if uri.rsplit("/", 1)[-1] == MANIFEST_NAME:
        uri = uri.rsplit("/", 1)[0] if "/" in uri else "."
    target = join_uri(uri, MANIFEST_NAME)
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = split_s3(target)
        client = s3_client()
        with _translated(target, "reading the manifest", client):
            try:
                text = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
            except ClientError as e:  # a missing manifest is an answer; a missing bucket is an error
                if e.response.get("Error", {}).get("Code") == "NoSuchKey":
                    return None
                raise
    else:
        path = local_path(target)
        if not path.is_file():
            return None
        text = path.read_text()
    try:
        return Manifest.from_dict(json.loads(text))
    except ValueError as e:
        raise StorageError(f"{target}: not valid JSON ({e}); expected a kubetune manifest") from e


# ---- fetch ------------------------------------------------------------------------------------
def mismatch_message(uri: str, entry: FileEntry, actual: str) -> str:
    return (f"{join_uri(uri, entry.path)}: sha256 mismatch for file {entry.path}: the manifest expects "
            f"{entry.sha256}, the content has {actual}; it was changed after publishing or corrupted")


def fetch_dir(uri: str) -> Path:
    """A published directory (s3, file:// or local path) as a local directory of exactly its files,
    every sha256 verified. A local directory without a manifest is returned as it is."""
    uri = str(uri).rstrip("/") or str(uri)
    if is_hf(uri):
        raise StorageError(f"{uri}: fetch_dir takes s3://, file:// or a path; for hf:// use fetch_model "
                           "or fetch_file")
    manifest = read_manifest(uri)
    if is_s3(uri):
        if manifest is None:
            raise NotFound(f"{uri}: no {MANIFEST_NAME} under this prefix; expected a directory published "
                           "with publish_dir (kubetune), whose manifest lists the files and their sha256")
        return cache.fetch_manifest_dir(uri, manifest)
    path = local_path(uri)
    if not path.is_dir():
        raise NotFound(f"{uri}: local directory not found (expected a directory, with or without "
                       f"{MANIFEST_NAME})")
    for entry in manifest.files if manifest else ():
        if not (path / entry.path).is_file():
            raise NotFound(f"{join_uri(uri, entry.path)}: listed in {MANIFEST_NAME} but missing from {path}")
        if (actual := sha256_file(path / entry.path)) != entry.sha256:
            raise HashMismatch(mismatch_message(uri, entry, actual))
    return path


def fetch_file(uri: str) -> Path:
    """One file: s3://BUCKET/KEY (cached), file://, a plain path, or hf://datasets/ORG/NAME/PATH[@REV]."""
    uri = str(uri)
    if is_hf(uri):
        return cache.hf_file(uri)
    if is_s3(uri):
        return cache.fetch_object(uri)
    path = local_path(uri)
    if not path.is_file():
        raise NotFound(f"{uri}: local file not found (expected a file)")
    return path


def fetch_model(uri: str, *, allow_pickle: bool = False) -> Path:
    """A model directory: anything fetch_dir takes, or hf://ORG/NAME[@REVISION] (Hub snapshot; pickle
    weights skipped unless allow_pickle, since loading them can run code)."""
    uri = str(uri)
    if not is_hf(uri):
        return fetch_dir(uri)
    return cache.hf_snapshot(uri, allow_pickle=allow_pickle)


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
        with _translated(prefix_uri, "listing", client):
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                out += [ObjectInfo(f"s3://{bucket}/{o['Key']}", o["Size"], o.get("ETag", "").strip('"'))
                        for o in page.get("Contents", []) if not o["Key"].endswith("/") and keep(o["Key"])]
    else:
        root = local_path(prefix_uri)
        if not root.is_dir():
            raise NotFound(f"{prefix_uri}: local directory not found (expected a directory to list)")
        for p in _walk(root):
            if keep(p.name):
                st = p.stat()
                out.append(ObjectInfo(join_uri(prefix_uri, p.relative_to(root).as_posix()), st.st_size,
                                      f"{st.st_mtime_ns:x}-{st.st_size:x}"))
    return sorted(out, key=lambda o: o.uri)
