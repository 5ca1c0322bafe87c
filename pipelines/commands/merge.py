"""`kubetune merge --config CFG [--base MODEL] --adapter DIR|URI --output DIR|URI`

Merges the train step's adapter into the base model (model.base, or --base) with the logits check,
through the same lifecycle as the pipeline's component (pipelines/commands/step_cli.py), and publishes
the merged model (sharded safetensors, tokenizer, chat template, generation config,
merge_report.json) with `_manifest.json` written last. A failed check publishes nothing.
"""

from __future__ import annotations

import json

from pipelines.commands import step_cli


def add_arguments(parser):
    parser.add_argument("--base", metavar="MODEL", help="base model: path, file://, s3:// or hf://ORG/NAME "
                                                        "(default: model.base)")
    parser.add_argument("--adapter", required=True, metavar="DIR|URI", help="the train step's output")
    step_cli.add_common_arguments(parser, progress=False, output_help="where to publish the merged model",
                                  set_example="merge.dtype=float32")


def run(args) -> int:
    cfg = step_cli.load(args, **{"model.base": args.base})
    report = {}

    def read_report(published, local):
        report.update(json.loads((local / "merge_report.json").read_text()))

    published = step_cli.run_step_command("merge", cfg, {"adapter": args.adapter}, args, on_output=read_report)
    output, r = published.manifest.uri, report
    if r["mode"] == "copy_through":
        print(f"merge: nothing to merge ({r['reason']}); copied {len(r['files'])} file(s) to {output}")
    else:
        v = r["verify"]
        print(f"merge: {args.adapter} merged into {cfg.model.base} in {r['dtype']}: {len(r['shards'])} shard(s), "
              f"{r['total_bytes'] / 1e6:.1f} MB; logits max |diff| {v['max_abs_diff']:.3g} <= tolerance "
              f"{v['tolerance']:.3g} over {v['tokens']} tokens; published to {output}")
    return 0
