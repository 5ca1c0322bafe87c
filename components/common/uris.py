"""Artifact URIs: s3://BUCKET/KEY, hf://..., file:// and plain paths; joining them; hashing local files."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from components.common.storage_errors import StorageError

MiB = 1024 * 1024
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def is_hf(uri: str) -> bool:
    return str(uri).startswith("hf://")


def split_s3(uri: str) -> tuple[str, str]:
    if not is_s3(uri):
        raise StorageError(f"{uri!r}: expected an s3://BUCKET/KEY URI")
    bucket, _, key = uri[5:].partition("/")
    if not BUCKET_RE.match(bucket):
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
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in ("s3", "hf", "file") and not is_s3(uri) and not is_hf(uri) and not uri.startswith("file://"):
        form = {"s3": "s3://BUCKET/KEY", "hf": "hf://ORG/NAME or hf://datasets/ORG/NAME/PATH",
                "file": "file:///ABSOLUTE/PATH"}[scheme]
        raise StorageError(f"{uri!r}: a malformed {scheme}:// URI (expected {form}, with a lowercase scheme "
                           "and two slashes)")
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


def walk_files(local_dir: Path) -> list[Path]:
    """Every file under local_dir (recursive), sorted by its posix path relative to local_dir."""
    files = (p for p in local_dir.rglob("*") if p.is_file())
    return sorted(files, key=lambda p: p.relative_to(local_dir).as_posix())
