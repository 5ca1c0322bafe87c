"""The bad-input corpus (issue 18, section 1): every malformed dataset, config and URI in tests/data/bad/
(plus the big and binary ones generated here), run through the `kubetune` CLI in a subprocess, as a user
would run it.

Each failing case asserts: a non-zero exit (2, the CLI's "bad input" status), the one-line
`kubetune <cmd>: error:` message with the file and line and the field (or the config key) and what was
expected, no Python traceback on stderr, and no `_manifest.json` nor release left where the output was to
go (a local directory, or an S3 prefix). A few inputs are accepted on purpose (a BOM and CRLF line ends, a
JSON array in a .jsonl file) and some bad records are skipped by prepare.policy: those cases assert exit 0,
a published output, and a console summary that says how many records were dropped and why.

The cases are listed, with the message each one must give, in tests/reliability/README.md; `CASES` below is
the source of truth, and `test_every_corpus_file_is_tried` fails when a file in tests/data/bad/ is not used.
All selected cases run up front, a few subprocesses at a time (most of them wait on imports or the network,
not the CPU), and each test checks one result.
"""

from __future__ import annotations

import gzip
import itertools
import json
import random
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import CliResult  # tests/reliability/conftest.py (for annotations only)

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bad"
DATASETS, CONFIGS = CORPUS / "datasets", CORPUS / "configs"
WORKERS = 3
BUCKET = "kt-bad-inputs"  # the restricted_s3 fixture's bucket: `reader` may read and list it, `nobody` nothing
BOUNDED_S = 60  # an unreachable endpoint must fail within this, not hang
WORDS = ("the quick brown fox jumps over a lazy dog while contract parties agree on dates amounts and terms of "
         "payment delivery notice termination governing law seller buyer licensor licensee effective").split()


# ---- the inputs generated here (too big, binary, or byte-exact for git) ----------------------------
def _sentence(i: int, salt: str) -> str:
    rng = random.Random(f"{salt}-{i}")
    return f"item {i} " + " ".join(rng.choice(WORDS) for _ in range(12))


def _chat(i: int, salt: str) -> dict:
    return {"messages": [{"role": "user", "content": _sentence(i, salt + "q")},
                         {"role": "assistant", "content": _sentence(i, salt + "a")}]}


def generate_inputs(d: Path) -> dict[str, Path]:
    """The generated half of the corpus, written into d."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d.mkdir(parents=True, exist_ok=True)
    good = "".join(json.dumps(_chat(i, "good")) + "\n" for i in range(12))
    files = {"good": d / "good.jsonl"}
    files["good"].write_text(good)
    # a BOM and Windows line ends: accepted
    files["bom_crlf"] = d / "bom_crlf.jsonl"
    files["bom_crlf"].write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(_chat(i, "crlf")) + "\r\n"
                                                           for i in range(8)).encode())
    # one 10 MB record: a 10 MB answer
    answer = " ".join(itertools.islice(itertools.cycle(WORDS), 2_000_000))[:10 * 2**20]
    files["huge"] = d / "huge_record.jsonl"
    files["huge"].write_text(json.dumps({"messages": [{"role": "user", "content": "Summarise the contract."},
                                                      {"role": "assistant", "content": answer}]}) + "\n")
    # latin-1 bytes on line 2
    files["invalid_utf8"] = d / "invalid_utf8.jsonl"
    files["invalid_utf8"].write_bytes(json.dumps(_chat(1, "utf")).encode() + b"\n"
                                      + json.dumps(_chat(2, "utf")).encode().replace(b"item", b"caf\xe9") + b"\n")
    files["gzip"] = d / "gzipped.jsonl.gz"
    files["gzip"].write_bytes(gzip.compress(good.encode(), mtime=0))
    files["binary"] = d / "binary.jsonl"
    files["binary"].write_bytes(bytes(range(256)) * 64)
    # Parquet whose columns are no known format's, and Parquet (format: alpaca) without the output column
    files["parquet_columns"] = d / "missing_columns.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "Who signs?", "answer": "Acme"},
                                         {"question": "When?", "answer": "1 May"}]), files["parquet_columns"])
    files["parquet_no_output"] = d / "alpaca_no_output.parquet"
    pq.write_table(pa.Table.from_pylist([{"instruction": "Name the buyer.", "input": "Buyer: Acme Ltd"},
                                         {"instruction": "Name the seller.", "input": "Seller: Bolt GmbH"}]),
                   files["parquet_no_output"])
    return files


class Blackhole:
    """A TCP port on 127.0.0.1 that never completes a connection: its accept queue is full, so the kernel
    drops new SYNs, as a firewall that drops packets does (connect timeouts, not refusals)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fillers.append(c)

    def close(self):
        for s in [*self.fillers, self.sock]:
            s.close()


def closed_port() -> int:
    from pipelines.local_s3 import free_ports

    return free_ports(1)[0]


# ---- the context every case is built from ------------------------------------------------------------
@dataclass
class Ctx:
    tmp: Path
    tokenizer: Path
    gen: dict[str, Path]
    s3: object  # RestrictedS3
    blackhole: Blackhole
    closed: int
    dataset: Path  # a small prepared-looking dataset for `kubetune train`
    configs: dict[str, Path] = field(default_factory=dict)

    @property
    def good_config(self) -> Path:
        return self.configs["_valid.yaml"]

    def out(self, case_id: str) -> Path:
        return self.tmp / "out" / case_id

    @property
    def root(self) -> Path:
        return self.tmp / "root"


def render_configs(ctx: Ctx) -> None:
    """Every corpus config with its placeholders filled in (line numbers unchanged)."""
    gptq = ctx.tmp / "gptq-model"
    gptq.mkdir()
    for f in ctx.tokenizer.iterdir():
        (gptq / f.name).write_bytes(f.read_bytes())
    (gptq / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 4, "vocab_size": 400,
        "max_position_embeddings": 512, "torch_dtype": "float16",
        "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}}))
    (ctx.tmp / "configs").mkdir()
    for path in sorted(CONFIGS.glob("*.yaml")):
        base = gptq if path.name.startswith("qlora_") else ctx.tokenizer
        text = (path.read_text().replace("@BASE@", str(base)).replace("@DATA@", str(ctx.gen["good"]))
                .replace("@ROOT@", str(ctx.root)))
        ctx.configs[path.name] = ctx.tmp / "configs" / path.name
        ctx.configs[path.name].write_text(text)
    alpaca = ctx.tmp / "configs" / "alpaca_format.yaml"
    alpaca.write_text(ctx.good_config.read_text().replace(f'    - uri: "{ctx.gen["good"]}"\n',
                                                          f'    - uri: "{ctx.gen["good"]}"\n      format: alpaca\n'))
    ctx.configs["alpaca_format.yaml"] = alpaca
    accepted = ctx.tmp / "configs" / "accepted.yaml"
    accepted.write_text(ctx.good_config.read_text().replace(
        f'    - uri: "{ctx.gen["good"]}"\n',
        f'    - {{uri: "{ctx.gen["bom_crlf"]}", name: bom_crlf}}\n    - {{uri: "{DATASETS / "array_in.jsonl"}", '
        f'name: array}}\n    - {{uri: "{DATASETS / "some_bad.jsonl"}", name: some_bad}}\n'))
    ctx.configs["accepted.yaml"] = accepted


# ---- cases ---------------------------------------------------------------------------------------------
@dataclass
class Run:
    argv: list[str]
    expect: list[str]  # every one must be in stderr (rc != 0) or stdout (rc == 0)
    rc: int = 2
    env: dict[str, str] = field(default_factory=dict)
    output: Path | str | None = None  # where nothing may be published (a path, or s3://bucket/prefix)
    max_seconds: float | None = None
    check: Callable[[CliResult], None] | None = None
    group: str | None = None  # "validate": run with the other config files in one `kubetune config validate`


@dataclass
class Case:
    id: str
    kind: str  # dataset | config | uri, or accepted (an input prepare takes, in spite of appearances)
    files: tuple[str, ...]  # the corpus files it uses (relative to tests/data/bad), for the completeness test
    build: Callable[[Ctx], Run]
    waits: bool = False  # waits on network timeouts: run beside the CPU-bound ones, not in their pool
    heavy: bool = False  # CPU-heavy (torch, a 10 MB record): started first


def prepare(ctx: Ctx, case_id: str, input_path, *sets: str, config: str = "_valid.yaml",
            output: str | Path | None = None) -> tuple[list[str], Path | str]:
    """`kubetune prepare --config CFG [--input INPUT] [--set ...] --output OUT` and OUT."""
    out = output or ctx.out(case_id)
    argv = ["prepare", "--config", str(ctx.configs[config])]
    if input_path is not None:
        argv += ["--input", str(input_path)]
    for s in sets:
        argv += ["--set", s]
    return argv + ["--output", str(out)], out


def dataset_case(case_id: str, file: str | None, expect: list[str], *sets: str, gen: str | None = None,
                 config: str = "_valid.yaml", rc: int = 2, check=None, max_seconds=None,
                 corpus_files: tuple[str, ...] | None = None, heavy: bool = False) -> Case:
    """`kubetune prepare --input INPUT`: a corpus file (or directory), a generated one (`gen`), or with
    neither a path that does not exist. `{input}` in expect is the input's path."""

    def build(ctx: Ctx) -> Run:
        path = ctx.gen[gen] if gen else DATASETS / file if file else ctx.tmp / "does-not-exist.jsonl"
        argv, out = prepare(ctx, case_id, path, *sets, config=config)
        return Run(argv, [e.format(input=path) for e in expect], rc=rc, output=out, check=check,
                   max_seconds=max_seconds)

    files = corpus_files if corpus_files is not None else (f"datasets/{file}",) if file else ()
    return Case(case_id, "dataset", files, build, heavy=heavy)


def fail(kind: str) -> str:
    return f"prepare.policy.{kind}=fail"


def accepted_case(case_id: str, file: str | None, check: Callable[[CliResult, dict], None]) -> Case:
    """The inputs prepare accepts, all three as the sources of one `kubetune prepare` (accepted.yaml):
    each case checks its source in the console output and in the published stats.json."""

    def build(ctx: Ctx) -> Run:
        argv, out = prepare(ctx, "accepted", None, config="accepted.yaml")

        def check_(r: CliResult) -> None:
            check(r, json.loads((out / "stats.json").read_text()))

        return Run(argv, [], rc=0, output=out, check=check_, group="accepted")

    return Case(case_id, "accepted", (f"datasets/{file}",) if file else (), build, heavy=True)


def _accepted(source: str, records: int, container: str):
    def check(r: CliResult, stats: dict) -> None:
        s = stats["sources"][source]
        assert (s["stages"]["read"], s["stages"]["valid"]) == (records, records), (s, r)
        assert [f["container"] for f in s["files"]] == [container], (s, r)
        assert not any(d["by_source"].get(source) for k, d in stats["drops"].items() if k in POLICY_KINDS), stats

    return check


def _skip_summary(r: CliResult, stats: dict) -> None:
    path = DATASETS / "some_bad.jsonl"
    lines = r.stdout.splitlines()
    assert stats["sources"]["some_bad"]["stages"]["read"] == 20, stats
    assert stats["sources"]["some_bad"]["stages"]["valid"] == 17, stats
    assert "prepare: dropped 3 bad records (prepare.policy: skip): 1 empty_output, 1 unknown_role, 1 wrong_type" \
        in lines, r
    assert (f"prepare:   empty_output: 1, first {path}:10: field 'messages[1].content': the answer is empty"
            in lines), r
    assert (f"prepare:   unknown_role: 1, first {path}:5: field 'messages[1].role': unknown role 'bot' "
            "(expected system, user or assistant)") in lines, r
    assert (f"prepare:   wrong_type: 1, first {path}:13: field 'messages': expected an array of {{role, content}} "
            "objects, got number") in lines, r
    assert any(line.startswith("prepare: removed ") and "mixing_downsample" in line for line in lines), r


POLICY_KINDS = ("malformed_json", "invalid_utf8", "wrong_type", "missing_field", "unknown_role", "empty_output",
                "template_error", "misplaced_system")


DATASET_CASES = [
    dataset_case("truncated_json_line", "truncated.jsonl",
                 ["{input}:4: malformed JSON: Unterminated string starting at",
                  "(prepare.policy.malformed_json is 'fail'; set it to 'skip'"]),
    dataset_case("trailing_garbage", "trailing_garbage.jsonl", ["{input}:2: malformed JSON: Extra data (column"]),
    dataset_case("single_quotes", "single_quotes.jsonl",
                 ["{input}:2: malformed JSON: Expecting property name enclosed in double quotes (column 2)"]),
    accepted_case("bom_and_crlf_accepted", None, _accepted("bom_crlf", 8, "jsonl")),
    accepted_case("json_array_in_jsonl_accepted", "array_in.jsonl", _accepted("array", 8, "json")),
    dataset_case("wrong_type_output", "wrong_type_output.jsonl",
                 ["{input}:2: field 'output': expected a string, got number"], fail("wrong_type")),
    dataset_case("wrong_type_messages", "wrong_type_messages.jsonl",
                 ["{input}:2: field 'messages': expected an array of {{role, content}} objects, got string"],
                 fail("wrong_type")),
    dataset_case("record_not_an_object", "record_not_object.jsonl",
                 ["{input}:2: expected a JSON object (a record), got array"], fail("wrong_type")),
    dataset_case("content_parts", "content_parts.jsonl",
                 ["{input}:2: field 'messages[0].content': expected a string, got array (content parts are not "
                  "supported; use a string)"], fail("wrong_type")),
    dataset_case("role_not_a_string", "role_not_string.jsonl",
                 ["{input}:2: field 'messages[0].role': expected a string, got number"], fail("wrong_type")),
    dataset_case("unknown_role", "unknown_role.jsonl",
                 ["{input}:3: field 'messages[1].role': unknown role 'bot' (expected system, user or assistant)",
                  "prepare.policy.unknown_role is 'fail'"], fail("unknown_role")),
    dataset_case("empty_answer", "empty_answer.jsonl",
                 ["{input}:2: field 'messages[1].content': the answer is empty"], fail("empty_output")),
    dataset_case("empty_question", "empty_question.jsonl",
                 ["{input}:2: field 'messages[0].content': the user's message is empty (expected text)"],
                 fail("missing_field")),
    dataset_case("no_assistant_turn", "no_assistant.jsonl",
                 ["{input}:2: field 'messages[1]': the last message must be the assistant's answer (got role "
                  "'user')"], fail("missing_field")),
    dataset_case("system_in_the_middle", "system_in_middle.jsonl",
                 ["{input}:2: field 'messages[2].role': a system message after the conversation started (expected "
                  "system messages only before the first user or assistant message)",
                  "prepare.policy.misplaced_system is 'fail'"], fail("misplaced_system")),
    dataset_case("missing_role", "missing_role.jsonl",
                 ["{input}:2: field 'messages[0].role': required field is missing"], fail("missing_field")),
    dataset_case("empty_messages", "empty_messages.jsonl",
                 ["{input}:3: field 'messages': is empty (expected user and assistant messages)"],
                 fail("missing_field")),
    dataset_case("no_user_turn", "no_user.jsonl", ["{input}:2: field 'messages': no user message"],
                 fail("missing_field")),
    dataset_case("alpaca_without_output", "missing_output.jsonl",
                 ["{input}:2: field 'output': required field is missing"], fail("missing_field")),
    dataset_case("every_record_bad", "all_records_bad.jsonl",
                 ["data source(s) all_records_bad: no records left after validation",
                  "1 unknown_role (first: {input}:1: field 'messages[1].role': unknown role 'bot'",
                  "1 empty_output (first: {input}:2: field 'messages[1].content': the answer is empty)",
                  "1 missing_field (first: {input}:3: field 'messages[0]': the last message must be the assistant's"]),
    dataset_case("ten_megabyte_record", None,
                 ["data source(s) huge_record: no records left", "1 too_long (first: {input}:1: over ",
                  "tokens (counted on the first 4,224 of its 10,485,", "characters) > max_seq_len 256"],
                 gen="huge", max_seconds=45, heavy=True),
    dataset_case("invalid_utf8", None,
                 ["{input}:2: invalid UTF-8 (invalid continuation byte at byte",
                  "prepare.policy.invalid_utf8 is 'fail'"],
                 gen="invalid_utf8"),
    dataset_case("zero_byte_file", "empty.jsonl",
                 ["{input}: empty file (0 bytes); expected JSONL, JSON or Parquet records"]),
    dataset_case("whitespace_only", "whitespace_only.jsonl",
                 ["{input}: empty file (only whitespace); expected JSONL, JSON or Parquet records"]),
    dataset_case("parquet_missing_columns", None,
                 ["{input}: cannot detect the data format: no record has the keys of a known format (first record: "
                  "['answer', 'question']); expected messages (chat), instruction + output (alpaca)"],
                 gen="parquet_columns"),
    dataset_case("parquet_missing_output_column", None,
                 ["{input} [row 0]: field 'output': required field is missing"], fail("missing_field"),
                 gen="parquet_no_output", config="alpaca_format.yaml"),
    dataset_case("csv_named_jsonl", "csv_named_jsonl.jsonl",
                 ["{input}:1: looks like CSV (comma-separated columns), not JSON lines: the first line is "
                  "'instruction,input,output'; expected one JSON object per line"]),
    dataset_case("tsv_named_jsonl", "tsv_named_jsonl.jsonl",
                 ["{input}:1: looks like TSV (tab-separated columns), not JSON lines"]),
    dataset_case("gzip_file", None,
                 ["{input}: gzip-compressed file; decompress it first (expected JSONL, JSON or Parquet)"], gen="gzip"),
    dataset_case("binary_file", None, ["{input}: binary file (NUL or control bytes at the start)"], gen="binary"),
    dataset_case("text_named_parquet", "not_parquet.parquet",
                 ["{input}: binary file that is not Parquet (no PAR1 magic bytes)"]),
    dataset_case("empty_json_array", "empty_array.json", ["{input}: empty file (the JSON array has no records)"]),
    dataset_case("truncated_json_array", "array_truncated.json",
                 ["{input}:3: malformed JSON: Invalid control character at (column 23); a JSON array cannot be "
                  "read past a malformed record, whatever prepare.policy says"]),
    dataset_case("unknown_format", "unknown_format.jsonl",
                 ["{input}: cannot detect the data format: no record has the keys of a known format (first record: "
                  "['answer', 'question'])", "or set data.sources[].format"]),
    dataset_case("missing_file", None, ["{input}: input not found (no such file or directory)"]),
    dataset_case("directory_without_data", "empty_dir",
                 ["{input}: no data files (.jsonl, .ndjson, .json, .parquet) under this directory"],
                 corpus_files=("datasets/empty_dir/README.txt",)),
    accepted_case("skipped_records_summary", "some_bad.jsonl", _skip_summary),
]


# -- configs: `kubetune config validate` (all in one process), and the step doors (`prepare`, `train`) ---
def line_of(path: Path, marker: str) -> int:
    """The 1-based number of the first line of path that starts (after indentation) with marker."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip().startswith(marker))


def config_case(case_id: str, file: str, expect: list[str], door: str = "validate", at: str | None = None,
                heavy: bool = False) -> Case:
    """`{cfg}` in expect is the rendered config's path, `{line}` the line that starts with `at`."""

    def build(ctx: Ctx) -> Run:
        cfg = ctx.configs[file]
        out = ctx.out(case_id)
        expect_ = [e.format(cfg=cfg, line=line_of(cfg, at) if at else "?") for e in expect]
        if door == "validate":
            return Run(["config", "validate", str(cfg)], expect_, group="validate")
        if door == "prepare":
            argv = ["prepare", "--config", str(cfg), "--output", str(out)]
        else:
            argv = ["train", "--config", str(cfg), "--dataset", str(ctx.dataset), "--output", str(out)]
        return Run(argv, expect_, output=out)

    return Case(case_id, "config", (f"configs/{file}",), build, heavy=heavy)


INVALID = "invalid config {cfg}:\n"  # then one line per problem: "  {cfg}:{line}: <key>: <what was expected>"
UNKNOWN = "unknown key (not in the schema; check the spelling)"
K8S_NAME = ("expected a Kubernetes name: 1-63 lowercase letters, digits, '-' or '.', starting and ending with a "
            "letter or digit (no '/', '_' or uppercase; it names releases/<model.name>/)")
VERSION = ("expected a release version: 1-63 letters, digits, '.', '_' or '-', starting and ending with a letter "
           "or digit (one path segment, no '/': it names releases/<model.name>/<version>/)")
CONFIG_CASES = [
    config_case("unknown_key", "unknown_key.yaml", [INVALID, "  {cfg}:{line}: train.lora.rank: " + UNKNOWN],
                door="train", at="rank:"),
    config_case("unknown_section", "unknown_section.yaml", [INVALID, "  {cfg}:{line}: trainig: " + UNKNOWN],
                at="trainig:"),
    config_case("unknown_policy_kind", "unknown_policy_kind.yaml",
                [INVALID, "  {cfg}:{line}: prepare.policy.bad_json: " + UNKNOWN], door="prepare", at="bad_json:"),
    config_case("wrong_type_number", "wrong_type_number.yaml",
                [INVALID, "  {cfg}:{line}: train.epochs: expected a valid number, unable to parse string as a number "
                 "(got \"three\")"], door="prepare", at="epochs:"),
    config_case("wrong_type_list", "wrong_type_list.yaml",
                [INVALID, "  {cfg}:{line}: data.sources: expected a valid list (got \""], at="sources:"),
    config_case("wrong_type_bool", "wrong_type_bool.yaml",
                [INVALID, "  {cfg}:{line}: train.packing: expected a valid boolean, unable to interpret input "
                 "(got \"sometimes\")"], at="packing:"),
    config_case("missing_model", "missing_model.yaml", [INVALID, "  {cfg}:{line}: model: required field is missing"],
                at="data:"),
    config_case("missing_base", "missing_base.yaml",
                [INVALID, "  {cfg}:{line}: model.base: required field is missing"], door="train", at="model:"),
    config_case("negative_lr", "negative_lr.yaml",
                [INVALID, "  {cfg}:{line}: train.lr: expected greater than 0 (got -0.0002)"], at="lr:"),
    config_case("negative_max_seq_len", "negative_max_seq_len.yaml",
                [INVALID, "  {cfg}:{line}: prepare.max_seq_len: expected greater than 0 (got -256)"], door="prepare",
                at="max_seq_len:"),
    config_case("negative_weight", "negative_weight.yaml",
                [INVALID, "  {cfg}:{line}: data.sources.0.weight: expected greater than 0 (got -1)"], at="weight:"),
    config_case("zero_batch_size", "zero_batch_size.yaml",
                [INVALID, "  {cfg}:{line}: train.per_device_batch_size: expected greater than 0 (got 0)"],
                at="per_device_batch_size:"),
    config_case("test_ratio_over_one", "test_ratio_over_one.yaml",
                [INVALID, "  {cfg}:{line}: prepare.test_ratio: expected less than 1 (got 1.5)"], at="test_ratio:"),
    config_case("bad_policy_value", "bad_policy_value.yaml",
                [INVALID, "  {cfg}:{line}: prepare.policy.wrong_type: expected 'fail' or 'skip' (got \"ignore\")"],
                at="wrong_type:"),
    config_case("bad_method", "bad_method.yaml",
                [INVALID, "  {cfg}:{line}: train.method: expected 'lora', 'qlora' or 'full' (got \"dora\")"],
                at="method:"),
    config_case("empty_sources", "empty_sources.yaml",
                [INVALID, "  {cfg}:{line}: data.sources: expected List should have at least 1 item after "
                 "validation, not 0"], at="sources:"),
    config_case("duplicate_source_names", "duplicate_source_names.yaml",
                ["data.sources: several sources are named 'contracts'; give each a distinct name "
                 "(data.sources[].name)"], door="prepare"),
    config_case("release_version_traversal", "version_traversal.yaml",
                [INVALID, "  {cfg}:{line}: publish.version: " + VERSION + " (got \"../../etc\")"], at="version:"),
    config_case("release_version_with_a_path", "version_slash.yaml",
                [INVALID, "  {cfg}:{line}: publish.version: " + VERSION + " (got \"v1/../../../x\")"], at="version:"),
    config_case("release_version_latest", "version_latest.yaml",
                [INVALID, "  {cfg}:{line}: publish.version: expected a name without 'latest' (charts/vllm refuses "
                 "release URIs containing it: a release is pinned by an immutable version) (got \"latest\")"],
                at="version:"),
    config_case("model_name_traversal", "model_name_traversal.yaml",
                [INVALID, "  {cfg}:{line}: model.name: " + K8S_NAME + " (got \"../../etc\")"], at="name:"),
    config_case("model_name_uppercase", "model_name_uppercase.yaml",
                [INVALID, "  {cfg}:{line}: model.name: " + K8S_NAME + " (got \"Contracts_Test\")"], door="prepare",
                at="name:"),
    config_case("model_name_underscore", "model_name_underscore.yaml",
                [INVALID, "  {cfg}:{line}: model.name: " + K8S_NAME + " (got \"contracts_test\")"], at="name:"),
    config_case("model_name_trailing_dash", "model_name_trailing_dash.yaml",
                [INVALID, "  {cfg}:{line}: model.name: " + K8S_NAME + " (got \"contracts-test-\")"], at="name:"),
    config_case("model_name_too_long", "model_name_too_long.yaml",
                [INVALID, "  {cfg}:{line}: model.name: " + K8S_NAME + " (got \"contracts-contracts-"], at="name:"),
    config_case("storage_root_bad_bucket", "storage_root_bad_bucket.yaml",
                [INVALID, "  {cfg}:{line}: storage.root: expected s3://BUCKET/PREFIX, file:///PATH or a local path "
                 "(bucket name 'Bad_Bucket' is invalid"], at="root:"),
    config_case("qlora_on_a_quantized_model", "qlora_quantized_model.yaml",
                ["train.method qlora: model.base ", "gptq-model is already quantized with gptq (quantization_config in "
                 "its config.json), so bitsandbytes cannot quantize it to 4 bits; expected an unquantized"],
                door="train", heavy=True),
    config_case("fp16_full_fine_tune", "dtype_fp16_full.yaml",
                [INVALID, "  {cfg}:{line}: <top level>: expected model.dtype: float16 with train.method full: the AMP "
                 "grad scaler cannot unscale fp16 weights' gradients; expected bfloat16 or float32"], at="model:"),
    config_case("report_to_mlflow", "report_to_mlflow.yaml",
                [INVALID, "  {cfg}:{line}: <top level>: expected train.report_to: 'mlflow' is done by the tracking "
                 "section (tracking.mlflow_uri)"], at="model:"),
    config_case("invalid_yaml", "invalid_yaml.yaml",
                ["{cfg}:{line}: invalid YAML: found character '\\t' that cannot start any token"], at="method:"),
    config_case("not_a_mapping", "not_a_mapping.yaml",
                ["{cfg}: expected a mapping of sections (model, data, storage, ...), got list"]),
    config_case("empty_config", "empty_config.yaml",
                ["{cfg}: expected a mapping of sections (model, data, storage, ...), got NoneType"], door="prepare"),
]


def _cli_config_case(case_id: str, make: Callable[[Ctx], tuple[list[str], list[str]]]) -> Case:
    def build(ctx: Ctx) -> Run:
        argv, expect = make(ctx)
        return Run(argv, expect, output=ctx.out(case_id))

    return Case(case_id, "config", (), build)


CONFIG_CASES += [
    _cli_config_case("missing_config_file", lambda ctx: (
        ["prepare", "--config", str(ctx.tmp / "nope.yaml"), "--output", str(ctx.out("missing_config_file"))],
        [f"config file not found: {ctx.tmp / 'nope.yaml'}"])),
    _cli_config_case("set_without_value", lambda ctx: (
        ["prepare", "--config", str(ctx.good_config), "--set", "prepare.seed", "--output",
         str(ctx.out("set_without_value"))],
        ["--set prepare.seed: expected KEY=VALUE with a dotted config path, e.g. train.max_steps=50"])),
    _cli_config_case("set_unknown_key", lambda ctx: (
        ["train", "--config", str(ctx.good_config), "--set", "train.lora.rank=8", "--dataset", str(ctx.dataset),
         "--output", str(ctx.out("set_unknown_key"))],
        [f"  {ctx.good_config}:{line_of(ctx.good_config, 'train:')}: train.lora.rank: " + UNKNOWN])),
    _cli_config_case("set_negative_number", lambda ctx: (
        ["prepare", "--config", str(ctx.good_config), "--set", "prepare.max_records=-5", "--output",
         str(ctx.out("set_negative_number"))],
        [f"  {ctx.good_config}:{line_of(ctx.good_config, 'prepare:')}: prepare.max_records: expected greater "
         "than 0 (got -5)"])),
    _cli_config_case("input_count_mismatch", lambda ctx: (
        ["prepare", "--config", str(ctx.good_config), "--input", str(ctx.gen["good"]), "--input",
         str(ctx.gen["good"]), "--output", str(ctx.out("input_count_mismatch"))],
        [f"--input given 2 time(s) but {ctx.good_config} has 1 data source(s); give one --input per source"])),
]


# -- URIs: S3 (a real SeaweedFS with restricted identities) and the Hugging Face Hub --------------------
def uri_case(case_id: str, make: Callable[[Ctx], Run], waits: bool = False) -> Case:
    return Case(case_id, "uri", (), make, waits=waits)


def _obj(name: str = "data/good.jsonl") -> str:
    return f"s3://{BUCKET}/{name}"


def _s3_prepare(ctx: Ctx, case_id: str, input_uri: str, expect: list[str], identity: str = "admin",
                output: str | None = None, env: dict | None = None, max_seconds: float | None = None) -> Run:
    """`kubetune prepare --input URI` with the AWS environment of one of restricted_s3's identities."""
    argv, out = prepare(ctx, case_id, input_uri, output=output)
    return Run(argv, expect, env={**ctx.s3.env(identity), **(env or {})}, output=out, max_seconds=max_seconds)


URI_CASES = [
    uri_case("cp_malformed_bucket", lambda ctx: Run(
        ["s3", "cp", str(ctx.gen["good"]), "s3://Bad_Bucket/data/good.jsonl"],
        ["kubetune s3: error: 's3://Bad_Bucket/data/good.jsonl': bucket name 'Bad_Bucket' is invalid (expected "
         "3-63 lowercase letters, digits, dots or hyphens, as in s3://BUCKET/KEY)"], env=ctx.s3.env())),
    uri_case("cp_single_slash", lambda ctx: Run(
        ["s3", "cp", str(ctx.gen["good"]), f"s3:/{BUCKET}/k"],
        [f"'s3:/{BUCKET}/k': expected an s3://BUCKET/KEY URI"], env=ctx.s3.env())),
    uri_case("input_single_slash", lambda ctx: _s3_prepare(
        ctx, "input_single_slash", f"s3:/{BUCKET}/data/good.jsonl",
        expect=[f"'s3:/{BUCKET}/data/good.jsonl': a malformed s3:// URI (expected s3://BUCKET/KEY, "
                "with a lowercase scheme and two slashes)"])),
    uri_case("input_uppercase_scheme", lambda ctx: _s3_prepare(
        ctx, "input_uppercase_scheme", f"S3://{BUCKET}/data/good.jsonl",
        expect=[f"'S3://{BUCKET}/data/good.jsonl': a malformed s3:// URI"])),
    uri_case("output_malformed_bucket", lambda ctx: _s3_prepare(
        ctx, "output_malformed_bucket", _obj(), output="s3://Bad_Bucket/runs/r1/prepare",
        expect=["'s3://Bad_Bucket/runs/r1/prepare/_manifest.json': bucket name 'Bad_Bucket' is invalid (expected "
                "3-63 lowercase letters"])),
    uri_case("file_uri_with_host", lambda ctx: _s3_prepare(
        ctx, "file_uri_with_host", f"file://somehost{ctx.gen['good']}",
        expect=[f"'file://somehost{ctx.gen['good']}': expected file:///ABSOLUTE/PATH (a local file URI, no host)"])),
    uri_case("input_bucket_missing", lambda ctx: _s3_prepare(
        ctx, "input_bucket_missing", "s3://kt-no-such-bucket/data/good.jsonl",
        expect=["s3://kt-no-such-bucket/data/good.jsonl: bucket 'kt-no-such-bucket' does not exist on "
                f"{ctx.s3.server.endpoint}"])),
    uri_case("input_object_missing", lambda ctx: _s3_prepare(
        ctx, "input_object_missing", _obj("data/nope.jsonl"),
        expect=[f"{_obj('data/nope.jsonl')}: no object with key 'data/nope.jsonl' in bucket '{BUCKET}'"])),
    uri_case("cp_bucket_missing", lambda ctx: Run(
        ["s3", "cp", str(ctx.gen["good"]), "s3://kt-no-such-bucket/good.jsonl"],
        [f"s3://kt-no-such-bucket/good.jsonl: bucket 'kt-no-such-bucket' does not exist on {ctx.s3.server.endpoint}"],
        env=ctx.s3.env())),
    uri_case("input_denied", lambda ctx: _s3_prepare(
        ctx, "input_denied", _obj(), identity="nobody",
        expect=[f"{_obj()}: access denied by {ctx.s3.server.endpoint} while", "check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY and the bucket's permissions"])),
    uri_case("cp_upload_denied", lambda ctx: Run(
        ["s3", "cp", str(ctx.gen["good"]), _obj("uploads/good.jsonl")],
        [f"{_obj('uploads/good.jsonl')}: access denied by {ctx.s3.server.endpoint} while"],
        env=ctx.s3.env("nobody"), output=_obj("uploads/"))),
    # the reader may read the data but not write the output: the step runs, the publish is refused, and
    # nothing (not a file, not a manifest) is left under the output prefix
    uri_case("output_write_denied", lambda ctx: _s3_prepare(
        ctx, "output_write_denied", _obj(), identity="reader", output=_obj("runs/r1/prepare"),
        expect=[f"{_obj('runs/r1/prepare')}/", f"access denied by {ctx.s3.server.endpoint} while uploading"])),
    uri_case("wrong_secret", lambda ctx: _s3_prepare(
        ctx, "wrong_secret", _obj(), env={"AWS_SECRET_ACCESS_KEY": "not-the-secret"},
        expect=[f"{_obj()}: access denied by {ctx.s3.server.endpoint} while reading object metadata (403: "
                "Forbidden); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"])),
    uri_case("endpoint_refused", lambda ctx: _s3_prepare(
        ctx, "endpoint_refused", _obj(), env={"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{ctx.closed}"},
        expect=[f"S3 endpoint http://127.0.0.1:{ctx.closed} is unreachable while", "check AWS_ENDPOINT_URL_S3 and "
                "that the server is running"], max_seconds=BOUNDED_S), waits=True),
    uri_case("endpoint_blackhole", lambda ctx: Run(
        ["s3", "cp", str(ctx.gen["good"]), _obj("uploads/good.jsonl")],
        [f"S3 endpoint http://127.0.0.1:{ctx.blackhole.port} is unreachable while checking the bucket",
         "Connect timeout on endpoint URL"],
        env={**ctx.s3.env(), "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{ctx.blackhole.port}"},
        max_seconds=BOUNDED_S), waits=True),
    uri_case("endpoint_not_a_url", lambda ctx: _s3_prepare(
        ctx, "endpoint_not_a_url", _obj(), env={"AWS_ENDPOINT_URL_S3": "not a url"},
        expect=["AWS_ENDPOINT_URL_S3='not a url': invalid S3 endpoint URL", "expected e.g. http://127.0.0.1:8333"])),
    uri_case("hf_dataset_offline", lambda ctx: _s3_prepare(
        ctx, "hf_dataset_offline", "hf://datasets/acme/contracts/train.jsonl",
        expect=["hf://datasets/acme/contracts/train.jsonl: not in the local Hugging Face cache (",
                "HF_HUB_OFFLINE is set; expected it downloaded beforehand"])),
    uri_case("hf_model_offline", lambda ctx: Run(
        prepare(ctx, "hf_model_offline", ctx.gen["good"], "model.base=hf://acme/tiny-llama")[0],
        ["hf://acme/tiny-llama: not in the local Hugging Face cache (", "HF_HUB_OFFLINE is set"],
        output=ctx.out("hf_model_offline"))),
    # no HF_HUB_OFFLINE, and no network: the Hub endpoint refuses connections
    uri_case("hf_no_network", lambda ctx: _s3_prepare(
        ctx, "hf_no_network", "hf://datasets/acme/contracts/train.jsonl",
        env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{ctx.closed}"},
        expect=[f"hf://datasets/acme/contracts/train.jsonl: could not download from http://127.0.0.1:{ctx.closed} "
                "and it is not in the local Hugging Face cache"], max_seconds=BOUNDED_S), waits=True),
]

CASES = DATASET_CASES + CONFIG_CASES + URI_CASES


# ---- running them --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ctx(tmp_path_factory, bad_tokenizer_dir, restricted_s3) -> Ctx:
    tmp = tmp_path_factory.mktemp("bad-inputs")
    gen = generate_inputs(tmp / "generated")
    dataset = tmp / "prepared"
    dataset.mkdir()
    (dataset / "train.jsonl").write_text("".join(json.dumps(_chat(i, "train")) + "\n" for i in range(4)))
    assert restricted_s3.bucket == BUCKET
    client = restricted_s3.server.client()
    client.put_object(Bucket=BUCKET, Key="data/good.jsonl", Body=gen["good"].read_bytes())
    c = Ctx(tmp=tmp, tokenizer=bad_tokenizer_dir, gen=gen, s3=restricted_s3, blackhole=Blackhole(),
            closed=closed_port(), dataset=dataset)
    render_configs(c)
    yield c
    c.blackhole.close()


def _selected_ids(session) -> set[str]:
    ids = set()
    for item in session.items:
        if item.path == Path(__file__) and hasattr(item, "callspec") and "case" in item.callspec.params:
            ids.add(item.callspec.params["case"].id)
    return ids


@pytest.fixture(scope="module")
def results(request, ctx, kubetune_cli) -> dict[str, tuple[Run, CliResult]]:
    """Every selected case's CLI run: one process per case, or per group of cases (all config files in one
    `kubetune config validate`, the accepted inputs in one `kubetune prepare`)."""
    selected = _selected_ids(request.session)
    todo = sorted((c for c in CASES if c.id in selected), key=lambda c: not c.heavy)  # heavy ones first
    runs = {c.id: c.build(ctx) for c in todo}
    jobs: dict[str, list[str]] = {}  # one process each: argv key -> the cases it answers
    argvs: dict[str, tuple[list[str], dict, bool]] = {}
    for c in todo:
        run = runs[c.id]
        key = run.group or c.id
        jobs.setdefault(key, []).append(c.id)
        argvs.setdefault(key, (run.argv, run.env, c.waits))
    if "validate" in jobs:  # every config file, then the valid one: each is reported on its own
        files = [runs[i].argv[2] for i in jobs["validate"]]
        argvs["validate"] = (["config", "validate", *files, str(ctx.good_config)], {}, False)
    started = time.monotonic()
    waiting = [k for k, (_, _, waits) in argvs.items() if waits]
    with ThreadPoolExecutor(max_workers=WORKERS) as cpu, ThreadPoolExecutor(max_workers=len(waiting) or 1) as idle:
        futures = {k: (idle if k in waiting else cpu).submit(kubetune_cli, argv, env=env)
                   for k, (argv, env, _) in argvs.items()}
        done = {k: f.result() for k, f in futures.items()}
    out = {case_id: (runs[case_id], done[key]) for key, ids in jobs.items() for case_id in ids}
    slowest = sorted(done.items(), key=lambda kv: -kv[1].seconds)[:5]
    print(f"\n[bad inputs] {len(out)} cases in {len(done)} CLI runs ({WORKERS} at a time, and {len(waiting)} "
          f"waiting on timeouts beside them): {time.monotonic() - started:.1f} s; slowest: "
          + ", ".join(f"{k} {r.seconds:.1f} s" for k, r in slowest))
    return out


def config_report(stderr: str, config: str) -> str:
    """The error `kubetune config validate` printed for one of several files (its lines up to the next one)."""
    blocks = ["kubetune config: error: " + b for b in stderr.split("kubetune config: error: ")[1:]]
    found = [b for b in blocks if b.splitlines()[0].startswith((f"kubetune config: error: {config}:",
                                                                 f"kubetune config: error: invalid config {config}:"))]
    assert len(found) == 1, f"expected one error for {config} in:\n{stderr}"
    return found[0]


def _published_under(ctx: Ctx, output) -> list[str]:
    """Every manifest (or, on S3, every object) left at the output location, and any release."""
    left = []
    if isinstance(output, str) and output.startswith("s3://"):
        bucket, _, prefix = output[5:].partition("/")
        if bucket == BUCKET:
            left += [f"s3://{bucket}/{k}" for k in ctx.s3.keys_under(bucket, prefix)]
    elif output is not None and Path(output).exists():
        left += [str(p) for p in Path(output).rglob("_manifest.json")] or [f"{output} (a directory was left)"]
    if ctx.root.exists():
        left += [str(p) for p in ctx.root.rglob("releases")]
    return left


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, results, ctx):
    run, r = results[case.id]
    assert "Traceback (most recent call last)" not in r.stderr, r
    if run.max_seconds is not None:
        assert r.seconds < run.max_seconds, r
    if run.rc == 0:
        assert r.rc == 0, r
        for text in run.expect:
            assert text in r.stdout, r
        assert (Path(run.output) / "_manifest.json").is_file(), r
    else:
        assert r.rc == run.rc, r
        command = r.argv[0]
        assert f"kubetune {command}: error: " in r.stderr, r
        stderr = r.stderr
        if run.group == "validate":
            stderr = config_report(r.stderr, run.argv[2])
            assert f"{run.argv[2]}: valid" not in r.stdout, r
            assert f"{ctx.good_config}: valid (model contracts-test" in r.stdout, r  # the verdicts are per file
        for text in run.expect:
            assert text in stderr, f"expected {text!r} in stderr\n{r}"
        assert _published_under(ctx, run.output) == [], r
    if run.check:
        run.check(r)


def test_every_corpus_file_is_tried():
    """Each file in tests/data/bad/ belongs to a case (so the corpus and the cases cannot drift apart),
    and the corpus with the generated inputs holds at least the 40 inputs issue 18 asks for."""
    files = {p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*") if p.is_file()}
    used = {f for c in CASES for f in c.files} | {"configs/_valid.yaml"}
    assert files - used == set(), f"corpus files no case uses: {sorted(files - used)}"
    assert used - files == set(), f"cases naming missing corpus files: {sorted(used - files)}"
    failing = [c for c in CASES if c.kind != "accepted"]
    assert len(failing) >= 40 and len(files) >= 40


def test_the_valid_config_is_valid(ctx, kubetune_cli):
    """The config every bad one departs from passes: each config case fails for its own change."""
    r = kubetune_cli(["config", "validate", str(ctx.good_config)])
    assert r.rc == 0 and "valid (model contracts-test, method lora, 1 data source(s))" in r.stdout, r
