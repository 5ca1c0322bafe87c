"""`kubetune plan`: exact LoRA parameter counts from config.json alone (meta device), and the memory
estimate's verdicts on the guide's claims."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.common.config import config_from_dict
from components.train import plan
from pipelines.cli import main

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "llama-3.1-8b-config.json"
SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GiB = 1024**3

# Mistral-7B-v0.3's public config.json values (a "7B" with a 32k vocabulary)
MISTRAL_7B = {"model_type": "mistral", "architectures": ["MistralForCausalLM"], "hidden_size": 4096,
              "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 32768, "max_position_embeddings": 32768,
              "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": None,
              "tie_word_embeddings": False, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2}


def cfg(method="qlora", **train):
    return config_from_dict({"model": {"name": "m", "base": "hf://meta-llama/Llama-3.1-8B", "dtype": "bfloat16"},
                             "data": {"sources": [{"uri": "x.jsonl"}]}, "storage": {"root": "/tmp/x"},
                             "train": {"method": method, "lora": {"r": 16, "target_modules": SEVEN}, **train}})


@pytest.fixture(scope="module")
def llama_plan():
    return plan.plan(cfg(), FIXTURE, "t4-16gb", seq_len=2048, batch_size=4)


def test_llama_31_8b_r16_all_seven_projections(llama_plan):
    c = llama_plan.counts
    assert c.total_params == 8_030_261_248
    assert c.lora_params == 41_943_040
    assert f"{c.lora_percent:.2f}" == "0.52"
    assert c.target_modules == sorted(SEVEN)
    # the adapter in bf16: 2 bytes per parameter, "about 84 MB"
    assert llama_plan.adapter_bytes_bf16 == 83_886_080 and round(llama_plan.adapter_bytes_bf16 / 1e6) == 84


def test_all_linear_is_the_same_seven_on_llama():
    counts = plan.count(plan.load_model_config(FIXTURE), 16, "all-linear")
    assert counts.lora_params == 41_943_040


def test_cli_prints_the_figures(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(cfg().model_dump(mode="json")))
    assert main(["plan", "--config", str(config), "--model-config", str(FIXTURE), "--gpu", "a100-80gb",
                 "--seq-len", "2048", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "41,943,040 trainable (0.52%)" in out and "adapter 83.9 MB" in out
    assert main(["plan", "--config", str(config), "--model-config", str(FIXTURE), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["counts"]["lora_params"] == 41_943_040 and d["recommendation"]["gpu_count"] >= 1


def test_memory_components(llama_plan):
    qlora_gc = next(e for e in llama_plan.estimates if e.method == "qlora" and e.gradient_checkpointing)
    # 6.98e9 linear weights in NF4 + double-quant constants, the other 1.05e9 upcast to fp32
    assert qlora_gc.weights == pytest.approx(6_979_321_856 * (0.5 + 1 / 64 + 4 / (64 * 256))
                                             + 1_050_939_392 * 4, rel=1e-6)
    assert qlora_gc.lora == 41_943_040 * 2 and qlora_gc.optimizer == 41_943_040 * 8  # paged 32-bit AdamW
    full = next(e for e in llama_plan.estimates if e.method == "full" and e.gradient_checkpointing)
    assert full.weights == full.gradients == 8_030_261_248 * 2
    no_gc = next(e for e in llama_plan.estimates if e.method == "qlora" and not e.gradient_checkpointing)
    assert no_gc.activations > 8 * qlora_gc.activations


def test_seven_b_qlora_on_16_gb_at_seq_2048_batch_4(tmp_path):
    """The guide: "a 7B model fits QLoRA on a 16 GB GPU". By this estimate it holds only with gradient
    checkpointing: without it, activations alone are ~4x the card."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(MISTRAL_7B))
    p = plan.plan(cfg(), path, "t4-16gb", seq_len=2048, batch_size=4)
    by = {(e.method, e.gradient_checkpointing): e for e in p.estimates}
    assert by[("qlora", True)].gpus_needed(p.gpu) == 1
    assert by[("qlora", True)].total < 15 * GiB
    assert by[("qlora", False)].gpus_needed(p.gpu) > 1 and by[("qlora", False)].activations > 40 * GiB
    assert p.recommendation["method"] == "qlora" and p.recommendation["gradient_checkpointing"]
    assert p.recommendation["gpu_count"] == 1
    assert p.warnings and "no bf16" in p.warnings[0]


def test_llama_8b_qlora_is_marginal_on_a_t4(llama_plan):
    """Llama 3's 128k vocabulary: embeddings + lm_head upcast to fp32 cost ~3.9 GiB, which tips it over."""
    e = next(e for e in llama_plan.estimates if e.method == "qlora" and e.gradient_checkpointing)
    assert 14 * GiB < e.total < 17 * GiB


def test_recommendation_for_a_big_gpu():
    p = plan.plan(cfg("lora"), FIXTURE, "a100-80gb", seq_len=2048, batch_size=4)
    assert p.recommendation["method"] == "lora" and p.recommendation["gpu_count"] == 1
    full = plan.plan(cfg("full"), FIXTURE, "a100-80gb", seq_len=2048, batch_size=4)
    assert full.recommendation["configured_gpu_count"] > 1


def test_bad_plan_input(tmp_path):
    with pytest.raises(plan.PlanError, match="unknown GPU type"):
        plan.plan(cfg(), FIXTURE, "gtx-480")
    bad = tmp_path / "config.json"
    bad.write_text('{"hidden_size": 8}')
    with pytest.raises(plan.PlanError, match="no 'model_type' key"):
        plan.plan(cfg(), bad, "l4")
    bad.write_text('{"model_type": "no-such-arch"}')
    with pytest.raises(plan.PlanError, match="not known to transformers"):
        plan.plan(cfg(), bad, "l4")
    with pytest.raises(Exception, match="'qkv' is not a linear layer"):
        plan.plan(cfg(lora={"target_modules": ["qkv"]}), FIXTURE, "l4")
