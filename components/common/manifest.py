"""The manifest of a published directory (`_manifest.json`): its files with sizes and sha256, the
producer and the lineage."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath

from components.common.storage_errors import StorageError
from components.common.uris import join_uri

MANIFEST_NAME = "_manifest.json"


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


def mismatch_message(uri: str, entry: FileEntry, actual: str) -> str:
    return (f"{join_uri(uri, entry.path)}: sha256 mismatch for file {entry.path}: the manifest expects "
            f"{entry.sha256}, the content has {actual}; it was changed after publishing or corrupted")
