"""Which tokens carry loss: the prompt never does (labels -100), the completion / assistant turns do,
for chat records and prompt/completion records, in every masking mode; and padding is masked by
position, so an eos that doubles as pad still trains.

The expected spans come from the prepare step's own rendering (`prompt`, `completion`), not from
the code under test.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from components.train import model as train_model
from components.train.step import build_trainer


def records(prepared):
    return [json.loads(line) for line in (prepared / "train.jsonl").read_text().splitlines()]


def copy_model(demo, dest, *, drop_pad=False, template=None):
    """A copy of the demo model directory with its tokenizer config edited."""
    shutil.copytree(demo.model_dir, dest)
    tc = json.loads((dest / "tokenizer_config.json").read_text())
    if drop_pad:
        tc.pop("pad_token", None)
    tc.pop("chat_template", None)
    (dest / "tokenizer_config.json").write_text(json.dumps(tc))
    if template is None:
        (dest / "chat_template.jinja").unlink()
    else:
        (dest / "chat_template.jinja").write_text(template)
    return dest


def unmasked(example):
    return [t for t, lab in zip(example["input_ids"], example["labels"], strict=True) if lab != -100]


def assistant_turns(rec, eot="<|im_end|>"):
    return "".join(m["content"] + eot for m in rec["messages"] if m["role"] == "assistant")


def check_prompt_masked(tok, rec, ex, strip_bos=False):
    prompt_text = rec["prompt"][len(tok.bos_token):] if strip_bos else rec["prompt"]
    prompt_ids = tok(prompt_text, add_special_tokens=strip_bos).input_ids
    n = len(prompt_ids)
    assert ex["input_ids"][:n] == prompt_ids, "the sequence does not start with the rendered prompt"
    assert set(ex["labels"][:n]) == {-100}, "a prompt token carries loss"
    assert ex["labels"][n] != -100, "the first completion token carries no loss"


def test_chat_template_with_generation_markers_trains_every_assistant_turn(demo, prepared, make_config,
                                                                            tmp_path):
    built = build_trainer(make_config(), prepared, tmp_path / "w", run_id="labels")
    assert built.data.mode == "assistant_only"
    tok, ds = built.tokenizer, built.trainer.train_dataset
    recs = records(prepared)
    assert len(ds) == len(recs)
    kinds = {"single": 0, "multi": 0, "prompt_completion": 0}
    for rec, ex in zip(recs, ds, strict=True):
        n_asst = sum(m["role"] == "assistant" for m in rec["messages"])
        # every assistant turn, with its end-of-turn token, and nothing else carries loss
        assert tok.decode(unmasked(ex)) == assistant_turns(rec)
        if n_asst == 1:
            assert tok.decode(unmasked(ex)) == rec["completion"]
            check_prompt_masked(tok, rec, ex)
        kinds["multi" if n_asst > 1 else "single"] += 1
        kinds["prompt_completion"] += rec["format"] == "prompt_completion"
        assert ex["labels"][-1] == -100  # the "\n" the template writes after <|im_end|>
    assert all(kinds.values()), f"the fixture lacks a kind of record: {kinds}"

    # the collator pads input_ids with pad, labels with -100, and keeps each example's labels
    batch = built.trainer.data_collator([ds[i] for i in range(4)])
    for row, ex in enumerate(ds.select(range(4))):
        n = len(ex["input_ids"])
        assert batch["labels"][row, :n].tolist() == ex["labels"]
        assert set(batch["labels"][row, n:].tolist()) <= {-100}
        assert set(batch["input_ids"][row, n:].tolist()) <= {tok.pad_token_id}
        assert batch["attention_mask"][row, :n].all() and not batch["attention_mask"][row, n:].any()


def test_template_without_markers_trains_the_last_turn_as_prompt_completion(demo, prepared, make_config,
                                                                             tmp_path, caplog):
    template = (demo.model_dir / "chat_template.jinja").read_text()
    plain = template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    tpl = tmp_path / "plain.jinja"
    tpl.write_text(plain)
    with caplog.at_level(logging.WARNING):
        built = build_trainer(make_config(model={"chat_template": str(tpl)}), prepared, tmp_path / "w",
                              run_id="labels")
    assert built.data.mode == "last_turn"
    assert built.data.multi_turn > 0 and "only the last turn of each trains" in caplog.text
    tok, ds = built.tokenizer, built.trainer.train_dataset
    for rec, ex in zip(records(prepared), ds, strict=True):
        check_prompt_masked(tok, rec, ex)  # earlier assistant turns are prompt: no loss
        text = tok.decode(unmasked(ex))
        # the completion, and the newline the template writes after it (trl keeps the full rendering)
        assert text.startswith(rec["completion"]) and not text[len(rec["completion"]):].strip()


def test_no_chat_template_trains_the_rendered_completion(demo, prepared, make_config, tmp_path, caplog):
    base = copy_model(demo, tmp_path / "model", template=None)
    with caplog.at_level(logging.WARNING):
        built = build_trainer(make_config(model={"base": str(base)}), prepared, tmp_path / "w", run_id="x")
    assert built.data.mode == "rendered"
    tok, ds = built.tokenizer, built.trainer.train_dataset
    for rec, ex in zip(records(prepared), ds, strict=True):
        assert ex["input_ids"][:2].count(tok.bos_token_id) == 1, "two BOS tokens"
        check_prompt_masked(tok, rec, ex, strip_bos=True)
        assert tok.decode(unmasked(ex)) == rec["completion"]


def test_missing_pad_picks_an_existing_special_token(demo, prepared, make_config, tmp_path, caplog):
    base = copy_model(demo, tmp_path / "model", drop_pad=True,
                      template=(demo.model_dir / "chat_template.jinja").read_text())
    with caplog.at_level(logging.INFO, logger="components.train.model"):
        built = build_trainer(make_config(model={"base": str(base)}), prepared, tmp_path / "w", run_id="x")
    assert built.tokenizer.pad_token == "<|pad|>" != built.tokenizer.eos_token
    assert "an existing special token" in caplog.text


def test_pad_equal_to_eos_still_trains_the_eos(demo, prepared, make_config, tmp_path, caplog, monkeypatch):
    """The claim in the PAD TOKEN = EOS warning: trl masks padding by position, not by token id."""
    monkeypatch.setattr(train_model, "PAD_CANDIDATES", ())
    base = copy_model(demo, tmp_path / "model", drop_pad=True,
                      template=(demo.model_dir / "chat_template.jinja").read_text())
    with caplog.at_level(logging.WARNING):
        built = build_trainer(make_config(model={"base": str(base)}), prepared, tmp_path / "w", run_id="x")
    tok = built.tokenizer
    assert tok.pad_token_id == tok.eos_token_id
    assert "PAD TOKEN = EOS" in caplog.text
    ds = built.trainer.train_dataset
    rows = sorted(range(8), key=lambda i: len(ds[i]["input_ids"]))[:1] + \
        sorted(range(8), key=lambda i: -len(ds[i]["input_ids"]))[:1]
    batch = built.trainer.data_collator([ds[i] for i in rows])
    short = ds[rows[0]]
    n = len(short["input_ids"])
    assert n < batch["input_ids"].shape[1], "the batch needs padding for this test"
    labels, ids = batch["labels"][0].tolist(), batch["input_ids"][0].tolist()
    assert ids[n:] == [tok.eos_token_id] * (len(ids) - n) and set(labels[n:]) == {-100}
    turns = sum(m["role"] == "assistant" for m in json.loads(
        (prepared / "train.jsonl").read_text().splitlines()[rows[0]])["messages"])
    assert labels[:n].count(tok.eos_token_id) == turns >= 1, "a real end-of-turn eos lost its label"


def test_padding_free_batches_keep_sequences_apart(prepared, make_config, tmp_path):
    """padding_free (and bfd packing, which implies it) flatten a batch into one row; on sdpa,
    transformers must turn the position_ids into a block-diagonal mask, or the loss would differ
    from the padded batch's."""
    import torch

    padded = build_trainer(make_config(), prepared, tmp_path / "a", run_id="x").trainer
    flat = build_trainer(make_config(packing=True), prepared, tmp_path / "b", run_id="x").trainer
    assert "seq_lengths" in flat.train_dataset.column_names  # packed rows
    assert len(flat.train_dataset) < len(padded.train_dataset)
    flat.model.load_state_dict(padded.model.state_dict())
    examples = [{k: padded.train_dataset[i][k] for k in ("input_ids", "labels")} for i in range(3)]
    losses = []
    for trainer in (padded, flat):
        trainer.model.eval()
        inputs = trainer._prepare_inputs(trainer.data_collator(examples))
        with torch.no_grad():
            losses.append(trainer.compute_loss(trainer.model, inputs).item())
    assert "attention_mask" not in inputs and inputs["input_ids"].shape[0] == 1
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_full_sequence_trains_every_token(prepared, make_config, tmp_path):
    built = build_trainer(make_config(loss="full_sequence"), prepared, tmp_path / "w", run_id="x")
    assert built.data.mode == "full_sequence"
    for ex in built.trainer.train_dataset.select(range(8)):
        assert ex["labels"] == ex["input_ids"]


def test_plain_text_records_are_language_modeling(demo, make_config, tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    texts = [json.loads(line)["text"] for line in demo.text.read_text().splitlines()[:16]]
    (ds / "train.jsonl").write_text("".join(json.dumps({"text": t, "format": "text"}) + "\n" for t in texts))
    built = build_trainer(make_config(max_steps=1), ds, tmp_path / "w", run_id="x")
    assert built.data.mode == "language_modeling" and built.data.test is None
    tok = built.tokenizer
    for text, ex in zip(texts, built.trainer.train_dataset, strict=True):
        assert ex["labels"] == ex["input_ids"]
        assert ex["input_ids"][-1] == tok.eos_token_id  # trl appends eos so the model learns to stop
        assert tok.decode(ex["input_ids"], skip_special_tokens=True) == text
