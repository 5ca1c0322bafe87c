"""Fixtures for the eval step: the tiny demo model and data, one prepared split, and ONE real short
CPU fine-tune (LoRA) shared by the whole session, so the tuned model really beats the base."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from eval_helpers import FINETUNE, base_config_dict

log = logging.getLogger(__name__)


@pytest.fixture(autouse=True)
def one_thread(torch_threads):
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def prepared(demo, tmp_path_factory) -> Path:
    """The prepare step's output for the contract chats: ~780 train and ~16 test records."""
    from components.common.config import config_from_dict
    from components.prepare.step import run as prepare

    out = tmp_path_factory.mktemp("prepared")
    prepare(config_from_dict(base_config_dict(demo)), None, out, demo.model_dir)
    return out


@pytest.fixture(scope="session")
def finetuned(demo, prepared, tmp_path_factory, torch_threads) -> dict:
    """A real LoRA fine-tune on CPU through the train step (FINETUNE settings); its dir and seconds."""
    from components.common.config import config_from_dict
    from components.train.step import run as train

    cfg = config_from_dict(base_config_dict(demo))
    out = tmp_path_factory.mktemp("finetuned") / "adapter"
    t0 = time.monotonic()
    with torch_threads(1):
        result = train(cfg, prepared, out, checkpoint_uri=None, run_id="eval-tests", progress=False)
    seconds = time.monotonic() - t0
    log.warning("eval fixture: %d-step LoRA fine-tune on CPU took %.0f s (eval loss %s -> %s)",
                FINETUNE["max_steps"], seconds, result.metrics.get("initial_eval_loss"),
                result.metrics.get("final_eval_loss"))
    return {"dir": out, "seconds": seconds, "metrics": result.metrics}


@pytest.fixture
def make_config(demo):
    """make_config(**eval section) -> a KubetuneConfig for the demo model with small eval settings."""
    from components.common.config import config_from_dict

    def make(general: bool = False, **eval_section):
        d = base_config_dict(demo)
        d["eval"].update(eval_section)
        if general:
            d["data"]["general_eval"] = str(demo.general_heldout)
        return config_from_dict(d)

    return make
