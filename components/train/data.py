"""The prepared dataset (the prepare step's output) -> datasets that trl's SFTTrainer masks itself.

Input: a directory with ``train.jsonl`` and ``test.jsonl`` (or ``.parquet``). Each record has
``messages`` (system/user/assistant turns) or, for plain-text records, ``text``; ``prompt``,
``completion``, ``source``, ``format`` and ``num_tokens`` ride along.

How the loss is masked (all by trl, nothing hand-rolled):

=====================  ==========================================================================
mode                   when / what trains
=====================  ==========================================================================
``assistant_only``     chat records, ``loss: completion_only``, a training-compatible chat template
                       (``{% generation %}`` markers, or one trl knows how to patch): ``messages``
                       with ``assistant_only_loss=True``, every assistant turn trains.
``last_turn``          chat records, template not training-compatible: conversational
                       prompt/completion (prompt = messages[:-1], completion = the last assistant
                       turn); trl's completion-only loss trains the last assistant turn.
``rendered``           chat records and no chat template at all: the prepared ``prompt`` and
                       ``completion`` strings; completion-only loss.
``full_sequence``      ``loss: full_sequence``: ``messages`` (or text) without masking.
``language_modeling``  plain-text records: every token trains.
=====================  ==========================================================================

Plain-text and chat records in one dataset are an error unless ``loss: full_sequence`` (then the
chat records are rendered to text with the chat template).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from components.common import prepared
from components.common.errors import KubetuneError

log = logging.getLogger(__name__)

ROLES = {"system", "user", "assistant"}
EXPECTED = ("records with 'messages' (a list of {role: system|user|assistant, content: str}, ending with "
            "an assistant turn) or 'text' (str), as the prepare step writes them")


class DatasetError(KubetuneError):
    """The prepared dataset is missing or does not have the expected schema."""


@dataclass
class TrainData:
    mode: str
    train: object  # datasets.Dataset
    test: object | None
    num_train: int
    num_test: int
    multi_turn: int = 0  # records with more than one assistant turn
    notes: list[str] = field(default_factory=list)


def _check(rec: dict, where: str) -> str:
    """'chat' or 'text'; raises naming the record and what was expected."""
    msgs = rec.get("messages")
    if msgs is not None:
        if not isinstance(msgs, list) or not msgs:
            raise DatasetError(f"{where}: 'messages' is {type(msgs).__name__ if msgs != [] else 'empty'}; "
                               f"expected {EXPECTED}")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
                raise DatasetError(f"{where}: messages[{i}] = {json.dumps(m)[:120]}; expected "
                                   "{role: system|user|assistant, content: str}")
        if msgs[-1]["role"] != "assistant":
            raise DatasetError(f"{where}: the last message has role {msgs[-1]['role']!r}; expected the "
                               "conversation to end with the assistant turn to train on")
        return "chat"
    if isinstance(rec.get("text"), str) and rec["text"]:
        return "text"
    raise DatasetError(f"{where}: has keys {sorted(rec)[:8]}; expected {EXPECTED}")


def load_split(dataset_dir: Path, split: str, required: bool) -> tuple[list[dict], list[str]]:
    if required:
        path = prepared.require_split(dataset_dir, split, error=DatasetError)
    elif (path := prepared.find_split(dataset_dir, split)) is None:
        return [], []
    records = prepared.read_records(path, error=DatasetError)
    if required and not records:
        raise DatasetError(f"{path}: no records; expected at least one training record")
    kinds = [_check(r, f"{path} record {i + 1}") for i, r in enumerate(records)]
    return records, kinds


def template_is_trainable(tokenizer) -> bool:
    """True when trl can mask assistant turns with this template ({% generation %} or a known patch)."""
    from trl.chat_template_utils import get_training_chat_template

    if not getattr(tokenizer, "chat_template", None):
        return False
    try:
        get_training_chat_template(tokenizer)
    except ValueError:
        return False
    return True


def choose_mode(kinds: list[str], loss: str, tokenizer, has_rendered: bool) -> str:
    chat, text = kinds.count("chat"), kinds.count("text")
    if chat and text and loss != "full_sequence":
        raise DatasetError(f"the dataset mixes {text} plain-text records and {chat} chat records; "
                           "train.loss completion_only has no completion to train on in plain text. Expected "
                           "one kind, or set train.loss: full_sequence to train on every token of both")
    if not chat:
        return "language_modeling"
    if loss == "full_sequence":
        return "full_sequence"
    if template_is_trainable(tokenizer):
        return "assistant_only"
    if getattr(tokenizer, "chat_template", None):
        return "last_turn"
    if has_rendered:
        return "rendered"
    raise DatasetError("chat records, but the tokenizer has no chat template and the records carry no "
                       "rendered 'prompt'/'completion'; expected a base model with a chat template, "
                       "model.chat_template, or the prepare step's rendered fields")


def _strip_bos(tokenizer):
    """Rendered text starts with the template's BOS; drop it when tokenizing adds one anyway (Llama 3,
    the demo tokenizer), or trl's plain-text tokenization would start with two."""
    bos = getattr(tokenizer, "bos_token", None)
    if not bos or tokenizer("x").input_ids[:1] != [tokenizer.bos_token_id]:
        return lambda s: s
    return lambda s: s[len(bos):] if s.startswith(bos) else s


def _convert(records: list[dict], kinds: list[str], mode: str, tokenizer) -> list[dict]:
    strip = _strip_bos(tokenizer) if mode in ("rendered", "full_sequence") else (lambda s: s)
    out = []
    for rec, kind in zip(records, kinds, strict=True):
        msgs = rec.get("messages")
        if mode == "language_modeling":
            out.append({"text": rec["text"]})
        elif mode == "full_sequence":
            if "text" in kinds:  # mixed: render chat records to text, so both are language modeling
                text = rec["text"] if kind == "text" else \
                    strip(tokenizer.apply_chat_template(msgs, tokenize=False))
                out.append({"text": text})
            else:
                out.append({"messages": msgs})
        elif mode == "assistant_only":
            out.append({"messages": msgs})
        elif mode == "last_turn":
            out.append({"prompt": msgs[:-1], "completion": msgs[-1:]})
        else:  # rendered
            if not isinstance(rec.get("prompt"), str) or not isinstance(rec.get("completion"), str):
                raise DatasetError(f"record {len(out) + 1}: no rendered 'prompt'/'completion' strings; "
                                   "expected the prepare step's output (the tokenizer has no chat template)")
            out.append({"prompt": strip(rec["prompt"]), "completion": rec["completion"]})
    return out


def validate(dataset_dir: Path) -> tuple[list[dict], list[str], list[dict], list[str]]:
    """Read and check both splits (cheap; done before the model is fetched)."""
    dataset_dir = Path(dataset_dir)
    train, train_kinds = load_split(dataset_dir, "train", required=True)
    test, test_kinds = load_split(dataset_dir, "test", required=False)
    return train, train_kinds, test, test_kinds


def build(dataset_dir: Path, loss: str, tokenizer, checked=None) -> TrainData:
    from datasets import Dataset

    train, train_kinds, test, test_kinds = checked or validate(dataset_dir)
    has_rendered = all(isinstance(r.get("prompt"), str) and isinstance(r.get("completion"), str)
                       for r in train if r.get("messages") is not None)
    mode = choose_mode(train_kinds + test_kinds, loss, tokenizer, has_rendered)
    multi = sum(1 for r in train if sum(m["role"] == "assistant" for m in r.get("messages") or []) > 1)
    notes = []
    if mode == "last_turn":
        notes.append("the chat template has no {% generation %} markers and trl has no patch for it, so "
                     "each record trains on its last assistant turn only (prompt/completion)")
        if multi:
            notes.append(f"{multi} of {len(train)} training records have several assistant turns: only the "
                         "last turn of each trains; add {% generation %} markers to the chat template "
                         "(model.chat_template) to train on every assistant turn")
    elif mode == "rendered":
        notes.append("the tokenizer has no chat template: training on the prepared prompt/completion strings")
    elif mode == "language_modeling" and loss == "completion_only":
        notes.append("plain-text records have no completion: every token trains (language modeling)")
    for n in notes:
        log.warning("%s", n)
    train_ds = Dataset.from_list(_convert(train, train_kinds, mode, tokenizer))
    test_ds = Dataset.from_list(_convert(test, test_kinds, mode, tokenizer)) if test else None
    if test_ds is None:
        log.warning("%s: no test split: no evaluation during training", dataset_dir)
    return TrainData(mode=mode, train=train_ds, test=test_ds, num_train=len(train), num_test=len(test),
                     multi_turn=multi, notes=notes)
