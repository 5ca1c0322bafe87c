"""Helpers for the quantize step's tests (fixtures live in conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PRETRAIN_STEPS = 80  # a capped build: all warm-up and decay, prose in every step; about a minute on 2 cores
EVAL = {"eval_records": 8, "eval_max_tokens": 256, "generate_tokens": 16}


def make_config(**quantize):
    from components.common.config import config_from_dict

    return config_from_dict({
        "model": {"name": "tiny-demo", "base": "unused"}, "data": {"sources": [{"uri": "unused.jsonl"}]},
        "storage": {"root": "/unused"}, "quantize": {**EVAL, "max_ppl_delta_pct": 50.0, **quantize}})


def write_config_yaml(path: Path, **quantize) -> Path:
    import yaml

    cfg = make_config(**quantize)
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    return path


@dataclass
class Quantized:
    demo: object  # pipelines.demo.DemoAssets
    out: Path
    result: object  # components.quantize.step.QuantizeResult
    report: dict
    cfg: object

    def entry(self, type_name: str) -> dict:
        return next(e for e in self.report["files"] if e["type"] == type_name)
