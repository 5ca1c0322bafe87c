"""Fixtures for the merge step: the tiny demo base (random weights, built in seconds and kept in the
pytest cache between runs), LoRA adapters made directly with peft, and a config factory."""

from __future__ import annotations

from pathlib import Path

import pytest
from merge_helpers import save_adapter


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine, OpenMP threads spin-waiting on each other make
    tiny-model forwards ~10x slower than a single thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def demo_model(request, tmp_path_factory) -> Path:
    from pipelines.demo.assets import ensure_demo_assets

    cache = getattr(request.config, "cache", None)
    root = cache.mkdir("kubetune-demo-p0") if cache is not None else tmp_path_factory.mktemp("demo")
    return ensure_demo_assets(root, pretrain_steps=0, progress=False).model_dir


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
