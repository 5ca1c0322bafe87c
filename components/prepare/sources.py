"""Fetching data sources to local files, and the lineage recorded in the output manifest.

Used by the CLI and by the KFP component, so both read the same objects and record the same lineage.
A source URI is one object (s3://, hf://datasets/..., file:// or a path) or a prefix: an s3:// URI that
ends with `/` or has no data-file suffix means every .jsonl/.ndjson/.json/.parquet object under it;
a local directory likewise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from components.common import storage
from components.common.config import KubetuneConfig
from components.prepare.problems import PrepareError
from components.prepare.readers import DATA_SUFFIXES, InputFile, expand


def _is_bookkeeping(uri: str) -> bool:
    return uri.rsplit("/", 1)[-1].startswith(("_", "."))  # _manifest.json, .keep


def fetch_source(uri: str) -> list[InputFile]:
    """Local copies of a source's files, each with the URI it came from. Raises KubetuneError."""
    uri = str(uri)
    if storage.is_s3(uri):
        name = uri.rsplit("/", 1)[-1]
        if name and name.lower().endswith(DATA_SUFFIXES):
            return [InputFile(storage.fetch_file(uri), uri)]
        objects = [o for o in storage.list_objects(uri, suffixes=DATA_SUFFIXES) if not _is_bookkeeping(o.uri)]
        if not objects:
            if name:  # maybe an object without a data suffix; NotFound names the URI otherwise
                return [InputFile(storage.fetch_file(uri), uri)]
            raise storage.NotFound(f"{uri}: no data objects ({', '.join(DATA_SUFFIXES)}) under this prefix")
        return [InputFile(storage.fetch_file(o.uri), o.uri) for o in objects]
    if storage.is_hf(uri):
        return [InputFile(storage.fetch_file(uri), uri)]
    path = storage.local_path(uri)
    if not path.exists():
        raise PrepareError(f"{uri}: input not found (no such file or directory)")
    return expand(path, uri)


def lineage(cfg: KubetuneConfig, names: Sequence[str], inputs: Sequence[Sequence[InputFile]],
            tokenizer_uri: str) -> dict:
    """What the output was made from: every input file's sha256, the config hash, the tokenizer.

    `data_sha256` hashes the input files' hashes (with their source names and weights), so it changes
    exactly when the data going in changes; publish can compare it to skip runs with no new data.
    """
    files = []
    for name, source, given in zip(names, cfg.data.sources, inputs, strict=True):
        for f in given:
            files.append({"source": name, "uri": f.uri, "sha256": storage.sha256_file(f.path),
                          "bytes": f.path.stat().st_size, "weight": source.weight})
    blob = "\n".join(f"{f['source']}\t{f['weight']}\t{f['sha256']}" for f in files)
    return {
        "data_files": files,
        "data_sha256": hashlib.sha256(blob.encode()).hexdigest(),
        "config_hash": cfg.content_hash(),
        "base_model": cfg.model.base,
        "tokenizer": tokenizer_uri,
    }
