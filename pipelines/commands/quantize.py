"""`kubetune quantize --config CFG --model DIR|URI --output DIR|URI [--dataset DIR|URI]`

Fetches the merged model (a local directory, file://, s3:// prefix with a manifest, or hf://), converts
it with llama.cpp's converter, quantizes it to each of quantize.types, verifies every file, writes
Ollama Modelfiles and quantize_report.json, and only when all checks passed publishes the files with
`_manifest.json` written last. A failed check leaves the local staging directory (its path is
printed) so that the report can be read, and publishes nothing.

--dataset is the prepared dataset (its test split) or a JSONL/Parquet file; without it, perplexity is
measured on the demo's synthetic contract conversations (generated on the fly), which suits the demo
model only.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("kubetune.quantize")


def add_arguments(parser):
    parser.add_argument("--config", required=True, metavar="FILE", help="kubetune config YAML")
    parser.add_argument("--model", required=True, metavar="DIR|URI",
                        help="the merged model: a directory, file://, s3:// (published, with a manifest) or hf://")
    parser.add_argument("--output", required=True, metavar="DIR|URI",
                        help="where to publish the GGUF files, Modelfiles and reports (+ _manifest.json)")
    parser.add_argument("--dataset", metavar="DIR|URI",
                        help="prepared dataset (test split used) or a JSONL/Parquet file; default: the "
                             "demo's synthetic conversations")
    parser.add_argument("--llama-cpp-dir", metavar="DIR",
                        help="llama.cpp checkout with convert_hf_to_gguf.py (default: "
                             "$KUBETUNE_LLAMA_CPP_DIR, else .venv/llama.cpp from `make "
                             "install-llama-cpp-tools`)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. quantize.types=[Q8_0] (value parsed as YAML)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing published output")


def _dataset(uri: str | None, tmp: Path) -> Path:
    from components.common import storage

    if uri is None:
        from pipelines.demo.dataset import write_datasets

        log.info("no --dataset: measuring on the demo's synthetic contract conversations")
        return write_datasets(tmp / "demo-data", n=200, n_general=10, n_heldout=10)["chat"]
    if str(uri).endswith((".jsonl", ".json", ".parquet")):
        return storage.fetch_file(uri)
    return storage.fetch_dir(uri)


def run(args) -> int:
    from components.common import storage
    from components.common.config import load_config, parse_overrides
    from components.quantize import component
    from components.quantize.errors import QualityGateFailed, VerificationFailed

    overrides = parse_overrides(args.set)
    cfg = load_config(args.config, overrides)
    if not args.overwrite and storage.read_manifest(args.output) is not None:
        raise storage.StorageError(f"{args.output}: already holds a published output; choose a new --output "
                                   "or pass --overwrite")
    model_dir = storage.fetch_model(args.model, allow_pickle=False)
    staging = Path(tempfile.mkdtemp(prefix="kubetune-quantize-"))
    keep = False
    try:
        data = _dataset(args.dataset, staging.parent / (staging.name + "-data"))
        out = staging / "out"
        try:
            outcome = component.execute(cfg, {"model": model_dir, "dataset": data}, out,
                                        llama_cpp_dir=args.llama_cpp_dir)
        except (VerificationFailed, QualityGateFailed):
            keep = True
            print(f"quantize: nothing published; the outputs and report stay in {out}")
            raise
        lineage = {"model": args.model, "dataset": args.dataset or "demo", "config_hash": cfg.content_hash(),
                   **outcome.lineage}
        model_manifest = storage.read_manifest(args.model) if not storage.is_hf(args.model) else None
        if model_manifest is not None:
            lineage["model_content_hash"] = model_manifest.content_hash()
        storage.publish_dir(out, args.output, producer="quantize", lineage=lineage, overwrite=args.overwrite)
    finally:
        shutil.rmtree(staging.parent / (staging.name + "-data"), ignore_errors=True)
        if not keep:
            shutil.rmtree(staging, ignore_errors=True)
    m = outcome.metrics
    print(f"quantize: converted in {m['conversion_seconds']:.1f} s; "
          + "; ".join(f"{t['file']} {t['size_bytes'] / 2**20:.1f} MiB (Δppl {t['ppl_delta_pct']:+.2f}%)"
                      for t in outcome.lineage["gguf"].values()))
    report_uri = storage.join_uri(args.output, "report.md")
    print(f"quantize: published to {args.output} (report: {report_uri})")
    return 0
