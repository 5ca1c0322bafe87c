"""`kubetune prepare --config CFG [--input URI ...] --output DIR|URI`

Fetches the data sources (config's data.sources, or one --input per source, in order) and the base
model's tokenizer, runs the prepare step into a local staging directory, and only when it succeeded
publishes the files with `_manifest.json` written last. A failed run leaves no output (and no manifest).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("kubetune.prepare")


def add_arguments(parser):
    parser.add_argument("--config", required=True, metavar="FILE", help="kubetune config YAML")
    parser.add_argument("--input", action="append", metavar="URI",
                        help="a data source (file, s3:// object or prefix, hf://datasets/..., file://); "
                             "give one per data.sources entry, in order (names and weights come from "
                             "the config). Default: the config's URIs")
    parser.add_argument("--output", required=True, metavar="DIR|URI",
                        help="where to publish train/test, stats.json, report.md (+ _manifest.json)")
    parser.add_argument("--tokenizer", metavar="DIR|URI",
                        help="model directory whose tokenizer and chat template to use (default: model.base)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. prepare.seed=3 (value parsed as YAML)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing published output")


def run(args) -> int:
    # Heavy imports (transformers via the step) happen here, so `kubetune --help` stays fast.
    from components.common import storage
    from components.common.config import load_config, parse_overrides
    from components.prepare.component import execute
    from components.prepare.problems import PrepareError

    overrides = parse_overrides(args.set)
    cfg = load_config(args.config, overrides)
    sources = cfg.data.sources
    if args.input:
        if len(args.input) != len(sources):
            raise PrepareError(f"--input given {len(args.input)} time(s) but {args.config} has "
                               f"{len(sources)} data source(s); give one --input per source, in order, "
                               f"or none")
        cfg = cfg.model_copy(deep=True)
        for source, uri in zip(cfg.data.sources, args.input, strict=True):
            source.uri = uri
    # Refuse early rather than after the whole run: publish_dir would refuse at the end anyway.
    if not args.overwrite and storage.read_manifest(args.output) is not None:
        raise storage.StorageError(f"{args.output}: already holds a published output; choose a new "
                                   f"--output or pass --overwrite")

    staging = Path(tempfile.mkdtemp(prefix="kubetune-prepare-"))
    try:
        outcome = execute(cfg, {}, staging, tokenizer_uri=args.tokenizer)
        storage.publish_dir(staging, args.output, producer="prepare", lineage=outcome.lineage,
                            overwrite=args.overwrite)
        stats = json.loads((staging / "stats.json").read_text())
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    stages, m = stats["stages"], outcome.metrics
    print(f"prepare: {stages['read']} records read, {stages['valid']} valid, {stages['mixed']} after "
          f"dedup/length/mixing -> {m['records_train']} train + {m['records_test']} test "
          f"in {outcome.seconds:.1f} s")
    print(f"prepare: published to {args.output} (report: {storage.join_uri(args.output, 'report.md')})")
    return 0
