"""The prepared-dataset reader shared by train, eval and quantize: split files, records, and errors that
name the file and the line (or Parquet row), raised as the caller's own error class."""

from __future__ import annotations

import json

import pytest

from components.common import prepared
from components.common.errors import KubetuneError

CHAT = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


class StepError(KubetuneError):
    pass


def test_find_split_prefers_jsonl_and_returns_none_when_missing(tmp_path):
    assert prepared.find_split(tmp_path, "test") is None
    (tmp_path / "test.parquet").write_bytes(b"")
    assert prepared.find_split(tmp_path, "test") == tmp_path / "test.parquet"
    (tmp_path / "test.jsonl").write_text("")
    assert prepared.find_split(tmp_path, "test") == tmp_path / "test.jsonl"


def test_require_split_names_the_directory_and_what_it_holds(tmp_path):
    with pytest.raises(StepError, match=r"nope: prepared dataset directory not found; expected .*train.jsonl"):
        prepared.require_split(tmp_path / "nope", "train", error=StepError)
    (tmp_path / "stats.json").write_text("{}")
    with pytest.raises(prepared.PreparedDataError,
                       match=r"no train.jsonl or train.parquet \(found: stats.json\); expected the prepare"):
        prepared.require_split(tmp_path, "train")


def test_jsonl_records_with_their_lines(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(CHAT) + "\n\n" + json.dumps({"text": "t"}) + "\n")
    assert list(prepared.iter_records(path)) == [(f"{path}:1", CHAT), (f"{path}:3", {"text": "t"})]
    assert prepared.read_records(path) == [CHAT, {"text": "t"}]


@pytest.mark.parametrize(("content", "expected"), [
    ('{"text": "ok"}\n{"text": \n', r"train.jsonl:2: not valid JSON \(.*\); expected one JSON object per line"),
    ('{"text": "ok"}\n[1, 2]\n', r"train.jsonl:2: a JSON list; expected one JSON object per line"),
])
def test_bad_jsonl_names_the_file_and_line(tmp_path, content, expected):
    path = tmp_path / "train.jsonl"
    path.write_text(content)
    with pytest.raises(StepError, match=expected):
        prepared.read_records(path, error=StepError)


def test_not_utf8_and_missing_files(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(StepError, match=r"test.jsonl: not UTF-8 text"):
        prepared.read_records(path, error=StepError)
    with pytest.raises(StepError, match=r"missing.jsonl: file not found"):
        prepared.read_records(tmp_path / "missing.jsonl", error=StepError)


def test_parquet_rows_are_streamed_and_located_by_row(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(prepared, "PARQUET_BATCH", 2)  # several batches
    rows = [{"text": f"t{i}", "prompt": None} for i in range(5)]
    path = tmp_path / "test.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    got = list(prepared.iter_records(path))
    assert [r for _, r in got] == rows
    assert got[4][0] == f"{path} [row 4]"


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "test.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(StepError, match=r"test.parquet: not a readable Parquet file"):
        prepared.read_records(path, error=StepError)
