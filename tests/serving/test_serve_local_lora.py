"""LoRA end to end: serve-local with the chart values `model.source: base` and `lora.adapters` serves
a LoRA release's base model and its adapter (the `lora_trained` fixture) through `--enable-lora
--lora-modules` (vLLM CPU build).
The Prometheus side of it is in test_serving_prometheus.py (job vllm-lora)."""

from __future__ import annotations

from serving_helpers import LORA_NAME, MODEL, TRAINED_PREFIX, conversation


def test_models_lists_base_and_adapter(servers):
    s = servers["lora"]
    models = {m["id"]: m for m in s.get("/v1/models")["data"]}
    assert set(models) == {MODEL, LORA_NAME}
    assert models[MODEL]["root"] == str(s.dest / "base")
    assert models[LORA_NAME]["parent"] == MODEL and models[LORA_NAME]["root"] == str(s.dest / "adapter")


def test_adapter_answers_in_the_trained_format_and_the_base_does_not(servers, trained):
    s = servers["lora"]
    messages = conversation(trained.prepared, 1)[:-1]

    def answer(model: str) -> str:
        r = s.post("/v1/chat/completions", {"model": model, "messages": messages, "max_tokens": 48,
                                             "temperature": 0})
        assert r["model"] == model
        return r["choices"][0]["message"]["content"]

    tuned, base = answer(LORA_NAME), answer(MODEL)
    assert tuned.startswith(TRAINED_PREFIX), tuned
    # the demo base is untrained (random weights): only the adapter makes the difference
    assert not base.startswith('{"parties"'), base
    # the adapter on the base answers in the same format as the demo's merged model
    merged = servers["merged"].post("/v1/chat/completions", {"model": MODEL, "messages": messages,
                                                             "max_tokens": 48, "temperature": 0})
    assert merged["choices"][0]["message"]["content"][:len(TRAINED_PREFIX)] == tuned[:len(TRAINED_PREFIX)]
