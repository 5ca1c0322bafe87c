"""Fixtures for the quantize step's tests: the demo base model (briefly pre-trained, hidden 256 and
intermediate 768 so that K-quants apply), converted and quantized ONCE per session.

The session run keeps F16 in quantize.types so that the unquantized GGUF is published too and the
tests can compare it with the HF model directly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from quantize_helpers import PRETRAIN_STEPS, Quantized, make_config


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    from pipelines.demo import ensure_demo_assets

    # KUBETUNE_TEST_DEMO_DIR: reuse a demo build across sessions (it is rebuilt only when stale). In a
    # folder of its own: this build has other pre-training steps than demo_run's, and sharing the root
    # would rebuild (overwrite) the model that demo_run's tests read after this.
    shared = os.environ.get("KUBETUNE_TEST_DEMO_DIR")
    root = Path(shared) / f"pretrain-{PRETRAIN_STEPS}" if shared else tmp_path_factory.mktemp("quantize-demo")
    return ensure_demo_assets(root, pretrain_steps=PRETRAIN_STEPS, progress=False)


@pytest.fixture(scope="session")
def hf_tokenizer(demo):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo.model_dir)


@pytest.fixture(scope="session")
def quantized(demo, tmp_path_factory) -> Quantized:
    from components.quantize import step

    cfg = make_config(types=["Q4_K_M", "Q8_0", "F16"])
    out = tmp_path_factory.mktemp("quantized")
    result = step.run(cfg, demo.model_dir, out, eval_data=demo.chat)
    report = json.loads((out / step.REPORT_JSON).read_text())
    return Quantized(demo=demo, out=out, result=result, report=report, cfg=cfg)


@pytest.fixture
def model_copy(demo, tmp_path) -> Path:
    """A private copy of the demo model directory, for tests that break it."""
    import shutil

    return Path(shutil.copytree(demo.model_dir, tmp_path / "model"))
