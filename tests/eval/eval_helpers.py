"""Helpers for the eval tests (not in conftest.py: tests import them by module name)."""

from __future__ import annotations

import json
from pathlib import Path

# The session's one real fine-tune: the demo config's LoRA settings (r 16, all-linear, lr 2e-3,
# batch 8), shortened to what the eval tests need.
FINETUNE = {"method": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.0}, "max_steps": 200,
            "per_device_batch_size": 8, "gradient_accumulation_steps": 1, "lr": 0.002, "max_grad_norm": 1.0,
            "optim": "adamw_torch", "gradient_checkpointing": False, "warmup_ratio": 0.03, "eval_steps": 1000,
            "save_steps": 1000, "logging_steps": 20}

EVAL = {"max_examples": 16, "max_new_tokens": 96, "batch_size": 8, "num_samples_in_report": 10,
        "gate": {"primary_metric": "json_field_f1", "min_primary_improvement": 0.05, "min_json_valid_rate": 0.5}}


def base_config_dict(demo) -> dict:
    return {
        "model": {"name": "tiny-eval", "base": str(demo.model_dir), "dtype": "float32"},
        "data": {"sources": [{"uri": str(demo.chat), "name": "contracts"}]},
        "storage": {"root": "/tmp/kubetune-test-root"},
        "prepare": {"max_seq_len": 384, "max_records": 800, "test_ratio": 0.02, "seed": 3},
        "train": json.loads(json.dumps(FINETUNE)),
        "eval": json.loads(json.dumps(EVAL)),
    }


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
