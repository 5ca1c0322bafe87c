"""Artifacts through S3 (or file:// and plain paths): publish a directory with a manifest, fetch it back.

A published directory is its files plus `_manifest.json` (sizes, sha256, producer, lineage), written
last, so a directory with a manifest is complete. Fetches verify every sha256 and go through the
content-addressed cache in `components.common.cache`; a second fetch of the same content downloads
no file data. Endpoint and credentials come from the standard AWS environment (AWS_ENDPOINT_URL_S3,
AWS_ACCESS_KEY_ID, ... or IRSA).

This module is the public storage API: callers use `storage.X` for the names in `__all__`. They live in
    storage_errors  StorageError, NotFound, AccessDenied, EndpointUnreachable, HashMismatch
    uris            is_s3, is_hf, split_s3, join_uri, local_path, sha256_file
    manifest        MANIFEST_NAME, FileEntry, Manifest, mismatch_message
    s3              the boto3 client, error translation, concurrent transfers, upload_file, download_file,
                    list_objects, transfer_stats (and the transfer tuning constants: set those on s3)
    hf_hub          hf:// downloads through the Hugging Face cache
    cache           the content-addressed blob cache behind fetch_dir / fetch_file
Imports run one way: storage_errors <- uris <- manifest, s3 <- cache <- storage (hf_hub needs only
storage_errors); none of them imports storage.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from components.common import cache, hf_hub
from components.common.hf_hub import PICKLE_PATTERNS
from components.common.manifest import MANIFEST_NAME, FileEntry, Manifest, mismatch_message
from components.common.s3 import (
    ObjectInfo,
    TransferStats,
    copy_hashed,
    create_exclusive,
    delete,
    download_file,
    list_objects,
    s3_client,
    transfer_stats,
    translated,
    upload_file,
)

# publish_dir uploads and writes the manifest through these two names of this module, so tests can spy on
# what a publish writes, and in which order (tests/eval/test_eval_s3.py, tests/merge/test_merge_s3.py)
from components.common.s3 import transfer as _transfer
from components.common.s3 import write_text as _write_text
from components.common.storage_errors import AccessDenied, EndpointUnreachable, HashMismatch, NotFound, StorageError
from components.common.uris import is_hf, is_s3, join_uri, local_path, sha256_file, split_s3, walk_files

__all__ = [  # the public API of components.common.storage: callers use storage.X for these
    "MANIFEST_NAME", "PICKLE_PATTERNS", "AccessDenied", "EndpointUnreachable", "FileEntry", "HashMismatch",
    "Manifest", "NotFound", "ObjectInfo", "StorageError", "TransferStats", "create_exclusive", "download_file",
    "fetch_dir", "fetch_file", "fetch_model", "is_hf", "is_s3", "join_uri", "list_objects", "local_path",
    "mismatch_message", "publish_dir", "read_manifest", "s3_client", "sha256_file", "split_s3",
    "transfer_stats", "upload_file",
]


# ---- publish ----------------------------------------------------------------------------------
def publish_dir(local_dir: str | os.PathLike, dest_uri: str, *, producer: str, lineage: dict | None = None,
                overwrite: bool = False) -> Manifest:
    """Store every file under local_dir at dest_uri, then write dest_uri/_manifest.json last."""
    src = Path(local_dir)
    if not src.is_dir():
        raise NotFound(f"{src}: local directory not found (expected a directory to publish to {dest_uri})")
    dest_uri = str(dest_uri).rstrip("/") or str(dest_uri)
    files = [p for p in walk_files(src) if p.relative_to(src).as_posix() != MANIFEST_NAME]
    old = read_manifest(dest_uri)
    if old is not None and not overwrite:
        raise StorageError(f"{dest_uri}: already published by {old.producer} at {old.created_at} (content "
                           f"{old.content_hash()[:12]}); expected a new destination, or pass overwrite=True")
    if is_s3(dest_uri):
        if old:  # the destination is incomplete until the new manifest lands
            delete(join_uri(dest_uri, MANIFEST_NAME))
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
        with translated(dest_uri, f"copying files from {src}"):
            dest.mkdir(parents=True, exist_ok=True)
            entries = [FileEntry(rel := p.relative_to(src).as_posix(), p.stat().st_size,
                                 sha256_file(p) if same else copy_hashed(p, dest / rel)) for p in files]
    manifest = Manifest(uri=dest_uri, producer=producer, files=entries, lineage=dict(lineage or {}),
                        created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"))
    _write_text(join_uri(dest_uri, MANIFEST_NAME), manifest.to_json())
    for stale in {f.path for f in old.files} - {e.path for e in entries} if old else ():
        delete(join_uri(dest_uri, stale))
    return manifest


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
        with translated(target, "reading the manifest", client):
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
        return hf_hub.hf_file(uri)
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
    return hf_hub.hf_snapshot(uri, allow_pickle=allow_pickle)
