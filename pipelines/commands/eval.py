"""`kubetune eval --config CFG [--base MODEL] --adapter DIR|URI --dataset DIR|URI --output DIR|URI`

Fetches the base model (default: model.base), the train step's output (a LoRA adapter or full
weights), the prepared dataset and data.general_eval (all verified against their manifests), runs the
eval step into a local staging directory and publishes eval_results.json, gate.json, samples.jsonl,
report.md/.html and eval_chart.png with `_manifest.json` written last.

Exit codes: 0 evaluated and published, whatever the gate says (the pipeline branches on gate.json);
3 the gate failed and --fail-on-gate was given; 2 bad input, with one clear line.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("kubetune.eval")
EXIT_GATE_FAILED = 3


def add_arguments(parser):
    parser.add_argument("--config", required=True, metavar="FILE", help="kubetune config YAML")
    parser.add_argument("--base", metavar="MODEL", help="base model: path, file://, s3:// or hf://ORG/NAME "
                                                        "(default: model.base)")
    parser.add_argument("--adapter", required=True, metavar="DIR|URI",
                        help="the train step's output: a LoRA adapter, or full weights for train.method full")
    parser.add_argument("--dataset", required=True, metavar="DIR|URI",
                        help="the prepare step's output (its test split is evaluated)")
    parser.add_argument("--output", required=True, metavar="DIR|URI", help="where to publish the results")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. eval.max_examples=32 (value parsed as YAML)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing published output")
    parser.add_argument("--fail-on-gate", action="store_true",
                        help=f"exit {EXIT_GATE_FAILED} when the gate fails (default: exit 0, see gate.json)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def load(args):
    from components.common.config import load_config, parse_overrides

    overrides = parse_overrides(args.set)
    return load_config(args.config, overrides)


def fetch_input(uri: str, what: str, *, model: bool = False, allow_pickle: bool = False) -> Path:
    from components.common import storage

    if model:
        return storage.fetch_model(uri, allow_pickle=allow_pickle)
    if storage.is_hf(uri):
        raise storage.StorageError(f"--{what} {uri}: expected a local directory, file:// or s3:// URI")
    return storage.fetch_dir(uri)


def base_and_adapter(args, cfg) -> tuple[str, str, Path, Path]:
    """The prologue eval and merge share: refuse an already published --output (before any heavy
    work), then fetch the base model and the train step's output. Returns (output, base_uri, base_dir,
    adapter_dir)."""
    from components.common import storage

    output = args.output.rstrip("/")
    if not args.overwrite and storage.read_manifest(output) is not None:
        raise storage.StorageError(f"{output}: already holds a published output; choose a new --output or "
                                   "pass --overwrite")
    base_uri = args.base or cfg.model.base
    base_dir = fetch_input(base_uri, "base", model=True, allow_pickle=cfg.model.allow_pickle)
    return output, base_uri, base_dir, fetch_input(args.adapter, "adapter")


def run(args) -> int:
    from components.common import storage
    from components.evaluate import step

    cfg = load(args)
    output, base_uri, base_dir, tuned_dir = base_and_adapter(args, cfg)
    dataset_dir = fetch_input(args.dataset, "dataset")
    general = storage.fetch_file(cfg.data.general_eval) if cfg.data.general_eval else None

    staging = Path(tempfile.mkdtemp(prefix="kubetune-eval-"))
    try:
        result = step.run(cfg, base_dir, tuned_dir, dataset_dir, staging, general_path=general,
                          base_uri=base_uri, tuned_uri=args.adapter, dataset_uri=args.dataset,
                          progress=not args.no_progress)
        lineage = {"base_model": base_uri, "adapter": args.adapter, "dataset": args.dataset,
                   "config_hash": cfg.content_hash(), "gate_passed": result.passed}
        storage.publish_dir(staging, output, producer="eval", lineage=lineage, overwrite=args.overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    for name, e in result.results["metrics"].items():
        print(f"eval: {name:22s} base {_f(e['base'])}  tuned {_f(e['tuned'])}  delta {_f(e['delta'], sign=True)}")
    lm = result.results["lm_eval"]
    if lm["status"] == "skipped":
        print(f"eval: lm-eval tasks {', '.join(lm['tasks'])} skipped: {lm['reason']}")
    for c in result.gate["checks"]:
        print(f"eval: gate {'pass' if c['passed'] else 'FAIL'}: {c['reason']}")
    print(f"eval: gate {'PASSED' if result.passed else 'FAILED'}; published to {output} "
          f"(report: {storage.join_uri(output, 'report.md')})")
    return EXIT_GATE_FAILED if args.fail_on_gate and not result.passed else 0


def _f(v, sign: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{v:+.4f}" if sign else f"{v:.4f}"
