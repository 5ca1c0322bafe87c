"""Fixtures for the merge step: the tiny demo base (random weights, built in seconds and kept in the
pytest cache between runs), LoRA adapters made directly with peft, and a config factory."""

from __future__ import annotations

from pathlib import Path

import pytest
from merge_helpers import save_adapter


@pytest.fixture(autouse=True)
def one_thread(torch_threads):
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def demo_model(demo) -> Path:
    return demo.model_dir


@pytest.fixture(scope="session")
def adapter(demo_model, tmp_path_factory) -> Path:
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("adapter")
    return save_adapter(AutoModelForCausalLM.from_pretrained(demo_model), out, tokenizer_from=demo_model)


@pytest.fixture
def make_config(demo_model):
    from components.common.config import config_from_dict

    def make(**merge):
        return config_from_dict({"model": {"name": "tiny-merge", "base": str(demo_model), "dtype": "float32"},
                                 "data": {"sources": [{"uri": "unused.jsonl"}]}, "storage": {"root": "/tmp/x"},
                                 "merge": {"dtype": "float32", "max_shard_size": "4MB", "verify_prompts": 3,
                                           **merge}})

    return make
