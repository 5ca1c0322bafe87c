"""Training throughput and peak memory of each method (LoRA, QLoRA, full) on the demo model.

Figures, not a pass/fail test:  `python tests/bench/bench_train.py [--steps 40] [--pretrain-steps 0]`
or `make bench`. By default the demo model is the pre-trained one in the default demo root (built
there, a few CPU minutes, when missing); `--pretrain-steps 0` uses a random one in a temp dir.
Each method runs `kubetune train` in its own process (peak RSS is per process) with the
tiny-cpu-demo config (batch 8, seq <= 512, LoRA r16 on all linear layers, no gradient
checkpointing) on the demo dataset, and prints non-pad tokens/s (inside optimizer steps, and over
the whole train() call), the process's peak RSS (CPU) or max allocated GPU memory, trainable
parameters and the eval loss before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

DEMO_CONFIG = ROOT / "pipelines" / "configs" / "tiny-cpu-demo.yaml"
# QLoRA's compute dtype: the config default is bf16 (GPUs); fp32 keeps the CPU comparison fair.
METHODS = {"lora": [], "qlora": ["train.qlora.compute_dtype=float32"], "full": ["train.lr=0.0005"]}


def prepare_dataset(demo, work: Path, max_records: int) -> Path:
    from components.common.config import load_config
    from components.prepare.step import run as prepare

    cfg = load_config(DEMO_CONFIG, {"model.base": str(demo.model_dir), "prepare.max_records": max_records})
    cfg = cfg.model_copy(deep=True)
    for source, path in zip(cfg.data.sources, (demo.chat, demo.general), strict=True):
        source.uri = str(path)
    out = work / "prepared"
    prepare(cfg, None, out, demo.model_dir)
    return out


def run_method(method: str, demo, dataset: Path, work: Path, steps: int) -> dict:
    out = work / f"out-{method}"
    overrides = [f"model.base={demo.model_dir}", f"train.method={method}", f"train.max_steps={steps}",
                 f"train.eval_steps={steps}", f"train.save_steps={10 * steps}", "train.logging_steps=5",
                 *METHODS[method]]
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--config", str(DEMO_CONFIG), "--dataset",
           str(dataset), "--output", str(out), "--no-progress"]
    for o in overrides:
        cmd += ["--set", o]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode != 0:
        raise RuntimeError(f"{method}: kubetune train exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    m = json.loads((out / "train_metrics.json").read_text())
    m["process_seconds"] = time.monotonic() - started
    return m


def table(results: dict[str, dict], steps: int) -> str:
    head = (f"{'method':6} {'tok/s step':>10} {'tok/s wall':>10} {'peak MiB':>9} {'trainable':>11} "
            f"{'%':>7} {'eval loss start -> end':>24} {'s/step':>7}")
    lines = [head, "-" * len(head)]
    for method, m in results.items():
        lines.append(f"{method:6} {m['tokens_per_second']:10.0f} {m['tokens_per_second_wall']:10.0f} "
                     f"{m['peak_memory_bytes'] / 2**20:9.0f} {m['trainable_params']:11,} "
                     f"{m['trainable_percent']:7.2f} {m['initial_eval_loss']:11.4f} -> {m['final_eval_loss']:8.4f} "
                     f"{m['step_seconds'] / steps:7.3f}")
    kind = next(iter(results.values()))["peak_memory_kind"]
    lines.append(f"({steps} steps each, batch 8; tokens are non-pad; peak = {kind})")
    return "\n".join(lines)


def bench(steps: int = 40, pretrain_steps: int | None = None, max_records: int = 400) -> str:
    from pipelines.demo.assets import ensure_demo_assets

    with tempfile.TemporaryDirectory(prefix="kubetune-bench-train-") as tmp:
        work = Path(tmp)
        root = None if pretrain_steps is None else work / "demo"  # None: the default demo root
        demo = ensure_demo_assets(root, pretrain_steps=pretrain_steps, progress=False)
        dataset = prepare_dataset(demo, work, max_records)
        results = {method: run_method(method, demo, dataset, work, steps) for method in METHODS}
    import torch

    header = (f"demo model: {demo.model_info.get('parameters', 0):,} parameters "
              f"({'random init' if pretrain_steps == 0 else 'pre-trained'}), torch threads {torch.get_num_threads()}, "
              f"load average {os.getloadavg()[0]:.1f}")
    return header + "\n" + table(results, steps)


def test_bench_train():
    print("\n" + bench())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--pretrain-steps", type=int, default=None,
                        help="demo model pre-training steps (default: the demo's; 0: random weights)")
    parser.add_argument("--max-records", type=int, default=400)
    a = parser.parse_args()
    print(bench(a.steps, a.pretrain_steps, a.max_records))
