"""The release format: `<root>/releases/<model>/<version>/` with `release.json`, and fetching it.

A release is a published directory (files first, `_manifest.json` last) holding:
  merged/    the merged model (safetensors, tokenizer, chat template) - what vLLM serves
  adapter/   the LoRA adapter (absent for full fine-tuning)
  gguf/      GGUF files and Ollama Modelfiles, when the quantize step ran
  release.json   what is in it: every file's sha256, eval results, gate verdict, chat template,
                 lineage, and serving hints
  values.yaml    a values snippet for charts/vllm that pins this release

Releases are immutable: publishing over an existing version is refused, and serving always pins a
version URI (never "latest").
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from components.common import storage
from components.common.errors import KubetuneError

log = logging.getLogger(__name__)

RELEASE_SCHEMA = "kubetune.release/v1"
RELEASE_FILE = "release.json"
VALUES_FILE = "values.yaml"
PARTS = ("merged", "adapter", "gguf")
# What `kubetune fetch` can download: the release's parts, or "base", the base model named in the
# release's lineage (for serving base + LoRA adapters instead of the merged model).
FETCHABLE = (*PARTS, "base")
# Written into a fetch destination after every file is verified: a warm volume with this marker and
# matching hashes is reused without downloading anything.
FETCH_MARKER = ".kubetune-release.json"


class ReleaseError(KubetuneError):
    """A release that is missing, incomplete, refused or corrupt."""


def release_uri(root: str, model: str, version: str) -> str:
    return storage.join_uri(root, "releases", model, version)


def read_release(uri: str) -> dict:
    """release.json of a complete release (one whose manifest exists), verified against the manifest."""
    manifest = storage.read_manifest(uri)
    if manifest is None:
        raise ReleaseError(f"{uri}: no complete release here (no {storage.MANIFEST_NAME}); expected the "
                           "URI of a published release, e.g. s3://bucket/prefix/releases/<model>/<version>")
    entry = next((f for f in manifest.files if f.path == RELEASE_FILE), None)
    if entry is None:
        raise ReleaseError(f"{uri}: its {storage.MANIFEST_NAME} lists no {RELEASE_FILE}; expected a release "
                           "published by kubetune's publish step")
    path = storage.fetch_file(storage.join_uri(uri, RELEASE_FILE))
    # release.json holds every other file's sha256: an edited copy (the object's own sha256 metadata
    # can be missing or rewritten too) must not be believed, so it is checked against the manifest
    if (actual := storage.sha256_file(path)) != entry.sha256:
        raise storage.HashMismatch(storage.mismatch_message(uri, entry, actual))
    try:
        release = json.loads(Path(path).read_text())
    except ValueError as e:
        raise ReleaseError(f"{storage.join_uri(uri, RELEASE_FILE)}: not valid JSON ({e})") from e
    if release.get("schema") != RELEASE_SCHEMA:
        raise ReleaseError(f"{uri}/{RELEASE_FILE}: schema {release.get('schema')!r}, "
                           f"expected {RELEASE_SCHEMA!r}")
    return release


def fetch_release(uri: str, dest: str | os.PathLike, parts: tuple[str, ...] = ("merged",)) -> dict:
    """Download the given parts of a release into dest/<part>/, verifying each file's sha256 against
    release.json, and put release.json beside them. Files already in dest with the right hash are
    kept (a warm PVC downloads nothing). Returns {"downloaded": n, "reused": n, "bytes": n}."""
    release = read_release(uri)
    dest = Path(dest)
    counts = {"downloaded": 0, "reused": 0, "bytes": 0}
    (dest / FETCH_MARKER).unlink(missing_ok=True)  # incomplete until every part is verified again
    for part in parts:
        if part == "base":
            _fetch_base(release, dest / "base", counts)
            continue
        info = release["artifacts"].get(part)
        if info is None:
            raise ReleaseError(f"{uri}: release has no {part!r} part (it has: "
                               f"{', '.join(release['artifacts']) or 'none'})")
        part_uri = storage.join_uri(uri, part)
        for entry in info["files"]:
            expected = storage.FileEntry(entry["path"], entry["size"], entry["sha256"])
            _fetch_verified(storage.join_uri(part_uri, entry["path"]), dest / part / entry["path"], expected,
                            part_uri, counts)
    (dest / RELEASE_FILE).write_text(json.dumps(release, indent=2))
    marker = {"release": uri, "version": release["version"], "parts": list(parts)}
    (dest / FETCH_MARKER).write_text(json.dumps(marker, indent=2))
    return counts


def _fetch_verified(uri: str, target: Path, expected: storage.FileEntry, base_uri: str, counts: dict) -> None:
    if target.is_file() and storage.sha256_file(target) == expected.sha256:
        counts["reused"] += 1
        return
    partial = target.with_name(target.name + ".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    storage.download_file(uri, partial)
    actual = storage.sha256_file(partial)
    if actual != expected.sha256:
        partial.unlink()
        raise storage.HashMismatch(storage.mismatch_message(base_uri, expected, actual))
    os.replace(partial, target)  # a half-written or corrupt file never takes the final name
    counts["downloaded"] += 1
    counts["bytes"] += expected.size


def _fetch_base(release: dict, dest: Path, counts: dict) -> None:
    """The base model from the release lineage, through the verified cache, copied into dest."""
    base = release["lineage"].get("base_model")
    if not base:
        raise ReleaseError(f"{release['uri']}: release.json names no base model (lineage.base_model)")
    local = storage.fetch_model(base)
    for path in sorted(local.rglob("*")):
        if path.is_file() and path.name != storage.MANIFEST_NAME:
            target = dest / path.relative_to(local)
            if target.is_file() and target.stat().st_size == path.stat().st_size \
                    and storage.sha256_file(target) == storage.sha256_file(path):
                counts["reused"] += 1
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            counts["downloaded"] += 1
            counts["bytes"] += path.stat().st_size


def latest_release(root: str, model: str) -> dict | None:
    """release.json of the newest complete release of a model, or None."""
    prefix = storage.join_uri(root, "releases", model)
    try:
        found = storage.list_objects(prefix, suffixes=(RELEASE_FILE,))
    except storage.NotFound:
        return None
    newest = None
    for obj in found:
        if obj.uri.rsplit("/", 1)[-1] != RELEASE_FILE:
            continue
        release_dir = obj.uri.rsplit("/", 1)[0]
        if storage.read_manifest(release_dir) is None:
            continue  # incomplete: a failed publish never counts as a release
        release = json.loads(Path(storage.fetch_file(obj.uri)).read_text())
        if newest is None or release["created_at"] > newest["created_at"]:
            newest = release
    return newest


def part_entry(uri: str, local_dir: Path) -> dict:
    """release.json's description of one part: its URI and each file's size and sha256."""
    files = sorted(p for p in local_dir.rglob("*") if p.is_file() and p.name != storage.MANIFEST_NAME)
    return {"uri": uri, "files": [{"path": p.relative_to(local_dir).as_posix(), "size": p.stat().st_size,
                                   "sha256": storage.sha256_file(p)} for p in files]}


def copy_part(src: Path, dest: Path) -> None:
    """Copy a step's output directory into the release staging area (without its manifest)."""
    for path in sorted(src.rglob("*")):
        if path.is_file() and path.name != storage.MANIFEST_NAME:
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
