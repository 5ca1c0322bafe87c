"""`kubetune train --config CFG --dataset DIR|URI --output DIR|URI [--run-id ID]`

Fetches the prepared dataset (a published directory, verified, or a local one), trains into a local
staging directory, and publishes the outputs with `_manifest.json` written last. Checkpoints go to
`<output>/checkpoints/checkpoint-<step>/` as they are saved; a rerun with the same output resumes
from the newest complete one.

Exit codes: 0 trained and published (or already published with the same config and data),
2 bad input or a failure with a clear message, 75 stopped by SIGTERM after uploading a checkpoint
(retry to resume).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("kubetune.train")


def add_arguments(parser):
    parser.add_argument("--config", required=True, metavar="FILE", help="kubetune config YAML")
    parser.add_argument("--dataset", required=True, metavar="DIR|URI",
                        help="the prepare step's output: a local directory, or a published s3:// or "
                             "file:// one")
    parser.add_argument("--output", required=True, metavar="DIR|URI",
                        help="where to publish the adapter (or weights), tokenizer, metrics, log and "
                             "loss curve; checkpoints go under <output>/checkpoints/")
    parser.add_argument("--run-id", metavar="ID", help="run id for lineage and live metrics (default: "
                        "$KUBETUNE_RUN_ID, the <id> of .../runs/<id>/... in --output, else derived from it)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. train.max_steps=50 (value parsed as YAML)")
    parser.add_argument("--work-dir", metavar="DIR", help="local scratch for checkpoints and staging "
                        "(default: a temporary directory, removed afterwards)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_id_for(output: str, given: str | None) -> str:
    if given:
        return given
    if os.environ.get("KUBETUNE_RUN_ID"):
        return os.environ["KUBETUNE_RUN_ID"]
    m = re.search(r"(?:^|/)runs/([^/]+)/", output.rstrip("/") + "/")
    if m:
        return m.group(1)
    return "local-" + hashlib.sha256(output.encode()).hexdigest()[:10]


def dataset_identity(uri: str, local: Path) -> str:
    """The dataset's manifest content hash, or a hash of its files when it has no manifest."""
    from components.common import storage

    manifest = storage.read_manifest(uri)
    if manifest is not None:
        return manifest.content_hash()
    h = hashlib.sha256()
    for p in sorted(q for q in local.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(local).as_posix()}\0{storage.sha256_file(p)}\n".encode())
    return h.hexdigest()


def run(args) -> int:
    from components.common import storage
    from components.common.config import load_config, parse_overrides
    from components.train import checkpoints, step

    overrides = parse_overrides(args.set)
    cfg = load_config(args.config, overrides)
    output = args.output.rstrip("/")
    run_id = run_id_for(output, args.run_id)

    if storage.is_s3(args.dataset) or args.dataset.startswith("file://"):
        dataset_dir = storage.fetch_dir(args.dataset)
    else:
        dataset_dir = Path(args.dataset).expanduser()
        if not dataset_dir.is_dir():
            raise storage.NotFound(f"--dataset {args.dataset}: directory not found; expected the prepare "
                                   "step's output (train.jsonl and test.jsonl, or .parquet)")
    lineage = {"dataset": args.dataset, "dataset_hash": dataset_identity(args.dataset, Path(dataset_dir)),
               "base_model": cfg.model.base, "config_hash": cfg.content_hash(), "run_id": run_id}

    done = storage.read_manifest(output)
    if done is not None:
        same = all(done.lineage.get(k) == lineage[k] for k in ("dataset_hash", "config_hash"))
        if same:  # a retry after a successful publish: nothing to do
            print(f"kubetune train: {output} is already published for this config and dataset; nothing to do")
            return 0
        raise storage.StorageError(f"{output}: already holds a train output for another config or dataset; "
                                   "choose a new --output (a new run id)")

    work = Path(args.work_dir).expanduser() if args.work_dir else \
        Path(tempfile.mkdtemp(prefix="kubetune-train-"))
    staging = work / "output"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        try:
            result = step.run(cfg, Path(dataset_dir), staging,
                              checkpoint_uri=storage.join_uri(output, "checkpoints"), run_id=run_id,
                              lineage=lineage, work_dir=work / "trainer", progress=not args.no_progress)
        except checkpoints.Preempted as e:
            print(f"kubetune train: {e}", file=sys.stderr)
            return checkpoints.EXIT_PREEMPTED
        storage.publish_dir(staging, output, producer="train",
                            lineage={**lineage, "global_step": result.global_step})
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    m = result.metrics
    print(f"kubetune train: {cfg.train.method} ({result.mode}) {m['global_step']} steps"
          + (f", resumed from step {m['resumed_from_step']}" if m["resumed_from_step"] is not None else "")
          + f"; eval loss {_f(m['initial_eval_loss'])} -> {_f(m['final_eval_loss'])}; "
          f"{_f(m['tokens_per_second'], 0)} tokens/s; peak memory {m['peak_memory_bytes'] / 2**20:.0f} MiB; "
          f"published to {output}")
    return 0


def _f(x, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"
