"""Quantize step figures on the demo model: conversion and quantization times, file sizes, ratios to
f16, perplexity deltas and top-1 agreement, per quantization type.

Figures, not a pass/fail test:  `python tests/bench/bench_quantize.py [--root DIR] [--types ...]`  or
`make bench`. The demo model is built (default pre-training, a few CPU minutes) under --root, or
$KUBETUNE_DEMO_DIR, or ~/.cache/kubetune/demo, and reused when it is already there.

--eval chat (default) measures on the demo's contract conversations, the task the pipeline fine-tunes
for: the *base* model never saw their JSON answers, so its perplexity there is huge and dominated by
near-zero probabilities, and deltas are noisy (top-1 agreement is the steadier figure). --eval corpus
measures on held-out documents of the base model's own pre-training distribution (plain text and
ChatML conversations), where perplexity deltas mean what they mean for a real model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

TYPES = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K"]


def corpus_eval_file(path: Path, n: int = 200) -> Path:
    """Held-out pre-training documents (a seed the model builder never trains on) as JSONL."""
    from pipelines.demo.corpus import pretraining_documents

    with open(path, "w", encoding="utf-8") as f:
        for doc in pretraining_documents(n, seed=20_000):
            f.write(json.dumps({"text": doc} if isinstance(doc, str) else {"messages": doc}) + "\n")
    return path


def run_bench(work: Path, root: str | None, types: list[str], records: int, max_tokens: int,
              eval_set: str = "chat") -> list[str]:
    from components.common.config import config_from_dict
    from components.quantize import step
    from pipelines.demo import ensure_demo_assets

    t0 = time.perf_counter()
    demo = ensure_demo_assets(root, progress=False)
    build = time.perf_counter() - t0
    cfg = config_from_dict({
        "model": {"name": "tiny-demo", "base": "unused"}, "data": {"sources": [{"uri": "unused.jsonl"}]},
        "storage": {"root": "/unused"},
        "quantize": {"types": types, "eval_records": records, "eval_max_tokens": max_tokens,
                     "max_ppl_delta_pct": 1000.0}})
    t0 = time.perf_counter()
    data = demo.chat if eval_set == "chat" else corpus_eval_file(work / "corpus.jsonl")
    result = step.run(cfg, demo.model_dir, work / "out", eval_data=data)
    total = time.perf_counter() - t0
    r = result.report
    pre = demo.model_info.get("pretrain") or {}
    rows = [f"model: {demo.model_dir} ({r['model']['parameters'] / 1e6:.2f}M parameters, pre-trained "
            f"{pre.get('steps', 0)} steps, held-out loss {pre.get('heldout_loss_after')}; assets ready in "
            f"{build:.1f} s)",
            f"eval ({eval_set}): {r['eval']['records']} records, {r['eval']['scored_tokens']} scored tokens; "
            f"HF merged model perplexity {r['reference']['hf']['perplexity']} "
            f"({r['reference']['hf']['dtype']})",
            f"conversion (convert_hf_to_gguf.py -> {r['converter']['outtype']}): "
            f"{r['converter']['seconds']:.1f} s; whole step {total:.1f} s on {os.cpu_count()} CPUs",
            f"{'type':8s} {'quant s':>7s} {'MiB':>7s} {'ratio':>6s} {'bpw':>6s} {'ppl':>10s} {'Δppl %':>8s} "
            f"{'top1 f16':>8s} {'top1 HF':>8s} {'greedy=f16':>10s}"]
    for e in r["files"]:
        same = e["greedy_same_as_reference"]
        rows.append(f"{e['type']:8s} {e['quantize_seconds']:7.2f} {e['size_mib']:7.2f} "
                    f"{e['ratio_to_f16']:6.3f} {e['bits_per_weight']:6.2f} {e['perplexity']:10.4f} "
                    f"{e['ppl_delta_pct']:+8.3f} "
                    f"{e['top1_agreement']:8.4f} {e.get('top1_agreement_hf', 0):8.4f} "
                    f"{sum(same)}/{len(same):>8}")
    return rows


def _report(rows: list[str]) -> None:
    print("\nquantize step (llama.cpp via llama-cpp-python) on the demo model")
    for row in rows:
        print("  " + row)


def test_bench_quantize(tmp_path):
    types = os.environ.get("KUBETUNE_BENCH_QUANT_TYPES", ",".join(TYPES)).split(",")
    for eval_set in ("chat", "corpus"):
        _report(run_bench(tmp_path / eval_set, os.environ.get("KUBETUNE_DEMO_DIR"), types, records=64,
                          max_tokens=512, eval_set=eval_set))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None,
                        help="demo assets root (default: $KUBETUNE_DEMO_DIR or ~/.cache/kubetune/demo)")
    parser.add_argument("--types", nargs="+", default=TYPES)
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--eval", choices=["chat", "corpus"], default="chat")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kubetune-bench-") as tmp:
        _report(run_bench(Path(tmp), args.root, args.types, args.records, args.max_tokens, args.eval))
    return 0


if __name__ == "__main__":
    sys.exit(main())
