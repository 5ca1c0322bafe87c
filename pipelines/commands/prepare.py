"""`kubetune prepare --config CFG [--input URI ...] --output DIR|URI`

Fetches the data sources (config's data.sources, or one --input per source, in order) and the base
model's tokenizer (model.base; `--set model.base=DIR` for another), runs the prepare step and
publishes its files with `_manifest.json` written last, through the same lifecycle as the pipeline's
component (pipelines/commands/step_cli.py). A failed run leaves no output (and no manifest).
"""

from __future__ import annotations

import json

from pipelines.commands import step_cli


def add_arguments(parser):
    parser.add_argument("--input", action="append", metavar="URI",
                        help="a data source (file, s3:// object or prefix, hf://datasets/..., file://); "
                             "give one per data.sources entry, in order (names and weights come from "
                             "the config). Default: the config's URIs")
    step_cli.add_common_arguments(parser, progress=False, set_example="prepare.seed=3",
                                  output_help="where to publish train/test, stats.json, report.md "
                                              "(+ _manifest.json)")


def run(args) -> int:
    from components.common import storage
    from components.prepare.problems import PrepareError
    from components.prepare.report import console_summary

    cfg = step_cli.load(args)
    sources = cfg.data.sources
    if args.input:
        if len(args.input) != len(sources):
            raise PrepareError(f"--input given {len(args.input)} time(s) but {args.config} has "
                               f"{len(sources)} data source(s); give one --input per source, in order, "
                               f"or none")
        cfg = cfg.model_copy(deep=True)
        for source, uri in zip(cfg.data.sources, args.input, strict=True):
            source.uri = uri

    stats = {}

    def read_stats(published, local):
        stats.update(json.loads((local / "stats.json").read_text()))

    published = step_cli.run_step_command("prepare", cfg, {}, args, on_output=read_stats)
    stages, m = stats["stages"], published.outcome.metrics
    print(f"prepare: {stages['read']} records read, {stages['valid']} valid, {stages['mixed']} after "
          f"dedup/length/mixing -> {m['records_train']} train + {m['records_test']} test "
          f"in {published.outcome.seconds:.1f} s")
    for line in console_summary(stats):
        print(f"prepare: {line}")
    print(f"prepare: published to {published.manifest.uri} "
          f"(report: {storage.join_uri(args.output.rstrip('/'), 'report.md')})")
    return 0
