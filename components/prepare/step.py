"""The prepare step: data sources in, a clean, mixed, split, rendered dataset out.

    read + validate + render  ->  exact dedup  ->  near dedup  ->  token-length filter
        ->  mix by weight  ->  train/test split  ->  decontaminate test  ->  write

`run` works on local files only; fetching inputs and publishing outputs (S3, manifests) is the
caller's job (the CLI, the KFP component). Output files in `output_dir`:

* train.jsonl / test.jsonl (or .parquet): one record per line, see `to_row` for the schema;
* stats.json: counts at every stage overall and per source, drop reasons with examples, percentiles;
* token_lengths.png and report.md: the same for people.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from components.common.config import DataSource, KubetuneConfig
from components.common.tokenizer import chat_template_override, load_tokenizer
from components.prepare import dedup, mix, report
from components.prepare.problems import PrepareError, ProblemLog, Tally, snippet
from components.prepare.readers import InputFile, expand, read_records, sniff
from components.prepare.render import Renderer
from components.prepare.validate import FORMAT_KEYS, Example, Invalid, detect_format, to_example

log = logging.getLogger("kubetune.prepare")

SourceInput = str | Path | InputFile | Sequence[str | Path | InputFile]


@dataclass
class PrepareResult:
    output_dir: Path
    train_path: Path
    test_path: Path
    stats_path: Path
    report_path: Path
    plot_path: Path
    num_train: int
    num_test: int
    stats: dict[str, Any]
    seconds: float


def source_name(source: DataSource) -> str:
    """The tag kept on every record: data.sources[].name, else the file (or prefix) stem."""
    if source.name:
        return source.name
    last = source.uri.rstrip("/").rsplit("/", 1)[-1].split("@")[0]
    for suffix in (".parquet", ".jsonl", ".ndjson", ".json"):
        last = last.removesuffix(suffix)
    return last or "data"


def run(cfg: KubetuneConfig, inputs: Sequence[SourceInput] | None, output_dir: str | Path, tokenizer: Any,
        *, chat_template: str | None = None) -> PrepareResult:
    """Prepare the dataset described by cfg into output_dir.

    inputs: one entry per cfg.data.sources, in order: a local file, a local directory (every data file
    under it), or a list of files; InputFile(path, uri) keeps the original URI for messages. None reads
    the sources' URIs as local paths. tokenizer: a loaded tokenizer or a local directory holding one
    (loaded with model.trust_remote_code). chat_template: template text overriding the tokenizer's;
    default: model.chat_template's (local, file://, s3:// or hf://), else the tokenizer's own.
    Raises PrepareError (a KubetuneError) for bad input the policy does not allow to skip.
    """
    started = time.monotonic()
    p = cfg.prepare
    sources = cfg.data.sources
    names = [source_name(s) for s in sources]
    duplicates = sorted(n for n, c in Counter(names).items() if c > 1)
    if duplicates:
        raise PrepareError(f"data.sources: several sources are named {duplicates[0]!r}; give each a "
                           f"distinct name (data.sources[].name)")
    if inputs is None:
        inputs = [s.uri.removeprefix("file://") for s in sources]
    if len(inputs) != len(sources):
        raise PrepareError(f"{len(inputs)} input(s) given for {len(sources)} data source(s); give one per "
                           f"source, in the order of data.sources")
    tally = Tally()
    problems = ProblemLog(p.policy, tally)

    # 1. read and validate every source. Nothing here needs the tokenizer, so bad input fails before
    # it is loaded (seconds of imports), and a bad record deep in a big file before any rendering.
    files_info: dict[str, list[dict]] = {}
    validated: list[tuple[Example, str]] = []
    for source, name, given in zip(sources, names, inputs, strict=True):
        files_info[name] = []
        for f in _input_files(given):
            examples, info = _load_file(f, source.format, name, problems)
            files_info[name].append(info)
            validated += examples

    # 2. render the conversations with the base model's chat template
    if chat_template is None:
        chat_template = chat_template_override(cfg, error=PrepareError)
    if isinstance(tokenizer, str | Path):
        tokenizer = load_tokenizer(cfg, Path(tokenizer), error=PrepareError, chat_template=chat_template)
    renderer = Renderer(tokenizer, p.max_seq_len, p.length_policy, chat_template=chat_template,
                        tokenizer_name=f"the tokenizer of {cfg.model.base}")
    loaded: list[Example] = []
    for ex, text in tqdm(validated, desc="render", unit="rec", disable=None, leave=False):
        try:
            renderer.render(ex)
        except Invalid as e:
            problems.report(e.kind, ex.source, ex.where, e.message, field_name=e.field, text=text)
            continue
        loaded.append(ex)
    del validated
    stages: dict[str, Counter] = {}
    read = Counter({name: sum(i["records"] for i in files_info[name]) for name in names})
    for kind in ("malformed_json", "invalid_utf8"):
        read.update({name: tally.count(kind, name) for name in names})
    stages["read"] = read
    stages["valid"] = _by_source(loaded)

    # 3. dedup, then the length filter (cheaper on fewer records)
    dedup.assign_keys(loaded)
    kept = dedup.exact_dedup(loaded, tally)
    stages["unique"] = _by_source(kept)
    kept = dedup.near_dedup(kept, p.near_dup_threshold, p.minhash_num_perm, tally)
    stages["near_unique"] = _by_source(kept)
    renderer.measure(kept)
    kept = renderer.length_filter(kept, tally)
    stages["within_length"] = _by_source(kept)

    # 4. mix, split, decontaminate
    grouped: dict[str, list[Example]] = {name: [] for name in names}
    for ex in kept:
        grouped[ex.source].append(ex)
    weights = {name: s.weight for name, s in zip(names, sources, strict=True)}
    mixed, _ = mix.mix(grouped, weights, p.max_records, p.seed, tally)
    stages["mixed"] = Counter({name: len(exs) for name, exs in mixed.items()})
    train, test = mix.split(mixed, p.test_ratio, p.seed)
    stages["train"] = _by_source(train)
    stages["test_split"] = _by_source(test)
    if p.decontaminate:
        test = dedup.decontaminate(train, test, p.near_dup_threshold, p.minhash_num_perm, tally)
    stages["test"] = _by_source(test)
    train, test = mix.shuffle(train, p.seed), mix.shuffle(test, p.seed)
    warnings = [f"source '{name}' contributes no records: its weight share times the most constrained "
                f"source's size rounds to 0" for name in names if stages["mixed"][name] == 0]
    if not test:
        warnings.append("the test split is empty: too few records for prepare.test_ratio, or all of them "
                        "were dropped by decontamination")
    for warning in warnings:
        log.warning("prepare: %s", warning)

    # 5. write
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    suffix = p.output_format
    train_path, test_path = out / f"train.{suffix}", out / f"test.{suffix}"
    _write(train, train_path, suffix)
    _write(test, test_path, suffix)
    plot_path = report.plot([ex.num_tokens for ex in train], [ex.num_tokens for ex in test],
                            p.max_seq_len, out / report.PLOT_NAME)
    stats = _stats(cfg, names, weights, files_info, stages, tally, train, test, train_path, test_path)
    stats["warnings"] = warnings
    stats_path = out / "stats.json"
    stats_path.write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    report_path = out / "report.md"
    report_path.write_text(report.markdown(stats), encoding="utf-8")
    seconds = time.monotonic() - started
    log.info("prepare: %s", ", ".join(f"{k} {sum(stages[k].values())}" for k, _ in report.STAGES))
    log.info("prepare: wrote %d train and %d test records to %s in %.1f s", len(train), len(test), out,
             seconds)
    return PrepareResult(out, train_path, test_path, stats_path, report_path, plot_path, len(train),
                         len(test), stats, seconds)


def _input_files(given: SourceInput) -> list[InputFile]:
    if isinstance(given, InputFile):
        return [given]
    if isinstance(given, str | Path):
        return expand(Path(given))
    files: list[InputFile] = []
    for item in given:
        files += [item] if isinstance(item, InputFile) else expand(Path(item))
    return files


def _load_file(f: InputFile, fmt: str, source: str, problems: ProblemLog) -> tuple[list[tuple[Example, str]], dict]:
    """The valid records of one file (not rendered yet), each with a snippet of its text for reports."""
    container = sniff(f)
    if fmt == "auto":
        fmt = _detect(f, container, problems.policy)
    examples, records = [], 0
    unreadable = ("malformed_json", "invalid_utf8")
    skipped_before = sum(problems.tally.count(k, source) for k in unreadable)
    for raw in tqdm(read_records(f, container, problems, source), desc=f.uri[-40:], unit="rec",
                    disable=None, leave=False):
        records += 1
        try:
            ex = to_example(raw.value, fmt, source, raw.where)
        except Invalid as e:
            problems.report(e.kind, source, raw.where, e.message, field_name=e.field, text=raw.text)
            continue
        examples.append((ex, snippet(raw.text)))
    if records == 0 and sum(problems.tally.count(k, source) for k in unreadable) == skipped_before:
        raise PrepareError(f"{f.uri}: empty file (no records)")
    return examples, {"uri": f.uri, "container": container, "format": fmt, "records": records}


def _detect(f: InputFile, container: str, policy) -> str:
    """The format of the first record whose keys name one. Problems are reported by the real pass."""
    quiet = ProblemLog(policy.model_copy(update={k: "skip" for k in type(policy).model_fields}), Tally())
    first_keys = None
    for raw in read_records(f, container, quiet, ""):
        fmt = detect_format(raw.value)
        if fmt:
            return fmt
        if first_keys is None:
            first_keys = sorted(raw.value) if isinstance(raw.value, dict) else type(raw.value).__name__
    if first_keys is None:
        raise PrepareError(f"{f.uri}: no readable record to detect the format from")
    raise PrepareError(f"{f.uri}: cannot detect the data format: no record has the keys of a known format "
                       f"(first record: {first_keys}); expected {FORMAT_KEYS}, or set data.sources[].format")


def _by_source(examples: list[Example]) -> Counter:
    return Counter(ex.source for ex in examples)


def to_row(ex: Example) -> dict[str, Any]:
    """One output record. Every record has every key (null where it does not apply), so JSONL and
    Parquet share one schema."""
    return {
        "id": ex.key[:16],
        "source": ex.source,
        "format": ex.format,
        "messages": ex.messages,
        "prompt": ex.prompt,
        "completion": ex.completion,
        "text": ex.text,
        "num_tokens": ex.num_tokens,
        "prompt_tokens": ex.prompt_tokens,
        "completion_tokens": ex.num_tokens - ex.prompt_tokens,
        "truncated": ex.truncated,
    }


def _write(examples: list[Example], path: Path, fmt: str) -> None:
    rows = [to_row(ex) for ex in examples]
    if fmt == "jsonl":
        with path.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    schema = pa.schema([("id", pa.string()), ("source", pa.string()), ("format", pa.string()),
                        ("messages", pa.list_(message)), ("prompt", pa.string()), ("completion", pa.string()),
                        ("text", pa.string()), ("num_tokens", pa.int32()), ("prompt_tokens", pa.int32()),
                        ("completion_tokens", pa.int32()), ("truncated", pa.bool_())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def _stats(cfg: KubetuneConfig, names: list[str], weights: dict[str, float], files_info: dict,
           stages: dict[str, Counter], tally: Tally, train: list[Example], test: list[Example],
           train_path: Path, test_path: Path) -> dict[str, Any]:
    p = cfg.prepare
    total_weight = sum(weights.values())
    total_mixed = sum(stages["mixed"].values())
    sources = {}
    for name in names:
        sources[name] = {
            "weight": weights[name],
            "target_fraction": round(weights[name] / total_weight, 6),
            "mixed_fraction": round(stages["mixed"][name] / total_mixed, 6) if total_mixed else 0.0,
            "files": files_info[name],
            "stages": {key: stages[key][name] for key, _ in report.STAGES},
        }
    return {
        "settings": {"max_seq_len": p.max_seq_len, "length_policy": p.length_policy,
                     "test_ratio": p.test_ratio, "seed": p.seed, "near_dup_threshold": p.near_dup_threshold,
                     "minhash_num_perm": p.minhash_num_perm, "decontaminate": p.decontaminate,
                     "max_records": p.max_records, "output_format": p.output_format,
                     "shingle_words": dedup.SHINGLE_WORDS},
        "stages": {key: sum(stages[key].values()) for key, _ in report.STAGES},
        "sources": sources,
        "drops": tally.as_dict(),
        "token_lengths": {"train": report.percentiles([ex.num_tokens for ex in train]),
                          "test": report.percentiles([ex.num_tokens for ex in test])},
        "files": {"train": train_path.name, "test": test_path.name, "stats": "stats.json",
                  "report": "report.md", "plot": report.PLOT_NAME},
    }
