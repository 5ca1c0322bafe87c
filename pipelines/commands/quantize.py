"""`kubetune quantize --config CFG --model DIR|URI --output DIR|URI [--dataset DIR|URI]`

Converts the merged model (a local directory, file:// or s3:// prefix with a manifest) with llama.cpp's
converter, quantizes it to each of quantize.types, verifies every file, writes Ollama Modelfiles and
quantize_report.json, and only when all checks passed publishes the files with `_manifest.json`
written last, through the same lifecycle as the pipeline's component (pipelines/commands/step_cli.py).
A failed check publishes nothing; the reason is in the error.

--dataset is the prepared dataset (its test split) or a JSONL/Parquet file; without it, perplexity is
measured on the demo's synthetic contract conversations (generated on the fly), which suits the demo
model only.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from pipelines.commands import step_cli

log = logging.getLogger("kubetune.quantize")


def add_arguments(parser):
    parser.add_argument("--model", required=True, metavar="DIR|URI",
                        help="the merged model: a directory, file:// or s3:// (published, with a manifest)")
    parser.add_argument("--dataset", metavar="DIR|URI",
                        help="prepared dataset (test split used) or a JSONL/Parquet file; default: the "
                             "demo's synthetic conversations")
    parser.add_argument("--llama-cpp-dir", metavar="DIR",
                        help="llama.cpp checkout with convert_hf_to_gguf.py (default: "
                             "$KUBETUNE_LLAMA_CPP_DIR, else .venv/llama.cpp from `make "
                             "install-llama-cpp-tools`)")
    step_cli.add_common_arguments(parser, progress=False,
                                  output_help="where to publish the GGUF files, Modelfiles and reports "
                                              "(+ _manifest.json)",
                                  set_example="quantize.types=[Q8_0]")


def run(args) -> int:
    from components.common import storage

    cfg = step_cli.load(args)
    if args.llama_cpp_dir:  # where components/quantize/convert.py looks, as in the gguf image
        os.environ["KUBETUNE_LLAMA_CPP_DIR"] = str(Path(args.llama_cpp_dir).expanduser().resolve())
    with tempfile.TemporaryDirectory(prefix="kubetune-quantize-data-") as tmp:
        dataset = args.dataset
        if dataset is None:
            from pipelines.demo.dataset import write_datasets

            log.info("no --dataset: measuring on the demo's synthetic contract conversations")
            dataset = str(write_datasets(Path(tmp) / "demo-data", n=200, n_general=10, n_heldout=10)["chat"])
        published = step_cli.run_step_command("quantize", cfg, {"model": args.model, "dataset": dataset}, args)
    m, gguf = published.outcome.metrics, published.outcome.lineage["gguf"]
    print(f"quantize: converted in {m['conversion_seconds']:.1f} s; "
          + "; ".join(f"{t['file']} {t['size_bytes'] / 2**20:.1f} MiB (Δppl {t['ppl_delta_pct']:+.2f}%)"
                      for t in gguf.values()))
    output = published.manifest.uri
    print(f"quantize: published to {output} (report: {storage.join_uri(output, 'report.md')})")
    return 0
