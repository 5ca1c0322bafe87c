"""`kubetune merge --config CFG [--base MODEL] --adapter DIR|URI --output DIR|URI`

Fetches the base model (default: model.base) and the train step's adapter (verified against their
manifests), merges them into a local staging directory with the logits check, and publishes the merged
model (sharded safetensors, tokenizer, chat template, generation config, merge_report.json) with
`_manifest.json` written last. A failed check publishes nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("kubetune.merge")


def add_arguments(parser):
    parser.add_argument("--config", required=True, metavar="FILE", help="kubetune config YAML")
    parser.add_argument("--base", metavar="MODEL", help="base model: path, file://, s3:// or hf://ORG/NAME "
                                                        "(default: model.base)")
    parser.add_argument("--adapter", required=True, metavar="DIR|URI", help="the train step's output")
    parser.add_argument("--output", required=True, metavar="DIR|URI", help="where to publish the merged model")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. merge.dtype=float32 (value parsed as YAML)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing published output")


def run(args) -> int:
    from components.common import storage
    from components.merge import step
    from pipelines.commands.eval import base_and_adapter, load

    cfg = load(args)
    output, base_uri, base_dir, adapter_dir = base_and_adapter(args, cfg)
    staging = Path(tempfile.mkdtemp(prefix="kubetune-merge-"))
    try:
        result = step.run(cfg, base_dir, adapter_dir, staging, base_uri=base_uri, adapter_uri=args.adapter)
        r = result.report
        lineage = {"base_model": base_uri, "adapter": args.adapter, "config_hash": cfg.content_hash(),
                   "mode": r["mode"]}
        if r["mode"] == "lora_merge":
            lineage.update(dtype=r["dtype"], max_abs_logit_diff=r["verify"]["max_abs_diff"])
        storage.publish_dir(staging, output, producer="merge", lineage=lineage, overwrite=args.overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if r["mode"] == "copy_through":
        print(f"merge: nothing to merge ({r['reason']}); copied {len(r['files'])} file(s) to {output}")
    else:
        v = r["verify"]
        print(f"merge: {args.adapter} merged into {base_uri} in {r['dtype']}: {len(r['shards'])} shard(s), "
              f"{r['total_bytes'] / 1e6:.1f} MB; logits max |diff| {v['max_abs_diff']:.3g} <= tolerance "
              f"{v['tolerance']:.3g} over {v['tokens']} tokens; published to {output}")
    log.debug("merge report: %s", json.dumps(r))
    return 0
