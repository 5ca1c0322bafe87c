"""Bad input to the eval step, each a clear KubetuneError: an empty or missing test split, a missing
tokenizer, an adapter trained on another base, and a gate threshold on a metric that is not computed."""

from __future__ import annotations

import shutil

import pytest
from eval_helpers import write_jsonl

from components.eval.data import EvalDataError
from components.eval.gate import GateError
from components.eval.models import ModelLoadError
from components.eval.step import run

CHAT = {"messages": [{"role": "user", "content": "Parties?"}, {"role": "assistant", "content": "{\"parties\":[]}"}]}


def lora_adapter(model_dir, out, tokenizer_from=None):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.save_pretrained(out)
    if tokenizer_from:
        AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(out)
    return out


def test_empty_test_split(make_config, demo, tmp_path):
    data = tmp_path / "data"
    write_jsonl(data / "test.jsonl", [])
    with pytest.raises(EvalDataError, match=r"test.jsonl: the test split is empty; eval needs held-out"):
        run(make_config(), demo.model_dir, demo.model_dir, data, tmp_path / "out")
    write_jsonl(data / "test.jsonl", [{"text": "just text"}, {"text": "more"}])
    with pytest.raises(EvalDataError, match=r"empty \(2 plain-text record\(s\), which have no prompt/answer"):
        run(make_config(), demo.model_dir, demo.model_dir, data, tmp_path / "out")
    (data / "test.jsonl").unlink()
    with pytest.raises(EvalDataError, match=r"no test.jsonl or test.parquet \(found: nothing\); expected the prepare"):
        run(make_config(), demo.model_dir, demo.model_dir, data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_tokenizer(make_config, demo, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(demo.model_dir, base)
    for p in base.glob("tokenizer*"):
        p.unlink()
    (base / "chat_template.jinja").unlink()
    adapter = lora_adapter(base, tmp_path / "adapter")
    data = write_jsonl(tmp_path / "data" / "test.jsonl", [CHAT]).parent
    with pytest.raises(ModelLoadError, match=r"no tokenizer in .*adapter nor in the base model .*base: expected "
                                             r"tokenizer.json"):
        run(make_config(), base, adapter, data, tmp_path / "out")


def test_adapter_for_another_base(make_config, demo, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other-base"
    LlamaForCausalLM(LlamaConfig(vocab_size=4096, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=32)).save_pretrained(other)
    adapter = lora_adapter(other, tmp_path / "adapter", tokenizer_from=demo.model_dir)
    data = write_jsonl(tmp_path / "data" / "test.jsonl", [CHAT]).parent
    with pytest.raises(ModelLoadError) as err:
        run(make_config(), demo.model_dir, adapter, data, tmp_path / "out", base_uri="s3://b/models/tiny")
    msg = str(err.value)
    assert "does not fit the base model s3://b/models/tiny (model_type llama, hidden_size 256" in msg
    assert "size mismatch" in msg and "torch.Size([4, 128])" in msg and f"trained on {other}" in msg


def test_gate_on_a_metric_not_computed_fails_before_loading_anything(make_config, tmp_path):
    cfg = make_config(metrics=["rouge_l", "exact_match"])
    with pytest.raises(GateError, match=r"primary_metric is 'json_field_f1', which is not computed: eval.metrics "
                                        r"is \[rouge_l, exact_match\]"):
        run(cfg, tmp_path / "no-base", tmp_path / "no-adapter", tmp_path / "no-data", tmp_path / "out")
