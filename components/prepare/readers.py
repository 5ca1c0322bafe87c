"""Reading records out of JSONL, JSON (an array of records) and Parquet files.

The container is sniffed from the bytes (Parquet's magic, a leading `[` for a JSON array), with the
file suffix only as a tie-breaker, because object stores are full of `.json` files that are really
JSONL. Every record comes with a location (`file:line`, `file:line [index i]` or `file [row i]`) so
that problems can be reported where a person can find them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.prepare.problems import PrepareError, ProblemLog

DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet")
SNIFF_BYTES = 8192
PARQUET_BATCH_ROWS = 1024
_TEXT_CONTROL = set(b"\t\n\r\f\b")


@dataclass(frozen=True)
class InputFile:
    path: Path  # the local copy
    uri: str    # where it came from; shown in every message about it


@dataclass
class RawRecord:
    where: str  # file:line (JSONL), file:line [index i] (JSON array), file [row i] (Parquet)
    value: Any  # the parsed JSON value / Parquet row as a dict
    text: str   # the raw text of the record, for snippets in reports


def expand(path: Path, uri: str | None = None) -> list[InputFile]:
    """A file, or every data file under a directory (sorted, so the order is reproducible)."""
    uri = uri or str(path)
    if path.is_file():
        return [InputFile(path, uri)]
    if not path.exists():
        raise PrepareError(f"{uri}: input not found (no such file or directory)")
    files = sorted(p for p in path.rglob("*")
                   if p.is_file() and p.suffix.lower() in DATA_SUFFIXES
                   # _manifest.json and dot-files are bookkeeping, not data.
                   and not any(part.startswith(("_", ".")) for part in p.relative_to(path).parts))
    if not files:
        raise PrepareError(f"{uri}: no data files ({', '.join(DATA_SUFFIXES)}) under this directory")
    base = uri.rstrip("/")
    return [InputFile(p, f"{base}/{p.relative_to(path).as_posix()}") for p in files]


def sniff(f: InputFile) -> str:
    """'jsonl', 'json' or 'parquet'; raises PrepareError for empty, compressed and binary files."""
    with f.path.open("rb") as fh:
        head = fh.read(SNIFF_BYTES)
    if not head:
        raise PrepareError(f"{f.uri}: empty file (0 bytes); expected JSONL, JSON or Parquet records")
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"\x1f\x8b"):
        raise PrepareError(f"{f.uri}: gzip-compressed file; decompress it first (expected JSONL, JSON or "
                           f"Parquet)")
    if f.path.suffix.lower() == ".parquet":
        raise PrepareError(f"{f.uri}: binary file that is not Parquet (no PAR1 magic bytes)")
    control = sum(1 for b in head if b < 0x20 and b not in _TEXT_CONTROL)
    if b"\x00" in head or control > len(head) * 0.1:
        raise PrepareError(f"{f.uri}: binary file (NUL or control bytes at the start); expected UTF-8 "
                           f"JSONL or JSON text, or Parquet")
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not stripped and f.path.stat().st_size <= SNIFF_BYTES:
        raise PrepareError(f"{f.uri}: empty file (only whitespace); expected JSONL, JSON or Parquet records")
    if stripped.startswith(b"["):
        return "json"
    _refuse_delimited_text(f, stripped)
    return "jsonl"


_DELIMITERS = ((",", "comma-separated: CSV"), ("\t", "tab-separated: TSV"), (";", "semicolon-separated: CSV"))


def _refuse_delimited_text(f: InputFile, head: bytes) -> None:
    """Raise when the text is a CSV/TSV table rather than JSON lines: otherwise every line would be a
    malformed JSON record, and the message would not say why."""
    lines = [line.strip() for line in head.decode("utf-8", errors="replace").splitlines() if line.strip()][:3]
    first = lines[0]
    if first.startswith(("{", "[")):
        return
    try:
        json.loads(first)
        return  # a JSON value (a string, a number): a record problem, reported per line
    except ValueError:
        pass
    for delimiter, kind in _DELIMITERS:
        if all(delimiter in line for line in lines):
            shown = first if len(first) <= 80 else first[:79] + "…"
            raise PrepareError(f"{f.uri}:1: looks like {kind.split(': ')[1]} ({kind.split(': ')[0]} columns), "
                               f"not JSON lines: the first line is {shown!r}; expected one JSON object per "
                               f"line, e.g. {{\"instruction\": ..., \"output\": ...}} (convert it first, e.g. "
                               f"pandas.read_csv(...).to_json(..., orient='records', lines=True))")


def read_records(f: InputFile, container: str, problems: ProblemLog, source: str) -> Iterator[RawRecord]:
    """Every record of one file. Malformed JSON / invalid UTF-8 go through the problem policy."""
    if container == "parquet":
        yield from _read_parquet(f)
    elif container == "json":
        yield from _read_json_array(f)
    else:
        yield from _read_jsonl(f, problems, source)


def _read_jsonl(f: InputFile, problems: ProblemLog, source: str) -> Iterator[RawRecord]:
    with f.path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            where = f"{f.uri}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.report("invalid_utf8", source, where,
                                f"invalid UTF-8 ({e.reason} at byte {e.start} of the line)",
                                text=raw.decode("utf-8", errors="replace"))
                continue
            if not line.strip():
                continue  # blank lines (a trailing newline, spacing) are not records
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                problems.report("malformed_json", source, where,
                                f"malformed JSON: {e.msg} (column {e.colno})", text=line)
                continue
            yield RawRecord(where, value, line)


def _read_json_array(f: InputFile) -> Iterator[RawRecord]:
    data = f.path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        # One bad byte makes the whole array undecodable, so there is no record to skip.
        raise PrepareError(f"{f.uri}:{line}: invalid UTF-8 ({e.reason}); a JSON array file is read as a "
                           f"whole, so it cannot skip one record, whatever prepare.policy says") from None
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, text.index("[") + 1)
    line, line_pos = 1, 0  # line counting is incremental: counting from 0 each time is quadratic
    index = 0
    while True:
        if pos >= len(text):
            raise PrepareError(f"{f.uri}:{text.count(chr(10)) + 1}: malformed JSON: unterminated array "
                               f"(missing ']')")
        if text[pos] == "]":
            break
        line += text.count("\n", line_pos, pos)
        line_pos = pos
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise PrepareError(f"{f.uri}:{e.lineno}: malformed JSON: {e.msg} (column {e.colno}); a JSON "
                               f"array cannot be read past a malformed record, whatever "
                               f"prepare.policy says") from None
        yield RawRecord(f"{f.uri}:{line} [index {index}]", value, text[pos:end])
        index += 1
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
        elif pos < len(text) and text[pos] != "]":
            bad_line = text.count("\n", 0, pos) + 1
            raise PrepareError(f"{f.uri}:{bad_line}: malformed JSON: expected ',' or ']' after array "
                               f"element {index - 1}")
    if text[pos + 1:].strip():
        raise PrepareError(f"{f.uri}:{text.count(chr(10), 0, pos) + 1}: malformed JSON: extra data after "
                           f"the closing ']'")
    if index == 0:
        raise PrepareError(f"{f.uri}: empty file (the JSON array has no records)")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_parquet(f: InputFile) -> Iterator[RawRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f.path)
        if pf.metadata.num_rows == 0:
            raise PrepareError(f"{f.uri}: empty file (the Parquet file has no rows)")
        row = 0
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for value in batch.to_pylist():
                yield RawRecord(f"{f.uri} [row {row}]", value, json.dumps(value, default=str,
                                                                           ensure_ascii=False))
                row += 1
    except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
        raise PrepareError(f"{f.uri}: not a readable Parquet file: {e}") from None
