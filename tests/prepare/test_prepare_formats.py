"""Every container (JSONL, JSON array, Parquet) x every format (alpaca, chat, prompt/completion, text),
format detection, and the rendered prompt/completion that training masks the prompt with."""

from __future__ import annotations

import json

import pytest
from prepare_helpers import EOT, WRITERS, make_config, records, rows, write_jsonl

from components.prepare import PrepareError, run

FORMATS = ["alpaca", "chat", "prompt_completion", "text"]
SUFFIX = {"jsonl": ".jsonl", "json": ".json", "parquet": ".parquet"}


@pytest.mark.parametrize("container", ["jsonl", "json", "parquet"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_container_and_format(tmp_path, tokenizer, container, fmt):
    data = records(fmt, 20)
    path = WRITERS[container](tmp_path / f"data{SUFFIX[container]}", data)
    result = run(make_config([{"uri": str(path)}]), None, tmp_path / "out", tokenizer)

    source = result.stats["sources"]["data"]
    assert source["files"] == [{"uri": str(path), "container": container, "format": fmt, "records": 20}]
    assert source["stages"]["valid"] == 20
    out = rows(result.train_path) + rows(result.test_path)
    assert len(out) == 20 and result.num_test == 2
    assert {r["format"] for r in out} == {fmt} and {r["source"] for r in out} == {"data"}
    by_id = {r["id"]: r for r in out}
    assert len(by_id) == 20
    for r in out:
        assert r["num_tokens"] == r["prompt_tokens"] + r["completion_tokens"] and r["num_tokens"] > 0
        if fmt == "text":
            assert r["messages"] is None and r["prompt"] is None and r["completion"] is None
            assert r["text"].startswith("item ") and r["prompt_tokens"] == 0
            continue
        assert r["text"] is None
        roles = [m["role"] for m in r["messages"]]
        assert roles == (["system", "user", "assistant"] if fmt == "chat" else ["user", "assistant"])
        assert r["completion"] == r["messages"][-1]["content"] + EOT
    if fmt == "alpaca":  # the input is appended to the instruction
        user = [m["content"] for r in out for m in r["messages"] if m["role"] == "user"]
        assert all(u.startswith("item ") and "\n\ninput " in u for u in user)


def test_format_is_detected_per_file_and_from_the_first_valid_record(tmp_path, tokenizer):
    chat = write_jsonl(tmp_path / "a" / "chat.jsonl", records("chat", 10))
    alpaca = tmp_path / "a" / "more.jsonl"
    # The first record names no format ({"id": 1}) and the second is malformed: detection skips both.
    good = "".join(json.dumps(r) + "\n" for r in records("alpaca", 10, 10))
    alpaca.write_text('{"id": 1}\n{broken\n' + good)
    cfg = make_config([{"uri": str(tmp_path / "a"), "name": "mixed"}],
                      policy={"malformed_json": "skip"})
    result = run(cfg, None, tmp_path / "out", tokenizer)
    files = result.stats["sources"]["mixed"]["files"]
    assert [(f["uri"], f["format"]) for f in files] == [(str(chat), "chat"), (str(alpaca), "alpaca")]
    drops = result.stats["drops"]
    assert drops["missing_field"]["examples"][0]["where"] == f"{alpaca}:1"
    assert drops["malformed_json"]["examples"][0]["where"] == f"{alpaca}:2"
    assert result.num_train + result.num_test == 20


def test_format_from_config_overrides_detection(tmp_path, tokenizer):
    # Records that look like prompt/completion but also carry "text": the config says text.
    data = [{"prompt": f"p{i}", "completion": f"c{i}", "text": r["text"]}
            for i, r in enumerate(records("text", 10))]
    path = write_jsonl(tmp_path / "d.jsonl", data)
    result = run(make_config([{"uri": str(path), "format": "text"}]), None, tmp_path / "out", tokenizer)
    assert {r["format"] for r in rows(result.train_path)} == {"text"}


def test_undetectable_format_is_a_clear_error(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(PrepareError, match=r"odd.jsonl: cannot detect the data format.*'answer', 'question'.*"
                                           r"data.sources\[\].format"):
        run(make_config([{"uri": str(path)}]), None, tmp_path / "out", tokenizer)


def test_prompt_plus_completion_is_the_full_rendering(tmp_path, tokenizer):
    """What training masks with: prompt + completion == the template's rendering of the conversation
    (minus the whitespace after the final end-of-turn), and the completion is exactly the last
    assistant turn as the template's {% generation %} span marks it."""
    chat = records("chat", 12)
    chat[0]["messages"] += [{"role": "user", "content": "And again?"},
                            {"role": "assistant", "content": "Once more."}]  # multi-turn
    paths = [write_jsonl(tmp_path / "chat.jsonl", chat),
             write_jsonl(tmp_path / "alpaca.jsonl", records("alpaca", 12, 100)),
             write_jsonl(tmp_path / "pc.jsonl", records("prompt_completion", 12, 200))]
    cfg = make_config([{"uri": str(p)} for p in paths], test_ratio=0.25)
    result = run(cfg, None, tmp_path / "out", tokenizer)
    out = rows(result.train_path) + rows(result.test_path)
    assert len(out) == 36 and any(len(r["messages"]) == 5 for r in out)
    for r in out:
        full = tokenizer.apply_chat_template(r["messages"], tokenize=False)
        assert r["prompt"] + r["completion"] == full.rstrip("\n")
        assert r["prompt"] == tokenizer.apply_chat_template(r["messages"][:-1], tokenize=False,
                                                            add_generation_prompt=True)
        assert r["prompt"].endswith("<|im_start|>assistant\n")
        assert r["completion"].endswith(EOT) and r["completion"].count(EOT) == 1
        # The token-level view: the prompt's tokens are a prefix of the full sequence's, and the
        # completion's tokens are the last assistant turn's generation span.
        ids = tokenizer(r["prompt"] + r["completion"], add_special_tokens=False)["input_ids"]
        prompt_ids = tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]
        assert ids[:len(prompt_ids)] == prompt_ids
        assert len(ids) == r["num_tokens"] and len(prompt_ids) == r["prompt_tokens"]
        marked = tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True,
                                               return_assistant_tokens_mask=True)
        mask = marked["assistant_masks"]
        last_span_start = max(i for i in range(len(mask)) if mask[i] and (i == 0 or not mask[i - 1]))
        assert marked["input_ids"][last_span_start:last_span_start + sum(mask[last_span_start:])] == \
            ids[len(prompt_ids):]


def test_parquet_output_has_the_same_records(tmp_path, tokenizer):
    mixed = [write_jsonl(tmp_path / "chat.jsonl", records("chat", 15)),
             write_jsonl(tmp_path / "text.jsonl", records("text", 15, 50))]
    sources = [{"uri": str(p)} for p in mixed]
    as_jsonl = run(make_config(sources), None, tmp_path / "j", tokenizer)
    as_parquet = run(make_config(sources, output_format="parquet"), None, tmp_path / "p", tokenizer)
    assert as_parquet.train_path.name == "train.parquet" and as_parquet.test_path.name == "test.parquet"
    assert rows(as_parquet.train_path) == rows(as_jsonl.train_path)
    assert rows(as_parquet.test_path) == rows(as_jsonl.test_path)
