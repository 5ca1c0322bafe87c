"""LoRA, QLoRA (4-bit NF4 on CPU) and full fine-tuning each train on the demo data: the eval loss
ends below where it started, and the outputs are complete."""

from __future__ import annotations

import json
import warnings

import pytest

from components.train.step import run

# (method, learning rate): full fine-tuning moves every weight, so it wants a smaller step
METHODS = [("lora", 3e-3), ("qlora", 3e-3), ("full", 1e-3)]


@pytest.mark.parametrize(("method", "lr"), METHODS)
def test_method_trains_and_eval_loss_drops(method, lr, make_config, prepared, tmp_path):
    cfg = make_config(method=method, lr=lr)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(cfg, prepared, tmp_path / "out", checkpoint_uri=None, run_id=f"t-{method}", progress=False)
    # bitsandbytes on AVX512-BF16 CPUs would otherwise backprop through gemv_4bit after the first eval
    assert not [w for w in caught if "autograd kernel was not registered" in str(w.message)]
    m = result.metrics
    assert m["initial_eval_loss_step"] == 0
    assert m["final_eval_loss"] < m["initial_eval_loss"], m
    assert m["global_step"] == 8 and m["method"] == method and m["mode"] == "assistant_only"

    out = result.output_dir
    names = {p.name for p in out.iterdir()}
    weights = {"adapter_model.safetensors", "adapter_config.json"} if method != "full" else {"model.safetensors"}
    assert weights | {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "train_metrics.json",
                      "trainer_log.jsonl", "loss_curve.png"} <= names
    assert not {n for n in names if n.endswith((".bin", ".pt", ".pth"))}, "pickles must not be published"
    assert "{% generation %}" in (out / "chat_template.jinja").read_text()
    assert json.loads((out / "tokenizer_config.json").read_text())["pad_token"] == "<|pad|>"
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [h["step"] for h in log if "loss" in h][:2] == [1, 2]
    assert sum("eval_loss" in h for h in log) >= 2

    saved = json.loads((out / "train_metrics.json").read_text())
    assert saved["final_eval_loss"] == m["final_eval_loss"]
    assert saved["tokens_seen"] > 0 and saved["tokens_per_second"] > 0 and saved["peak_memory_bytes"] > 0
    assert 0 < saved["trainable_params"] <= saved["total_params"]
    if method == "full":
        assert saved["trainable_params"] == saved["total_params"]
    else:
        assert saved["trainable_percent"] < 10


def test_early_stopping_on_eval_loss(make_config, prepared, tmp_path):
    """With a learning rate too small to change an fp32 logit, the eval loss never improves, so training
    stops after `patience` evaluations instead of running max_steps."""
    cfg = make_config(lr=1e-30, max_steps=40, eval_steps=2, logging_steps=2, early_stopping_patience=1)
    result = run(cfg, prepared, tmp_path / "out", checkpoint_uri=None, run_id="es", progress=False)
    m = result.metrics
    assert m["global_step"] <= 4, m
    assert m["final_eval_loss"] == m["initial_eval_loss"]
