"""Every kind of bad input: a clear error (file:line, field) or a counted skip, as prepare.policy says;
through the CLI, a failure exits non-zero and publishes nothing."""

from __future__ import annotations

import gzip
import json
import os
import re

import pytest
from prepare_helpers import make_config, records, write_config, write_json, write_jsonl, write_parquet

from components.prepare import PrepareError, run
from pipelines.cli import main

GOOD = 20


def _with_line(tmp_path, bad: str | bytes, line: int = 17, fmt: str = "chat", name: str = "data.jsonl"):
    """GOOD valid records with `bad` (a raw line) inserted as line `line`."""
    lines = [json.dumps(r).encode() for r in records(fmt, GOOD)]
    lines.insert(line - 1, bad if isinstance(bad, bytes) else bad.encode())
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _run(tmp_path, tokenizer, path, **prepare):
    return run(make_config([{"uri": str(path)}], **prepare), None, tmp_path / "out", tokenizer)


BOT = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                               {"role": "bot", "content": "beep"}, {"role": "assistant", "content": "ok"}]})


# -- per-record problems: default policy, and the other policy ---------------------------------------
def test_malformed_json_fails_by_default_naming_file_and_line(tmp_path, tokenizer):
    path = _with_line(tmp_path, '{"messages": [}')
    with pytest.raises(PrepareError, match=rf"^{path}:17: malformed JSON: Expecting value \(column 15\) "
                                           r"\(prepare.policy.malformed_json is 'fail'; set it to 'skip'"):
        _run(tmp_path, tokenizer, path)
    assert not (tmp_path / "out").exists()  # nothing is written before the data is known to be good


def test_malformed_json_skipped_and_counted_when_the_policy_says_so(tmp_path, tokenizer):
    path = _with_line(tmp_path, '{"messages": [}')
    result = _run(tmp_path, tokenizer, path, policy={"malformed_json": "skip"})
    drop = result.stats["drops"]["malformed_json"]
    assert drop["count"] == 1 and drop["examples"][0]["where"] == f"{path}:17"
    assert result.stats["stages"]["read"] == GOOD + 1 and result.stats["stages"]["valid"] == GOOD


def test_unknown_role_is_skipped_by_default_and_fails_with_the_field(tmp_path, tokenizer):
    path = _with_line(tmp_path, BOT)
    result = _run(tmp_path, tokenizer, path)
    example = result.stats["drops"]["unknown_role"]["examples"][0]
    assert example["where"] == f"{path}:17"
    assert example["detail"] == ("field 'messages[2].role': unknown role 'bot' (expected system, user or "
                                 "assistant)")
    assert "unknown_role" in result.report_path.read_text()
    with pytest.raises(PrepareError) as err:
        _run(tmp_path, tokenizer, path, policy={"unknown_role": "fail"})
    assert str(err.value).startswith(f"{path}:17: field 'messages[2].role': unknown role 'bot' (expected "
                                     f"system, user or assistant)")


@pytest.mark.parametrize(("bad", "kind", "field", "message"), [
    ({"instruction": "Do it", "output": 5}, "wrong_type", "output", "expected a string, got number"),
    ({"instruction": ["a"], "output": "x"}, "wrong_type", "instruction", "expected a string, got array"),
    ({"instruction": "Do it"}, "missing_field", "output", "required field is missing"),
    ({"instruction": "Do it", "output": "  "}, "empty_output", "output", "the answer is empty"),
    ("just a string", "wrong_type", None, "expected a JSON object (a record), got string"),
])
def test_alpaca_field_problems(tmp_path, tokenizer, bad, kind, field, message):
    path = _with_line(tmp_path, json.dumps(bad), line=2, fmt="alpaca")
    result = _run(tmp_path, tokenizer, path)  # skipped by default
    example = result.stats["drops"][kind]["examples"][0]
    assert example["where"] == f"{path}:2"
    assert example["detail"] == (f"field '{field}': {message}" if field else message)
    with pytest.raises(PrepareError, match=f"^{path}:2: " + (f"field '{field}': " if field else "")):
        _run(tmp_path, tokenizer, path, policy={kind: "fail"})


@pytest.mark.parametrize(("messages", "field", "message"), [
    ("hello", "messages", "expected an array of {role, content} objects, got string"),
    ([], "messages", "is empty"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": 3}], "messages[1].content",
     "expected a string, got number"),
    ([{"role": "user", "content": "q"}, {"content": "a"}], "messages[1].role", "required field is missing"),
    ([{"role": "user", "content": "q"}], "messages[0]", "the last message must be the assistant's answer"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}], "messages[1].content",
     "the answer is empty"),
])
def test_chat_field_problems_are_skipped_with_the_field(tmp_path, tokenizer, messages, field, message):
    path = _with_line(tmp_path, json.dumps({"messages": messages}), line=5)
    result = _run(tmp_path, tokenizer, path)
    examples = [e for d in result.stats["drops"].values() for e in d["examples"]]
    assert len(examples) == 1 and examples[0]["where"] == f"{path}:5"
    assert examples[0]["detail"].startswith(f"field '{field}': {message}")


def test_invalid_utf8_fails_by_default_and_can_be_skipped(tmp_path, tokenizer):
    record = {"messages": [{"role": "user", "content": "caf"}, {"role": "assistant", "content": "ok"}]}
    bad = json.dumps(record).encode().replace(b"caf", b"caf\xe9")  # latin-1, not UTF-8
    path = _with_line(tmp_path, bad, line=3)
    with pytest.raises(PrepareError, match=rf"^{path}:3: invalid UTF-8 \(invalid continuation byte"):
        _run(tmp_path, tokenizer, path)
    result = _run(tmp_path, tokenizer, path, policy={"invalid_utf8": "skip"})
    assert result.stats["drops"]["invalid_utf8"]["examples"][0]["where"] == f"{path}:3"


def test_template_errors_are_counted(tmp_path, tokenizer):
    # A Mistral-style template that insists on alternating roles.
    template = ("{%- for m in messages %}{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                "{{- raise_exception('roles must alternate user/assistant') }}{%- endif %}"
                "{{- '[' + m['role'] + '] ' + m['content'] + '</s>' }}{%- endfor %}")
    data = records("prompt_completion", 10)
    data.append({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                              {"role": "assistant", "content": "c"}]})
    chats = [{"messages": [{"role": "user", "content": r["prompt"]},
                           {"role": "assistant", "content": r["completion"]}]} for r in data[:-1]]
    path = write_jsonl(tmp_path / "d.jsonl", chats + data[-1:])
    result = run(make_config([{"uri": str(path)}]), None, tmp_path / "out", tokenizer,
                 chat_template=template)
    example = result.stats["drops"]["template_error"]["examples"][0]
    assert example["where"] == f"{path}:11" and "roles must alternate" in example["detail"]


# -- file-level problems: always errors -------------------------------------------------------------
def _parquet_without_rows(path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)


@pytest.mark.parametrize(("name", "make", "message"), [
    ("empty.jsonl", lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    ("blank.jsonl", lambda p: p.write_text("\n  \n\n"), "empty file (only whitespace)"),
    ("empty.json", lambda p: p.write_text("[ ]"), "empty file (the JSON array has no records)"),
    ("empty.parquet", _parquet_without_rows, "empty file (the Parquet file has no rows)"),
    ("random.jsonl", lambda p: p.write_bytes(os.urandom(4096)), "binary file"),
    ("image.jsonl", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(99)),
     "binary file"),
    ("fake.parquet", lambda p: p.write_text('{"text": "x"}\n'), "binary file that is not Parquet"),
    ("bad.parquet", lambda p: p.write_bytes(b"PAR1" + bytes(64) + b"PAR1"), "not a readable Parquet file"),
    ("data.jsonl.gz", lambda p: p.write_bytes(gzip.compress(b'{"text": "x"}\n')), "gzip-compressed"),
    ("broken.json", lambda p: p.write_text('[\n {"text": "a"},\n {"text": "b",}\n]'),
     "broken.json:3: malformed JSON: Expecting property name"),
    ("latin1.json", lambda p: p.write_bytes(b'[\n{"text": "a"},\n{"text": "caf\xe9"}]'),
     "latin1.json:3: invalid UTF-8"),
    ("missing.jsonl", None, "input not found"),
])
def test_file_level_problems_are_clear_errors(tmp_path, tokenizer, name, make, message):
    path = tmp_path / name
    if make:
        make(path)
    with pytest.raises(PrepareError, match=re.escape(message)) as err:
        _run(tmp_path, tokenizer, path, policy={k: "skip" for k in ("malformed_json", "invalid_utf8")})
    assert str(err.value).startswith(str(path))


def test_json_array_records_are_located_by_line_and_index(tmp_path, tokenizer):
    data = records("alpaca", 5) + [{"instruction": "x", "output": 7}]
    path = write_json(tmp_path / "d.json", data)
    result = _run(tmp_path, tokenizer, path)
    starts = [i + 1 for i, text in enumerate(path.read_text().splitlines()) if text == "  {"]
    line = starts[5]  # the line where the 6th record (index 5) opens
    assert result.stats["drops"]["wrong_type"]["examples"][0]["where"] == f"{path}:{line} [index 5]"


def test_parquet_rows_are_located_by_row(tmp_path, tokenizer):
    path = write_parquet(tmp_path / "d.parquet", records("alpaca", 5) + [{"instruction": "x", "output": ""}])
    result = _run(tmp_path, tokenizer, path)
    assert result.stats["drops"]["empty_output"]["examples"][0]["where"] == f"{path} [row 5]"


def test_a_source_with_nothing_left_is_an_error(tmp_path, tokenizer):
    # Every record is longer than any limit could hold (the prompt alone exceeds max_seq_len).
    good = write_jsonl(tmp_path / "good.jsonl", records("chat", 10))
    huge = write_jsonl(tmp_path / "huge.jsonl", [{"prompt": "word " * 500, "completion": "x"}])
    cfg = make_config([{"uri": str(good)}, {"uri": str(huge)}], max_seq_len=64, length_policy="truncate")
    with pytest.raises(PrepareError, match="data source.s. huge: no records left"):
        run(cfg, None, tmp_path / "out", tokenizer)


def test_a_tokenizer_without_chat_template_is_an_error(tmp_path, tokenizer):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = None
    path = write_jsonl(tmp_path / "d.jsonl", records("chat", 3))
    with pytest.raises(PrepareError, match="has no chat template"):
        run(make_config([{"uri": str(path)}]), None, tmp_path / "out", plain)


# -- through the CLI: exit code 2, a clear message, no output and no manifest ---------------------
@pytest.mark.parametrize("case", ["malformed", "unknown_role_fail", "empty", "binary", "missing"])
def test_cli_failure_exits_non_zero_and_publishes_nothing(tmp_path, tokenizer_dir, capsys, case):
    policy = {}
    if case == "malformed":
        path, expected = _with_line(tmp_path, "{oops"), ":17: malformed JSON"
    elif case == "unknown_role_fail":
        path, expected = _with_line(tmp_path, BOT), ":17: field 'messages[2].role': unknown role 'bot'"
        policy = {"policy": {"unknown_role": "fail"}}
    elif case == "empty":
        path, expected = tmp_path / "data.jsonl", "empty file"
        path.write_bytes(b"")
    elif case == "binary":
        path, expected = tmp_path / "data.jsonl", "binary file"
        path.write_bytes(bytes(range(256)) * 4)
    else:
        path, expected = tmp_path / "nope.jsonl", "input not found"
    config = write_config(tmp_path / "cfg.yaml", [{"uri": str(path)}], **policy)
    out = tmp_path / "published"
    rc = main(["prepare", "--config", str(config), "--set", f"model.base={tokenizer_dir}", "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"kubetune prepare: error: {path}" in err and expected in err
    assert not out.exists()  # no partial output and no _manifest.json
