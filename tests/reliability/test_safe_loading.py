"""Safe loading of models, through the steps' real loading code and their CLI front doors.

* Custom code: a model directory whose config.json has an `auto_map` to a .py file shipped with it is
  refused by `kubetune train`, `merge` and `quantize` unless `model.trust_remote_code` is on; the .py
  (which writes a marker file when imported) never runs then. With trust_remote_code on, the refusal
  is gone and `kubetune train` trains the custom architecture (the marker proves its code ran).
* Pickle checkpoints (`pytorch_model.bin`, `model.pt`, and a malicious pickle that would write a marker
  when unpickled) are refused by default with an error that names model.allow_pickle; with
  allow_pickle on, a plain .bin state dict trains.
* Forged or damaged safetensors (a header length larger than the file, a header that is not JSON, a
  truncated file) fail with exit code 2, one line naming the file, no traceback, nothing published.
* Forged GGUF headers (huge tensor/KV counts, a huge string length, truncated, bad magic) raise the
  quantize step's GgufFileError / ConversionFailed naming the file, from both readers the step uses
  (the `gguf` package's metadata reader and llama.cpp's loader).

The model is the demo's tiny Llama with random weights (`pretrain_steps=0`, the `demo` fixture of
tests/conftest.py), built in seconds.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KUBETUNE = [sys.executable, "-m", "pipelines.cli"]
CUSTOM_PY = '''
import os, pathlib
pathlib.Path(os.environ["KT_MARKER"]).write_text("custom code ran")
from transformers import LlamaConfig, LlamaForCausalLM


class KtConfig(LlamaConfig):
    model_type = "kt_custom"


class KtForCausalLM(LlamaForCausalLM):
    config_class = KtConfig
'''


class _Boom:
    """Unpickling this runs code: it writes the marker file named by $KT_MARKER."""

    def __reduce__(self):
        return (eval, ("__import__('pathlib').Path(__import__('os').environ['KT_MARKER']).write_text('pickle ran')",))


@pytest.fixture(scope="module")
def models(demo, tmp_path_factory) -> dict[str, Path]:
    """Variants of the tiny model directory, one per way of being unsafe."""
    import torch
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("models")
    src = Path(demo.model_dir)
    raw = (src / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    state = load_file(src / "model.safetensors")
    out = {}

    def variant(name: str) -> Path:
        d = root / name
        shutil.copytree(src, d)
        out[name] = d
        return d

    def add_auto_map(d: Path, model_type: str | None) -> None:
        cfg = json.loads((d / "config.json").read_text())
        cfg["auto_map"] = {"AutoConfig": "kt_modeling.KtConfig", "AutoModelForCausalLM": "kt_modeling.KtForCausalLM"}
        if model_type:
            cfg["model_type"], cfg["architectures"] = model_type, ["KtForCausalLM"]
        (d / "config.json").write_text(json.dumps(cfg))
        (d / "kt_modeling.py").write_text(CUSTOM_PY)

    add_auto_map(variant("custom"), "kt_custom")  # an architecture transformers does not know
    add_auto_map(variant("custom_llama"), None)   # llama, but shipping its own code too
    d = variant("pickle_bin")
    (d / "model.safetensors").unlink()
    torch.save(state, d / "pytorch_model.bin")
    d = variant("pickle_pt")
    (d / "model.safetensors").unlink()
    torch.save(state, d / "model.pt")
    d = variant("pickle_evil")
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom()))
    variant("st_header_too_long")
    (out["st_header_too_long"] / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + raw[8:])
    variant("st_header_not_json")
    (out["st_header_not_json"] / "model.safetensors").write_bytes(raw[:8] + b"{" + b"x" * (n - 1) + raw[8 + n:])
    variant("st_truncated")
    (out["st_truncated"] / "model.safetensors").write_bytes(raw[:len(raw) // 2])
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A prepared dataset as the train step reads it: chat records, train and test splits."""
    d = tmp_path_factory.mktemp("dataset")
    for split, n in (("train", 8), ("test", 4)):
        with open(d / f"{split}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps({"messages": [{"role": "user", "content": f"Say the number {i}."},
                                                 {"role": "assistant", "content": f"{i}"}]}) + "\n")
    return d


@pytest.fixture(scope="module")
def config(tmp_path_factory, dataset) -> Path:
    d = tmp_path_factory.mktemp("config")
    path = d / "cfg.yaml"
    path.write_text(json.dumps({
        "model": {"name": "safe-loading", "base": "unset", "dtype": "float32"},
        "data": {"sources": [{"uri": str(dataset / "train.jsonl")}]},
        "storage": {"root": str(d / "root")},
        "train": {"method": "lora", "max_steps": 1, "per_device_batch_size": 2, "save_steps": 100,
                  "eval_steps": 100, "logging_steps": 1, "optim": "adamw_torch", "gradient_checkpointing": False},
        "merge": {"dtype": "float32", "verify_prompts": 1},
        "quantize": {"types": ["Q8_0"]},
    }))
    return path


@pytest.fixture(scope="module")
def adapter(demo, tmp_path_factory) -> Path:
    """A LoRA adapter for the tiny model (untrained: merge only needs its shapes), with the tokenizer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tmp_path_factory.mktemp("adapter")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(demo.model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.save_pretrained(d)
    AutoTokenizer.from_pretrained(demo.model_dir).save_pretrained(d)
    assert (d / "adapter_model.safetensors").is_file()
    return d


def kubetune(tmp_path: Path, *argv: str) -> tuple[int, str, Path]:
    """Run the CLI as a user would (a child process); (exit code, stdout+stderr, the marker path)."""
    marker = tmp_path / "marker"
    env = dict(os.environ, KT_MARKER=str(marker), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               HF_MODULES_CACHE=str(tmp_path / "hf-modules"), PYTHONPATH=str(REPO))
    proc = subprocess.run([*KUBETUNE, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr, marker


def assert_clean_failure(rc: int, out: str, *needles: str) -> str:
    assert rc == 2, f"exit {rc}, expected 2 (a clear error):\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    [line] = [ln for ln in out.splitlines() if ": error: " in ln]
    for needle in needles:
        assert needle in line, f"{needle!r} not in the error line: {line}"
    return line


def train(tmp_path, config, dataset, base: Path, *sets: str):
    out = tmp_path / "out"
    rc, text, marker = kubetune(tmp_path, "train", "--config", str(config), "--set", f"model.base={base}",
                                *[a for s in sets for a in ("--set", s)], "--dataset", str(dataset),
                                "--output", str(out), "--work-dir", str(tmp_path / "work"))
    return rc, text, marker, out


# ---- custom code ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["custom", "custom_llama"])
def test_train_refuses_custom_code_without_trust_remote_code(models, config, dataset, tmp_path, variant):
    rc, out, marker, published = train(tmp_path, config, dataset, models[variant])
    assert_clean_failure(rc, out, "ships custom code", "kt_modeling.py", "trust_remote_code", str(models[variant]))
    assert not marker.exists(), "the model's own Python ran although trust_remote_code is off"
    assert not (published / "_manifest.json").exists()


def test_train_runs_custom_code_with_trust_remote_code(models, config, dataset, tmp_path):
    rc, out, marker, published = train(tmp_path, config, dataset, models["custom"], "model.trust_remote_code=true")
    assert "ships custom code" not in out
    assert rc == 0, out[-3000:]
    assert marker.read_text() == "custom code ran"
    assert (published / "_manifest.json").is_file()


def test_merge_and_quantize_refuse_custom_code(models, config, adapter, tmp_path):
    rc, out, marker = kubetune(tmp_path, "merge", "--config", str(config), "--base", str(models["custom_llama"]),
                               "--adapter", str(adapter), "--output", str(tmp_path / "merged"))
    assert_clean_failure(rc, out, "ships custom code", "trust_remote_code")
    assert not marker.exists() and not (tmp_path / "merged" / "_manifest.json").exists()
    rc, out, marker = kubetune(tmp_path, "quantize", "--config", str(config), "--model", str(models["custom_llama"]),
                               "--output", str(tmp_path / "gguf"))
    assert_clean_failure(rc, out, "ships custom code", "trust_remote_code")
    assert not marker.exists() and not (tmp_path / "gguf" / "_manifest.json").exists()


# ---- pickle checkpoints ------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["pickle_bin", "pickle_pt", "pickle_evil"])
def test_train_refuses_pickle_weights_by_default(models, config, dataset, tmp_path, variant):
    rc, out, marker, published = train(tmp_path, config, dataset, models[variant])
    assert_clean_failure(rc, out, str(models[variant]), "allow_pickle", "only safetensors")
    assert not marker.exists(), "a pickle was unpickled"
    assert not (published / "_manifest.json").exists()


def test_train_loads_a_plain_pickle_with_allow_pickle(models, config, dataset, tmp_path):
    rc, out, marker, published = train(tmp_path, config, dataset, models["pickle_bin"], "model.allow_pickle=true")
    assert rc == 0, out[-3000:]
    assert (published / "_manifest.json").is_file()


@pytest.mark.parametrize("variant", ["pickle_bin", "pickle_evil"])
def test_merge_refuses_pickle_base(models, config, adapter, tmp_path, variant):
    rc, out, marker = kubetune(tmp_path, "merge", "--config", str(config), "--base", str(models[variant]),
                               "--adapter", str(adapter), "--output", str(tmp_path / "merged"))
    assert_clean_failure(rc, out, "only pickle weights (pytorch_model.bin)", "allow_pickle")
    assert not marker.exists()


# ---- forged safetensors ------------------------------------------------------------------------------------
# safetensors' own messages (its safe_open reads the header), behind the file's name
FORGED_ST = {"st_header_too_long": "header too large", "st_header_not_json": "invalid JSON in header",
             "st_truncated": "not fully covered"}


@pytest.mark.parametrize("variant", list(FORGED_ST))
def test_train_fails_cleanly_on_forged_safetensors(models, config, dataset, tmp_path, variant):
    rc, out, _, published = train(tmp_path, config, dataset, models[variant])
    assert_clean_failure(rc, out, str(models[variant] / "model.safetensors"), FORGED_ST[variant])
    assert not (published / "_manifest.json").exists()


@pytest.mark.parametrize("variant", list(FORGED_ST))
def test_quantize_fails_cleanly_on_forged_safetensors(models, config, dataset, tmp_path, variant):
    rc, out, _ = kubetune(tmp_path, "quantize", "--config", str(config), "--model", str(models[variant]),
                          "--dataset", str(dataset), "--output", str(tmp_path / "gguf"))
    assert_clean_failure(rc, out, str(models[variant] / "model.safetensors"))
    assert not (tmp_path / "gguf" / "_manifest.json").exists()


def test_merge_fails_cleanly_on_forged_safetensors(models, config, adapter, demo, tmp_path):
    base = models["st_header_too_long"]
    rc, out, _ = kubetune(tmp_path, "merge", "--config", str(config), "--base", str(base), "--adapter", str(adapter),
                          "--output", str(tmp_path / "merged"))
    assert_clean_failure(rc, out, str(base / "model.safetensors"), FORGED_ST["st_header_too_long"])
    forged_adapter = tmp_path / "adapter"
    shutil.copytree(adapter, forged_adapter)
    (forged_adapter / "adapter_model.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    rc, out, _ = kubetune(tmp_path, "merge", "--config", str(config), "--base", str(demo.model_dir),
                          "--adapter", str(forged_adapter), "--output", str(tmp_path / "merged2"))
    assert_clean_failure(rc, out, str(forged_adapter / "adapter_model.safetensors"))


def test_the_safetensors_check_passes_a_real_model(demo):
    from components.common.hf_hub import check_safetensors

    assert [p.name for p in check_safetensors(demo.model_dir)] == ["model.safetensors"]


# ---- forged GGUF -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory) -> dict[str, Path]:
    import gguf
    import numpy as np

    d = tmp_path_factory.mktemp("gguf")
    good = d / "good.gguf"
    w = gguf.GGUFWriter(str(good), "llama")
    w.add_context_length(16)
    w.add_tensor("t", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    raw = good.read_bytes()  # magic(4) version(4) n_tensors(8) n_kv(8) then the first key's length(8)
    forged = {
        "tensor_count": raw[:8] + struct.pack("<Q", 1 << 60) + raw[16:],
        "kv_count": raw[:16] + struct.pack("<Q", 1 << 60) + raw[24:],
        "string_length": raw[:24] + struct.pack("<Q", 1 << 50) + raw[32:],
        "truncated": raw[:40],
        "bad_magic": b"GGUX" + raw[4:],
    }
    out = {"good": good}
    for name, data in forged.items():
        out[name] = d / f"{name}.gguf"
        out[name].write_bytes(data)
    return out


@pytest.mark.parametrize("name", ["tensor_count", "kv_count", "string_length", "truncated", "bad_magic"])
def test_forged_gguf_fails_cleanly(gguf_files, name):
    from components.common.errors import KubetuneError
    from components.quantize import native
    from components.quantize.errors import ConversionFailed, GgufFileError

    path = gguf_files[name]
    with pytest.raises(GgufFileError, match="not a valid GGUF file") as e:
        native.read_info(path)
    assert str(path) in str(e.value) and isinstance(e.value, KubetuneError)
    with pytest.raises(ConversionFailed) as e:
        native.load(path, n_ctx=16)
    assert str(path) in str(e.value)


def test_a_well_formed_gguf_reads(gguf_files):
    from components.quantize import native

    info = native.read_info(gguf_files["good"])
    assert info.architecture == "llama" and info.context_length == 16 and info.n_params == 16
