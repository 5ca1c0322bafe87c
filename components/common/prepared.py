"""Reading the prepared dataset: the prepare step's output directory, as train, eval and quantize read it.

The directory holds one file per split, ``train.jsonl`` and ``test.jsonl`` (or ``.parquet``, per
``prepare.output_format``), one record per line (row) with the fields the prepare step writes
(`components.prepare.step.to_row`): ``messages``, ``prompt``, ``completion``, ``text``, ``source``, ...

Only the container is read here; what a record means to a step (a training example, an eval example,
a perplexity text) stays in that step. Every error names the file and, for JSONL, the line; the
caller chooses the error class, so each step keeps raising its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from components.common.errors import KubetuneError

EXTENSIONS = (".jsonl", ".parquet")
EXPECTED_DIR = "expected the prepare step's output directory, with train.jsonl and test.jsonl (or .parquet)"
PARQUET_BATCH = 256


class PreparedDataError(KubetuneError):
    """The prepared dataset is missing, or a split file cannot be read (the default error class here)."""


def find_split(dataset_dir: str | Path, split: str) -> Path | None:
    """`<split>.jsonl` or `<split>.parquet` in dataset_dir (JSONL first), or None when there is neither."""
    for ext in EXTENSIONS:
        path = Path(dataset_dir) / f"{split}{ext}"
        if path.is_file():
            return path
    return None


def require_split(dataset_dir: str | Path, split: str, *,
                  error: type[KubetuneError] = PreparedDataError) -> Path:
    """Like `find_split`, but raises `error` naming the directory and what it holds when there is none."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise error(f"{dataset_dir}: prepared dataset directory not found; {EXPECTED_DIR}")
    path = find_split(dataset_dir, split)
    if path is None:
        present = sorted(p.name for p in dataset_dir.iterdir())[:10]
        raise error(f"{dataset_dir}: no {split}.jsonl or {split}.parquet (found: "
                    f"{', '.join(present) or 'nothing'}); {EXPECTED_DIR}")
    return path


def iter_records(path: str | Path, *, error: type[KubetuneError] = PreparedDataError
                 ) -> Iterator[tuple[str, dict]]:
    """(where, record) for every record of a JSONL or Parquet file (a split file, or any file of JSON
    objects such as the general eval set), streamed a line or a Parquet batch at a time. `where` locates
    the record for messages: ``path:line`` (JSONL, 1-based, blank lines skipped) or ``path [row n]``
    (Parquet, 0-based). Raises `error` for a missing or unreadable file, a line that is not JSON, or a
    JSON value that is not an object."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found; expected a .jsonl or .parquet file")
    if path.suffix == ".parquet":
        yield from _parquet_rows(path, error)
        return
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as e:
                    raise error(f"{path}:{lineno}: not valid JSON ({e}); expected one JSON object per "
                                "line") from None
                if not isinstance(record, dict):
                    raise error(f"{path}:{lineno}: a JSON {type(record).__name__}; expected one JSON "
                                "object per line")
                yield f"{path}:{lineno}", record
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text ({e}); expected JSONL, one JSON object per line") from None


def _parquet_rows(path: Path, error: type[KubetuneError]) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    def unreadable(e: Exception) -> KubetuneError:
        return error(f"{path}: not a readable Parquet file ({e})")

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a corrupt file
        raise unreadable(e) from None
    n = 0
    while True:
        try:
            batch = next(batches, None)
        except Exception as e:
            raise unreadable(e) from None
        if batch is None:
            return
        for row in batch.to_pylist():
            yield f"{path} [row {n}]", row
            n += 1


def read_records(path: str | Path, *, error: type[KubetuneError] = PreparedDataError) -> list[dict]:
    """Every record of a JSONL or Parquet split file, in order (see `iter_records` for the errors)."""
    return [record for _, record in iter_records(path, error=error)]
