"""`kubetune train --config CFG --dataset DIR|URI --output DIR|URI [--run-id ID]`

Fetches the prepared dataset (a published directory, verified, or a local one), trains and publishes
the outputs with `_manifest.json` written last, through the same lifecycle as the pipeline's
component (pipelines/commands/step_cli.py). Checkpoints go to `<output>/checkpoints/checkpoint-<step>/`
as they are saved; a rerun with the same output resumes from the newest complete one.

Exit codes: 0 trained and published (or already published with the same config and data),
2 bad input or a failure with a clear message, 75 stopped by SIGTERM after uploading a checkpoint
(retry to resume).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipelines.commands import step_cli


def add_arguments(parser):
    parser.add_argument("--dataset", required=True, metavar="DIR|URI",
                        help="the prepare step's output: a local directory, or a published s3:// or "
                             "file:// one")
    parser.add_argument("--run-id", metavar="ID", help="run id for lineage and live metrics (default: "
                        "$KUBETUNE_RUN_ID, the <id> of .../runs/<id>/... in --output, else derived from it)")
    parser.add_argument("--work-dir", metavar="DIR", help="local scratch for the trainer's checkpoints "
                        "(default: a temporary directory, removed afterwards)")
    step_cli.add_common_arguments(parser, overwrite=False,
                                  output_help="where to publish the adapter (or weights), tokenizer, metrics, "
                                              "log and loss curve; checkpoints go under <output>/checkpoints/")


def run(args) -> int:
    cfg = step_cli.load(args)  # before the torch imports below: a bad config fails in a second, not ten

    from components.train import checkpoints

    work_dir = Path(args.work_dir).expanduser() if args.work_dir else None
    metrics = {}

    def read_metrics(published, local):
        metrics.update(json.loads((local / "train_metrics.json").read_text()))

    try:
        published = step_cli.run_step_command("train", cfg, {"dataset": args.dataset}, args, run_id=args.run_id,
                                              work_dir=work_dir, on_output=read_metrics)
    except checkpoints.Preempted as e:
        print(f"kubetune train: {e}", file=sys.stderr)
        return checkpoints.EXIT_PREEMPTED
    output = published.manifest.uri
    if published.reused:
        print(f"kubetune train: {output} is already published for this config and dataset; nothing to do")
        return 0
    m = metrics
    resumed = m.get("resumed_from_step")
    print(f"kubetune train: {cfg.train.method} ({m.get('mode')}) {m.get('global_step')} steps"
          + (f", resumed from step {resumed}" if resumed is not None else "")
          + f"; eval loss {_f(m.get('initial_eval_loss'))} -> {_f(m.get('final_eval_loss'))}; "
          f"{_f(m.get('tokens_per_second'), 0)} tokens/s; peak memory "
          f"{(m.get('peak_memory_bytes') or 0) / 2**20:.0f} MiB; published to {output}")
    return 0


def _f(x, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"
