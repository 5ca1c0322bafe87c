"""Fixtures for the train step tests: the tiny demo model (random weights, built in seconds), one
small prepared dataset shared by the whole session, and a config factory with fast settings."""

from __future__ import annotations

import copy
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    from pipelines.demo.assets import ensure_demo_assets

    return ensure_demo_assets(tmp_path_factory.mktemp("demo"), pretrain_steps=0, progress=False)


def _base_dict(model_dir: Path, sources: list[dict]) -> dict:
    return {
        "model": {"name": "tiny-test", "base": str(model_dir), "dtype": "float32"},
        "data": {"sources": sources},
        "storage": {"root": "/tmp/kubetune-test-root"},
        "prepare": {"max_seq_len": 384, "max_records": 96, "test_ratio": 0.125, "seed": 7},
        "train": {"method": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "max_steps": 8,
                  "per_device_batch_size": 4, "gradient_accumulation_steps": 1, "lr": 0.003,
                  "max_grad_norm": 1.0, "optim": "adamw_torch", "gradient_checkpointing": False,
                  "warmup_ratio": 0.0, "eval_steps": 8, "save_steps": 100, "logging_steps": 2,
                  "qlora": {"compute_dtype": "float32"}},
    }


@pytest.fixture(scope="session")
def prepared(demo, tmp_path_factory) -> Path:
    """The prepare step's output for contract chats + general prompt/completion records (~84/12)."""
    from components.common.config import config_from_dict
    from components.prepare.step import run as prepare

    cfg = config_from_dict(_base_dict(demo.model_dir, [
        {"uri": str(demo.chat), "name": "contracts", "weight": 0.7},
        {"uri": str(demo.general), "name": "general", "weight": 0.3}]))
    out = tmp_path_factory.mktemp("prepared")
    prepare(cfg, None, out, demo.model_dir)
    return out


@pytest.fixture
def make_config(demo):
    """make_config(method=..., **train overrides, model={...}) -> KubetuneConfig with fast settings."""
    from components.common.config import config_from_dict

    def make(model: dict | None = None, **train):
        d = _base_dict(demo.model_dir, [{"uri": str(demo.chat)}])
        d["train"].update(copy.deepcopy(train))
        d["model"].update(model or {})
        return config_from_dict(d)

    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pushgateway(tmp_path):
    """A real Prometheus Pushgateway (Debian package prometheus-pushgateway) on 127.0.0.1."""
    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if binary is None:
        pytest.fail("prometheus-pushgateway is not installed: run `make install` (it installs the Debian "
                    "package prometheus-pushgateway)")
    port = free_port()
    log = open(tmp_path / "pushgateway.log", "wb")
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}"], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    text = (tmp_path / "pushgateway.log").read_text()
                    pytest.fail(f"pushgateway did not start on {url}: {text}")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
