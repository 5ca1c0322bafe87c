"""Paths and helpers shared by tests/k8s (not in conftest.py: tests import them by module name, and a
module named `conftest` would be whichever directory's was imported first)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
VENV = REPO / ".venv"
K8S = REPO / "k8s"
IMAGES = REPO / "images"
CHART = REPO / "charts" / "vllm"
DOCKERFILES = {name: IMAGES / name / "Dockerfile" for name in ("base", "train", "gguf")}
ENVIRONMENTS = ("staging", "prod")


def tool(name: str, make_target: str) -> str:
    """A tool from the venv's bin/ or tools/, or checkov's own venv, else PATH; fails (never skips) without it."""
    for candidate in (VENV / "bin" / name, VENV / "tools" / name, REPO / ".venv-checkov" / "bin" / name):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found in {VENV} nor on PATH: run `make {make_target}`", pytrace=False)
    return found


def run(cmd: list[str] | str, *, cwd: Path = REPO, env: dict | None = None, timeout: float = 600,
        check: bool = True, shell: bool = False) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PATH=f"{VENV / 'bin'}:{VENV / 'tools'}:{os.environ.get('PATH', '')}")
    full_env.update(env or {})
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
                          shell=shell)
    if check and proc.returncode != 0:
        pytest.fail(f"{cmd if isinstance(cmd, str) else ' '.join(map(str, cmd))} exited {proc.returncode}:\n"
                    f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}", pytrace=False)
    return proc


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# ---- releases for promote -------------------------------------------------------------------
EVAL = {"metrics": {"json_field_f1": {"base": 0.41, "tuned": 0.83, "delta": 0.42},
                    "json_valid": {"base": 0.62, "tuned": 0.99, "delta": 0.37},
                    "general_perplexity": {"base": 8.1, "tuned": 8.4, "delta": 0.3}}}
PASSED_GATE = {"passed": True, "checks": [
    {"name": "primary_improvement", "metric": "json_field_f1", "threshold": 0.02, "value": 0.42, "passed": True,
     "reason": "json_field_f1: base 0.41 -> tuned 0.83, improvement +0.42 (tuned - base) >= the required 0.02"}]}
FAILED_GATE = {"passed": False, "checks": [
    {"name": "primary_improvement", "metric": "json_field_f1", "threshold": 0.02, "value": 0.005, "passed": False,
     "reason": "json_field_f1: base 0.41 -> tuned 0.415, improvement +0.005 (tuned - base) < the required 0.02"},
    {"name": "min_json_valid_rate", "metric": "json_valid", "threshold": 0.95, "value": 0.99, "passed": True,
     "reason": "tuned valid-JSON rate 0.990 >= the required 0.95"}]}


def publish_release(root: str, *, model: str = "contracts-llama31-8b", version: str = "20261130-101500-run42",
                    gate: dict | None = None, served_name: str = "contracts-llama-v2",
                    max_model_len: int = 4096) -> str:
    """Publish a minimal but complete release (release.json + a merged/ file) under `root`; its URI."""
    import tempfile

    from components.common import storage
    from components.common.release import RELEASE_SCHEMA, release_uri

    uri = release_uri(root, model, version)
    release = {"schema": RELEASE_SCHEMA, "model": model, "version": version, "uri": uri, "run_id": "run42",
               "created_at": "2026-11-30T10:15:00Z", "artifacts": {}, "eval": EVAL,
               "gate": PASSED_GATE if gate is None else gate, "chat_template": None,
               "lineage": {"base_model": "hf://meta-llama/Llama-3.1-8B-Instruct"},
               "serving": {"served_model_name": served_name, "max_model_len": max_model_len,
                           "model_path": "merged", "lora_name": f"{model}-lora"}}
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        (staging / "merged").mkdir()
        (staging / "merged" / "config.json").write_text("{}")
        (staging / "release.json").write_text(json.dumps(release, indent=2))
        storage.publish_dir(staging, uri, producer="test")
    return uri
