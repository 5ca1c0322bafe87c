"""`kubetune prepare` with sources and outputs on a real S3 server (SeaweedFS, the s3_env fixture)."""

from __future__ import annotations

import json

import pytest
from prepare_helpers import make_config, records, write_config, write_jsonl, write_parquet

from components.common import storage
from components.common.errors import KubetuneError
from components.prepare.sources import fetch_source
from pipelines.cli import main


def _prepare(config, tokenizer_dir, output, *inputs):
    argv = ["prepare", "--config", str(config), "--set", f"model.base={tokenizer_dir}", "--output", output]
    for uri in inputs:
        argv += ["--input", uri]
    return main(argv)


def _read(uri: str) -> bytes:
    return storage.fetch_file(uri).read_bytes()


def test_single_object_source_and_s3_output(s3_env, tmp_path, tokenizer_dir):
    local = write_jsonl(tmp_path / "chat.jsonl", records("chat", 30))
    source = s3_env.uri("datasets", "chat.jsonl")
    storage.upload_file(local, source)
    config = write_config(tmp_path / "cfg.yaml", [{"uri": source, "name": "contracts"}])
    output = s3_env.uri("runs", "r1", "prepare")

    assert _prepare(config, tokenizer_dir, output) == 0
    manifest = storage.read_manifest(output)
    assert manifest.producer == "prepare"
    assert {f.path for f in manifest.files} == {"train.jsonl", "test.jsonl", "stats.json", "report.md",
                                                 "token_lengths.png", "step_outcome.json"}
    [entry] = manifest.lineage["data_files"]
    assert entry["uri"] == source and entry["sha256"] == storage.sha256_file(local)
    assert manifest.lineage["config_hash"] and manifest.lineage["data_sha256"]
    stats = json.loads(_read(output + "/stats.json"))
    assert stats["sources"]["contracts"]["files"][0]["uri"] == source
    assert stats["stages"]["train"] + stats["stages"]["test"] == 30
    assert _read(output + "/token_lengths.png").startswith(b"\x89PNG")


def test_prefix_source_reads_every_data_object_under_it(s3_env, tmp_path, tokenizer_dir):
    part0 = write_jsonl(tmp_path / "p" / "part-0.jsonl", records("alpaca", 10))
    part1 = write_parquet(tmp_path / "p" / "part-1.parquet", records("prompt_completion", 10, 100))
    notes = tmp_path / "p" / "README.txt"
    notes.write_text("not data")
    prefix = s3_env.uri("datasets", "parts")
    for f in (part0, part1, notes):
        storage.upload_file(f, f"{prefix}/{f.name}")
    storage.upload_file(part0, f"{prefix}/_manifest.json")  # bookkeeping, skipped even though .json

    files = fetch_source(prefix + "/")
    assert [f.uri for f in files] == [f"{prefix}/part-0.jsonl", f"{prefix}/part-1.parquet"]
    config = write_config(tmp_path / "cfg.yaml", [{"uri": prefix}])  # no trailing slash: a prefix too
    output = str(tmp_path / "out")
    assert _prepare(config, tokenizer_dir, output) == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert [(f["uri"], f["format"], f["container"]) for f in stats["sources"]["parts"]["files"]] == [
        (f"{prefix}/part-0.jsonl", "alpaca", "jsonl"), (f"{prefix}/part-1.parquet", "prompt_completion",
                                                        "parquet")]
    assert stats["stages"]["valid"] == 20
    assert (tmp_path / "out" / "_manifest.json").is_file()


def test_input_overrides_the_config_uris(s3_env, tmp_path, tokenizer_dir):
    a = s3_env.uri("a.jsonl")
    storage.upload_file(write_jsonl(tmp_path / "a.jsonl", records("text", 12)), a)
    config = write_config(tmp_path / "cfg.yaml", [{"uri": "s3://elsewhere/x.jsonl", "name": "texts"}])
    assert _prepare(config, tokenizer_dir, str(tmp_path / "out"), a) == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["sources"]["texts"]["files"][0]["uri"] == a
    # One --input per source, or none.
    assert _prepare(config, tokenizer_dir, str(tmp_path / "out2"), a, a) == 2


@pytest.mark.parametrize("case", ["missing_bucket", "missing_object", "empty_prefix"])
def test_missing_s3_sources_are_clear_errors(s3_env, tmp_path, tokenizer_dir, capsys, case):
    uri = {"missing_bucket": "s3://kt-no-such-bucket-4711/data/chat.jsonl",
           "missing_object": s3_env.uri("data", "nope.jsonl"),
           "empty_prefix": s3_env.uri("data", "nothing-here") + "/"}[case]
    expected = {"missing_bucket": "bucket 'kt-no-such-bucket-4711' does not exist",
                "missing_object": "no object with key 'data/nope.jsonl'",
                "empty_prefix": "no data objects"}[case]
    with pytest.raises(KubetuneError, match=expected):
        fetch_source(uri)
    config = write_config(tmp_path / "cfg.yaml", [{"uri": uri}])
    output = s3_env.uri("runs", "r1", "prepare")
    assert _prepare(config, tokenizer_dir, output) == 2
    assert expected in capsys.readouterr().err
    assert storage.list_objects(s3_env.uri("runs")) == []  # nothing published, no manifest


def test_bad_data_on_s3_publishes_nothing(s3_env, tmp_path, tokenizer_dir, capsys):
    lines = [json.dumps(r) for r in records("chat", 10)]
    lines.insert(4, "{not json")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    source = s3_env.uri("datasets", "bad.jsonl")
    storage.upload_file(bad, source)
    config = write_config(tmp_path / "cfg.yaml", [{"uri": source}])
    output = s3_env.uri("runs", "r2", "prepare")
    assert _prepare(config, tokenizer_dir, output) == 2
    assert f"{source}:5: malformed JSON" in capsys.readouterr().err  # the S3 URI, not a cache path
    assert storage.read_manifest(output) is None and storage.list_objects(output) == []


def test_step_reads_s3_sources_through_fetch_source(s3_env, tmp_path, tokenizer):
    from components.prepare import run

    a, b = s3_env.uri("mix", "a.jsonl"), s3_env.uri("mix", "b.jsonl")
    storage.upload_file(write_jsonl(tmp_path / "a.jsonl", records("chat", 40)), a)
    storage.upload_file(write_jsonl(tmp_path / "b.jsonl", records("text", 40, 100)), b)
    cfg = make_config([{"uri": a, "weight": 0.8}, {"uri": b, "weight": 0.2}])
    result = run(cfg, [fetch_source(a), fetch_source(b)], tmp_path / "out", tokenizer)
    assert result.stats["sources"]["a"]["stages"]["mixed"] == 40
    assert result.stats["sources"]["b"]["stages"]["mixed"] == 10
