"""Chat-template parity: the prompt token ids vLLM builds for a conversation (its /tokenize endpoint
with `messages`) equal the ids the train step built for the same conversation. A mismatch between the
training and serving templates is a known source of silent quality loss.

The training side is the train step's own SFTTrainer (`build_trainer`, as `run` builds it) on the
session's prepared dataset: its tokenized train split. trl turns the assistant mask of the
{% generation %} template into `labels` (-100 where no loss is computed), so the first label that is
not -100 is where the completion starts. The serving side is each live server: the merged model's
tokenizer, and the base model's (served with the LoRA adapter)."""

from __future__ import annotations

import json

import pytest
from serving_helpers import MODEL

RECORDS = 4


@pytest.fixture(scope="module")
def train_ids(trained, tmp_path_factory, torch_threads):
    """(messages, input_ids, labels) of the first training records, as the train step built them."""
    from components.train.step import build_trainer

    with torch_threads(1):
        built = build_trainer(trained.cfg, trained.prepared, tmp_path_factory.mktemp("parity-work"),
                              run_id="parity")
    assert built.data.mode == "assistant_only"
    ds = built.trainer.train_dataset
    records = [json.loads(line) for line in (trained.prepared / "train.jsonl").read_text().splitlines()]
    assert len(ds) == len(records)
    assert {"input_ids", "labels"} <= set(ds.column_names), ds.column_names
    return [(records[i]["messages"], ds[i]["input_ids"], ds[i]["labels"]) for i in range(RECORDS)]


@pytest.mark.parametrize("name", ["merged", "lora"])
def test_prompt_ids_equal_the_training_ids(name, servers, train_ids):
    s = servers[name]
    for messages, ids, labels in train_ids:
        assert messages[-1]["role"] == "assistant" and labels[0] == -100
        start = next(i for i, label in enumerate(labels) if label != -100)  # the first token trained on
        trained_on = [i for i, label in enumerate(labels) if label != -100]
        # one block: the answer and its <|im_end|> (the template's trailing newline is outside {% generation %})
        assert trained_on == list(range(start, trained_on[-1] + 1)) and ids[trained_on[-1]] == 1
        assert [labels[i] for i in trained_on] == ids[start:trained_on[-1] + 1]
        prompt = s.post("/tokenize", {"model": MODEL, "messages": messages[:-1], "add_generation_prompt": True})
        assert prompt["tokens"] == ids[:start]
        # the whole conversation, the assistant's answer included, tokenizes the same way too
        whole = s.post("/tokenize", {"model": MODEL, "messages": messages, "add_generation_prompt": False})
        assert whole["tokens"] == ids


def test_gguf_prompt_ids_equal_the_training_ids(gguf_server, train_ids):
    """llama-server renders the chat template stored in the GGUF file (--jinja) and tokenizes with the GGUF's
    vocabulary: /apply-template, then /tokenize as a chat completion tokenizes its prompt (special tokens parsed,
    and the GGUF's BOS added), gives the train step's ids."""
    for messages, ids, labels in train_ids:
        start = next(i for i, label in enumerate(labels) if label != -100)
        text = gguf_server.post("/apply-template", {"messages": messages[:-1]})["prompt"]
        prompt = gguf_server.post("/tokenize", {"content": text, "add_special": True, "parse_special": True})
        assert prompt["tokens"] == ids[:start], text
        # and a chat completion of these messages is given exactly that many prompt tokens
        usage = gguf_server.post("/v1/chat/completions", {"model": MODEL, "messages": messages[:-1], "max_tokens": 1,
                                                          "temperature": 0})["usage"]
        assert usage["prompt_tokens"] == start
