"""The local content-addressed cache behind `storage.fetch_dir` / `fetch_file`.

Layout under $KUBETUNE_CACHE (default ~/.cache/kubetune):

    blobs/ab/<sha256>          file content, stored once, read-only; placed only after verification
    blobs/ab/<sha256>.ok       "size:mtime_ns:inode" of the blob when it was verified
    dirs/<content hash>/...    a manifest's files, hard links to the blobs (copies where links fail)
    files/<sha256>/<name>      one fetched object under its own file name (suffixes matter to readers)
    index/<key hash>           sha256 of an object without sha256 metadata, keyed by (uri, ETag, size)
    tmp/                       downloads in progress (same filesystem as blobs: renames are atomic)

Everything is written to a temporary name and renamed into place, so concurrent fetches of the
same content are safe and an interrupted fetch leaves nothing that looks complete. (hf:// URIs go
through the Hugging Face cache instead: `components.common.hf_hub`.)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from pathlib import Path

from components.common.manifest import mismatch_message
from components.common.s3 import s3_client, transfer, translated
from components.common.storage_errors import HashMismatch
from components.common.uris import join_uri, sha256_file, split_s3


def root() -> Path:
    return Path(os.environ.get("KUBETUNE_CACHE") or "~/.cache/kubetune").expanduser()


def _signature(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def blob_path(sha256: str) -> Path:
    return root() / "blobs" / sha256[:2] / sha256


def trusted_blob(sha256: str) -> Path | None:
    """The blob for sha256 if it exists and is unchanged since it was verified, else None."""
    blob = blob_path(sha256)
    try:
        stamp = blob.with_name(blob.name + ".ok").read_text().strip()
        return blob if stamp == _signature(blob) else None
    except OSError:
        return None


def temp_path(hint: str = "") -> Path:
    tmp = root() / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return tmp / f"{uuid.uuid4().hex}{hint[-40:].replace('/', '_')}"


def add_blob(verified_file: Path, sha256: str) -> Path:
    """Move a file whose sha256 the caller has just verified into the cache; returns the blob."""
    blob = blob_path(sha256)
    blob.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(verified_file, 0o444)
    os.replace(verified_file, blob)
    stamp = temp_path(".ok")
    stamp.write_text(_signature(blob))
    os.replace(stamp, blob.with_name(blob.name + ".ok"))
    return blob


def drop_blob(sha256: str) -> None:
    blob = blob_path(sha256)
    for p in (blob.with_name(blob.name + ".ok"), blob):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # other filesystem, no hard links, too many links: copy
        shutil.copyfile(src, dst)


def is_linked_blob(path: Path, sha256: str) -> bool:
    """True when path is a hard link of an unchanged, verified blob (so it needs no re-hashing)."""
    blob = trusted_blob(sha256)
    try:
        return blob is not None and os.path.samefile(blob, path)
    except OSError:
        return False


def dir_path(content_hash: str) -> Path:
    return root() / "dirs" / content_hash


def materialize(content_hash: str, files: list[tuple[str, str]]) -> Path:
    """Build dirs/<content_hash>/ from (relative path, sha256) pairs whose blobs are in the cache."""
    final = dir_path(content_hash)
    staging = final.with_name(f".tmp-{content_hash[:16]}-{uuid.uuid4().hex[:8]}")
    try:
        for rel, sha in files:
            link_or_copy(blob_path(sha), staging / rel)
        staging.mkdir(parents=True, exist_ok=True)  # an empty manifest still gives a directory
        try:
            os.rename(staging, final)
        except OSError:  # another process materialized the same content first
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def remove_dir(content_hash: str) -> None:
    shutil.rmtree(dir_path(content_hash), ignore_errors=True)


def file_view(sha256: str, name: str) -> Path:
    """files/<sha256>/<name>: the blob under a readable file name."""
    view = root() / "files" / sha256 / name
    if not (view.exists() and is_linked_blob(view, sha256)):
        staging = view.with_name(f".{uuid.uuid4().hex[:8]}-{name}")
        link_or_copy(blob_path(sha256), staging)
        os.replace(staging, view)
    return view


def _index_path(*key: object) -> Path:
    digest = hashlib.sha256("\0".join(map(str, key)).encode()).hexdigest()
    return root() / "index" / digest


def index_lookup(*key: object) -> str | None:
    try:
        return _index_path(*key).read_text().strip() or None
    except OSError:
        return None


def index_record(sha256: str, *key: object) -> None:
    path = _index_path(*key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(".idx")
    tmp.write_text(sha256)
    os.replace(tmp, path)


# ---- fetching S3 content through the cache (storage.fetch_dir / fetch_file call these) ---------
def _dir_ok(final: Path, files) -> list:
    """Entries of a materialized directory that fail verification (all of them if extras appeared)."""
    present = sum(1 for p in final.rglob("*") if p.is_file())
    if present != len(files):
        return list(files)
    bad = []
    for e in files:
        p = final / e.path
        if not p.is_file():
            bad.append(e)
        elif not is_linked_blob(p, e.sha256) and (p.stat().st_size != e.size or sha256_file(p) != e.sha256):
            bad.append(e)
    return bad


def fetch_manifest_dir(uri: str, manifest) -> Path:
    """The files of the manifest found at uri (s3) as dirs/<content hash>/, downloading only the blobs
    the cache lacks and verifying each against the manifest."""
    chash = manifest.content_hash()
    final = dir_path(chash)
    if final.is_dir():
        bad = _dir_ok(final, manifest.files)
        if not bad:
            return final
        remove_dir(chash)  # changed on disk: rebuild from verified blobs (re-downloading bad ones)
        for e in bad:
            if not is_linked_blob(final / e.path, e.sha256):
                drop_blob(e.sha256)
    wanted = {e.sha256: e for e in manifest.files if trusted_blob(e.sha256) is None}
    temps = {sha: temp_path() for sha in wanted}
    try:
        jobs = []
        for sha, e in wanted.items():
            bucket, key = split_s3(join_uri(uri, e.path))
            jobs.append((str(temps[sha]), bucket, key, join_uri(uri, e.path), {}, e.size))
        transfer("downloaded", jobs)
        for sha, e in wanted.items():
            if (actual := sha256_file(temps[sha])) != sha:
                raise HashMismatch(mismatch_message(uri, e, actual))
            add_blob(temps[sha], sha)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return materialize(chash, [(e.path, e.sha256) for e in manifest.files])


def fetch_object(uri: str) -> Path:
    """One s3 object as files/<sha256>/<name>. With sha256 metadata a cached copy costs no download;
    without it the cache is keyed by (uri, ETag, size)."""
    bucket, key = split_s3(uri)
    client = s3_client()
    with translated(uri, "reading object metadata", client):
        head = client.head_object(Bucket=bucket, Key=key)
    size, etag = head["ContentLength"], head.get("ETag", "").strip('"')
    expected = head.get("Metadata", {}).get("sha256")
    name = key.rstrip("/").rsplit("/", 1)[-1] or "object"
    known = expected or index_lookup(uri, etag, size)
    if known and trusted_blob(known):
        return file_view(known, name)
    tmp = temp_path()
    try:
        transfer("downloaded", [(str(tmp), bucket, key, uri, {}, size)])
        actual = sha256_file(tmp)
        if expected and actual != expected:
            raise HashMismatch(f"{uri}: sha256 mismatch: the object's metadata expects {expected}, "
                               f"the downloaded content has {actual}; it was changed or corrupted")
        add_blob(tmp, actual)
    finally:
        tmp.unlink(missing_ok=True)
    if not expected:
        index_record(actual, uri, etag, size)
    return file_view(actual, name)
