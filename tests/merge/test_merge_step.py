"""The merge step on the tiny demo model: merged logits equal adapter-on-base logits (checked here
independently of the step's own check), sharded safetensors with tokenizer, chat template and
generation config, a QLoRA adapter onto a non-quantized base, and every bad input's message."""

from __future__ import annotations

import json

import pytest
import torch
from merge_helpers import copy_model, save_adapter

from components.merge import step
from components.merge.step import MergeError


def logits_of(model, ids):
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def adapter_logits(base_dir, adapter_dir, ids, dtype=torch.float32):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
    return logits_of(PeftModel.from_pretrained(base, adapter_dir).eval(), ids)


def test_merge_fp32_matches_adapter_logits_and_writes_a_complete_model(make_config, demo_model, adapter, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    result = step.run(make_config(), demo_model, adapter, out)
    report = json.loads((out / "merge_report.json").read_text())
    assert report == json.loads(json.dumps(result.report, default=list))
    v = report["verify"]
    assert report["mode"] == "lora_merge" and report["dtype"] == "float32"
    assert v["passed"] and v["prompts"] == 3 and v["tokens"] > 30
    assert 0 <= v["max_abs_diff"] <= 1e-4 and v["tolerance"] == pytest.approx(1e-5 * max(1.0, v["max_abs_logit"]))
    assert v["argmax_agreement"] == 1.0 and report["max_abs_logit_diff"] == v["max_abs_diff"]

    names = {p.name for p in out.iterdir()}
    assert len(report["shards"]) > 1 and "model.safetensors.index.json" in names  # 18 MB at 4MB shards
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja"} <= names
    assert not any(n.endswith((".bin", ".pt")) or n.startswith("adapter_") for n in names)
    assert "{% generation %}" in (out / "chat_template.jinja").read_text()
    gen = json.loads((out / "generation_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(out)
    assert gen["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>") and tok.pad_token == "<|pad|>"

    # Independently of the step's check: merged == adapter on base, and != the base itself.
    ids = step.verify_inputs(tok, 1)[0]
    merged = logits_of(AutoModelForCausalLM.from_pretrained(out).eval(), ids)
    expected = adapter_logits(demo_model, adapter, ids)
    base = logits_of(AutoModelForCausalLM.from_pretrained(demo_model).eval(), ids)
    assert (merged - expected).abs().max().item() < 1e-4
    assert (merged - base).abs().max().item() > 1e-2, "the adapter must change the model"


def test_merge_bf16_within_its_tolerance(make_config, demo_model, adapter, tmp_path):
    out = tmp_path / "merged-bf16"
    report = step.run(make_config(dtype="bfloat16", max_shard_size="50MB"), demo_model, adapter, out).report
    v = report["verify"]
    assert v["passed"] and v["max_abs_diff"] <= v["tolerance"]
    assert v["tolerance"] == pytest.approx(2 ** -5 * max(1.0, v["max_abs_logit"]))
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert report["shards"] == ["model.safetensors"]


def test_qlora_adapter_merges_onto_a_non_quantized_base(make_config, demo_model, tmp_path):
    """A LoRA made on the 4-bit NF4 base (bitsandbytes on CPU, prepare_model_for_kbit_training, as the
    train step's qlora does), merged into the float32 base: loaded unquantized, logits must match."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    base4 = AutoModelForCausalLM.from_pretrained(demo_model, quantization_config=quant, device_map="cpu")
    base4 = prepare_model_for_kbit_training(base4, use_gradient_checkpointing=False)
    adapter_dir = save_adapter(base4, tmp_path / "qlora-adapter", tokenizer_from=demo_model)
    assert any(type(m).__name__ == "Linear4bit" for m in base4.modules())  # it really was 4-bit

    cfg = make_config()
    cfg.train.method = "qlora"
    out = tmp_path / "merged"
    report = step.run(cfg, demo_model, adapter_dir, out).report
    assert report["verify"]["passed"] and report["verify"]["max_abs_diff"] <= 1e-4
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    ids = step.verify_inputs(AutoTokenizer.from_pretrained(out), 1)[0]
    merged = logits_of(AutoModelForCausalLM.from_pretrained(out).eval(), ids)
    assert (merged - adapter_logits(demo_model, adapter_dir, ids)).abs().max().item() < 1e-4


def test_pre_quantized_base_is_refused(make_config, demo_model, adapter, tmp_path):
    base = copy_model(demo_model, tmp_path / "base-4bit")
    config = json.loads((base / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(config))
    with pytest.raises(MergeError, match=r"pre-quantized checkpoint \(bitsandbytes, 4-bit\).*original bf16/fp16"):
        step.run(make_config(), base, adapter, tmp_path / "out")


def test_adapter_for_another_base_is_a_clear_error(make_config, demo_model, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other-base"  # same vocabulary, hidden size 128 instead of 256
    LlamaForCausalLM(LlamaConfig(vocab_size=4096, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=32)).save_pretrained(other)
    from transformers import AutoModelForCausalLM

    adapter_dir = save_adapter(AutoModelForCausalLM.from_pretrained(other), tmp_path / "other-adapter",
                               tokenizer_from=demo_model)
    with pytest.raises(MergeError) as err:
        step.run(make_config(), demo_model, adapter_dir, tmp_path / "out")
    msg = str(err.value)
    assert "does not fit the base model" in msg and "hidden_size 256" in msg
    assert "size mismatch" in msg and "torch.Size([8, 128])" in msg
    assert f"trained on {other}" in msg and "--base" in msg


def test_missing_tokenizer(make_config, demo_model, tmp_path):
    from transformers import AutoModelForCausalLM

    base = copy_model(demo_model, tmp_path / "base-no-tok", tokenizer=False)
    adapter_dir = save_adapter(AutoModelForCausalLM.from_pretrained(base), tmp_path / "adapter-no-tok")
    with pytest.raises(MergeError, match=r"no tokenizer in the adapter .* nor in the base model"):
        step.run(make_config(), base, adapter_dir, tmp_path / "out")


def test_a_wrong_merge_fails_the_logits_check(make_config, demo_model, adapter, tmp_path, monkeypatch):
    real = step._merge

    def broken(peft_model):  # e.g. a merge that forgets the LoRA scaling on one module
        merged = real(peft_model)
        with torch.no_grad():
            merged.model.layers[0].mlp.down_proj.weight.add_(0.05)
        return merged

    monkeypatch.setattr(step, "_merge", broken)
    with pytest.raises(MergeError, match=r"does not match adapter-on-base: max \|logit difference\| .* exceeds "
                                         r"the float32 tolerance"):
        step.run(make_config(), demo_model, adapter, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "merge_report.json").read_text())
    assert report["verify"]["passed"] is False and report["verify"]["max_abs_diff"] > 1e-3


def test_full_weights_are_copied_through(make_config, demo_model, tmp_path):
    tuned = copy_model(demo_model, tmp_path / "full-weights")
    (tuned / "train_metrics.json").write_text("{}")
    out = tmp_path / "out"
    report = step.run(make_config(), demo_model, tuned, out).report
    assert report["mode"] == "copy_through" and "train.method full" in report["reason"]
    assert (out / "model.safetensors").read_bytes() == (tuned / "model.safetensors").read_bytes()
    assert not (out / "train_metrics.json").exists() and (out / "chat_template.jinja").is_file()
