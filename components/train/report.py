"""What a training run reports: train_metrics.json, trainer_log.jsonl and loss_curve.png.

Throughput counts non-pad tokens (the Trainer's ``num_input_tokens_seen`` in ``non_padding`` mode,
which is saved in checkpoints, so it survives a resume). ``tokens_per_second`` divides the tokens of
this session by the time spent inside optimizer steps (forward, backward, optimizer); 
``tokens_per_second_wall`` divides them by the whole ``train()`` call, evaluations and checkpoint
uploads included. Peak memory is the GPU's max allocated bytes, or on CPU the process's peak RSS.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

from components.common.plots import loss_curve_png


class Throughput(TrainerCallback):
    """Time inside optimizer steps and tokens of this session."""

    def __init__(self):
        self.step_seconds = 0.0
        self.train_seconds = 0.0
        self.tokens_at_begin = 0
        self.tokens_at_end = 0
        self.steps_at_begin = 0
        self._t_step: float | None = None
        self._t_train: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._t_train = time.monotonic()
        self.tokens_at_begin = self.tokens_at_end = state.num_input_tokens_seen
        self.steps_at_begin = state.global_step

    def on_step_begin(self, args, state, control, **kwargs):
        self._t_step = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self._t_step is not None:
            self.step_seconds += time.monotonic() - self._t_step
            self._t_step = None
        self.tokens_at_end = state.num_input_tokens_seen

    def on_train_end(self, args, state, control, **kwargs):
        if self._t_train is not None:
            self.train_seconds = time.monotonic() - self._t_train
        self.tokens_at_end = state.num_input_tokens_seen

    @property
    def session_tokens(self) -> int:
        return self.tokens_at_end - self.tokens_at_begin


def peak_memory() -> dict:
    import torch

    if torch.cuda.is_available():
        peak = sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count()))
        return {"peak_memory_bytes": int(peak), "peak_memory_kind": "gpu_max_allocated"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return {"peak_memory_bytes": int(rss * scale), "peak_memory_kind": "process_peak_rss"}


def _series(history: list[dict], key: str) -> list[tuple[int, float]]:
    return [(int(h["step"]), float(h[key])) for h in history
            if isinstance(h.get(key), int | float) and math.isfinite(h[key])]


def summarize(history: list[dict], *, throughput: Throughput, trainable: int, total: int, wall_seconds: float,
              extra: dict) -> dict:
    train = _series(history, "loss")
    evals = _series(history, "eval_loss")
    best_train = min(train, key=lambda x: x[1]) if train else None
    best_eval = min(evals, key=lambda x: x[1]) if evals else None
    tokens_total = max([int(h.get("num_input_tokens_seen", 0)) for h in history] + [throughput.tokens_at_end])
    m = {
        "final_train_loss": train[-1][1] if train else None,
        "best_train_loss": best_train[1] if best_train else None,
        "best_train_loss_step": best_train[0] if best_train else None,
        "initial_eval_loss": evals[0][1] if evals else None,
        "initial_eval_loss_step": evals[0][0] if evals else None,
        "final_eval_loss": evals[-1][1] if evals else None,
        "best_eval_loss": best_eval[1] if best_eval else None,
        "best_eval_loss_step": best_eval[0] if best_eval else None,
        "tokens_seen": tokens_total,
        "tokens_seen_this_session": throughput.session_tokens,
        "tokens_per_second": (throughput.session_tokens / throughput.step_seconds
                              if throughput.step_seconds > 0 else None),
        "tokens_per_second_wall": (throughput.session_tokens / throughput.train_seconds
                                   if throughput.train_seconds > 0 else None),
        "train_seconds": round(throughput.train_seconds, 3),
        "step_seconds": round(throughput.step_seconds, 3),
        "wall_seconds": round(wall_seconds, 3),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": round(100.0 * trainable / total, 4) if total else None,
        **peak_memory(),
    }
    m.update(extra)
    return m


def write_outputs(output_dir: Path, history: list[dict], metrics: dict, title: str) -> None:
    output_dir = Path(output_dir)
    (output_dir / "train_metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    with open(output_dir / "trainer_log.jsonl", "w") as f:
        for h in history:
            f.write(json.dumps(h, sort_keys=True) + "\n")
    loss_curve_png(_series(history, "loss"), output_dir / "loss_curve.png",
                   eval=_series(history, "eval_loss"), title=title)
