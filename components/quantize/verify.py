"""Checks of each GGUF file: metadata, tokenizer and chat-template parity, perplexity, top-1 agreement
and greedy generation, measured with llama.cpp's own kernels (llama_cpp.Llama, logits_all=True), and
the task metrics of those generations against the test split's answers.

Every model (each GGUF and the HF merged model through transformers) is scored on the very same
token ids: the evaluation texts tokenized once by the HF tokenizer. Perplexity counts every
predicted token of each record (the first token has no context), records cut to `max_tokens`.
Top-1 agreement is the share of those positions where a file's most likely next token equals the
reference's (the unquantized GGUF, and the HF model). The task metrics (components.common.task_metrics)
score each model's greedy answers to the first conversations of the test split against their last
assistant turn: json_valid and json_field_f1 when most of those answers are JSON documents, else
rouge_l and fact_recall.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components.common import prepared
from components.common.task_metrics import (
    FREE_TEXT_METRICS,
    JSON_METRICS,
    MetricTotals,
    is_json_task,
    json_reference,
    score_pair,
)
from components.quantize.errors import QuantizeError

# Tokenizer stress text (whitespace runs, digits, contractions, punctuation, non-Latin scripts).
STRESS_TEXT = ("\n \n\n \t \t\t \t\n  \n   x  y   z\n3 33 333 3333 3.3 3..3 I've been 'told he's there, "
               "'RE you sure? ------======= !!!??? нещо на Български 我想在apple工作 🚀 (emoji) ✅ "
               "{\"a\": [1, 2.5, \"x\"]}")
DEFAULT_CONVERSATION = [
    {"role": "system", "content": "You extract the parties and the effective date. Answer with JSON only."},
    {"role": "user", "content": "This Agreement is made by Acme Corp., a Delaware corporation, and Beta LLC, "
                                "effective March 3, 2024."},
    {"role": "assistant", "content": '{"parties": ["Acme Corp.", "Beta LLC"], "date": "2024-03-03"}'},
]


@dataclass
class EvalSet:
    source: str
    token_ids: list[list[int]]  # one list per record, cut to max_tokens
    texts: list[str]  # plain texts (message contents, prompts) for tokenizer parity
    conversation: list[dict]  # rendered for chat-template parity
    prompts: list[list[dict]]  # conversations ending in a user turn, for greedy generation
    references: list[str]  # each prompt's expected answer; empty when the prompts are the default one

    @property
    def scored_tokens(self) -> int:
        return sum(max(0, len(ids) - 1) for ids in self.token_ids)


def eval_records(path: Path) -> Iterator[dict]:
    """Records of a JSONL/Parquet file, or of the test split in a prepared dataset directory, streamed."""
    path = Path(path)
    if path.is_dir():
        path = prepared.require_split(path, "test", error=QuantizeError)
    for _, record in prepared.iter_records(path, error=QuantizeError):
        yield record


def _content(message: dict) -> str:
    c = message.get("content")
    return c if isinstance(c, str) else "".join(p.get("text", "") for p in c or [])


def build_eval_set(tokenizer, path: Path, *, max_records: int, max_tokens: int,
                   n_prompts: int = 3) -> EvalSet:
    """The first `max_records` usable records of `path`, tokenized as training saw them: a rendered
    prompt + completion as is (it already holds the template's special tokens), `messages` through
    the chat template, plain `text` with the tokenizer's special tokens. And the first `n_prompts`
    conversations that end in an assistant turn (read on past `max_records` when those hold fewer):
    what every model answers greedily, that turn being the reference answer."""
    ids, texts, answered = [], [], []
    for rec in eval_records(path):
        scoring, prompting = len(ids) < max_records, len(answered) < n_prompts
        if not (scoring or prompting):
            break
        messages = rec.get("messages") or None
        if prompting and messages and messages[-1].get("role") == "assistant":
            answered.append(messages)
        if not scoring:
            continue
        if isinstance(rec.get("prompt"), str) and isinstance(rec.get("completion"), str):
            seq = tokenizer(rec["prompt"] + rec["completion"], add_special_tokens=False)["input_ids"]
            texts.append(rec["completion"])
        elif messages:
            rendered = tokenizer.apply_chat_template(messages, tokenize=False)
            seq = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        elif isinstance(rec.get("text"), str):
            seq = tokenizer(rec["text"])["input_ids"]
            texts.append(rec["text"])
        else:
            continue
        if messages:
            texts.extend(_content(m) for m in messages)
        if len(seq) >= 2:
            ids.append(list(seq[:max_tokens]))
    if not ids:
        raise QuantizeError(f"{path}: no record with prompt/completion, messages or text to measure "
                            "perplexity on")
    conversation = answered[0] if answered else DEFAULT_CONVERSATION
    prompts = [c[:-1] for c in answered] or [DEFAULT_CONVERSATION[:-1]]
    references = [_content(c[-1]) for c in answered]
    return EvalSet(source=str(path), token_ids=ids, texts=[STRESS_TEXT, *texts[:200]],
                   conversation=conversation, prompts=prompts, references=references)


# ---- scoring --------------------------------------------------------------------------------------
@dataclass
class Scores:
    nll: float = 0.0
    count: int = 0
    argmax: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, logits: np.ndarray, ids: list[int]) -> None:
        logits = np.asarray(logits[: len(ids) - 1], dtype=np.float32)  # float32: 128k vocabularies
        top = logits.max(axis=1, keepdims=True)
        logz = np.log(np.exp(logits - top).sum(axis=1, dtype=np.float64)) + top[:, 0]
        target = np.asarray(ids[1:])
        self.nll += float((logz - logits[np.arange(len(target)), target]).sum(dtype=np.float64))
        self.count += len(target)
        self.argmax.append(logits.argmax(axis=1).astype(np.int32))

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.count)

    def agreement(self, other: Scores) -> float:
        same = sum(int((a == b).sum()) for a, b in zip(self.argmax, other.argmax, strict=True))
        return same / sum(len(a) for a in self.argmax)


def score_llama(llm, eval_set: EvalSet) -> Scores:
    import time

    started, scores = time.monotonic(), Scores()
    for ids in eval_set.token_ids:
        llm.reset()
        llm.eval(ids)
        scores.add(llm.scores[: len(ids)], ids)
    scores.seconds = time.monotonic() - started
    return scores


def score_hf(model, eval_set: EvalSet) -> Scores:
    import time

    import torch

    started, scores = time.monotonic(), Scores()
    with torch.inference_mode():
        for ids in eval_set.token_ids:
            logits = model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
            scores.add(logits, ids)
    scores.seconds = time.monotonic() - started
    return scores


def ppl_delta_pct(ppl: float, reference: float) -> float:
    return (ppl - reference) / reference * 100.0


# ---- parity and generation --------------------------------------------------------------------------
def _hf_ids(tokenizer, messages: list[dict], generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt,
                                        return_dict=True)
    return list(out["input_ids"])


def render_gguf_template(info, messages: list[dict], generation_prompt: bool) -> str:
    """The GGUF's embedded template rendered as llama-cpp-python renders it (jinja2 with the same
    settings and extensions as transformers), with the file's own bos/eos token texts."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template=info.chat_template,
                                    eos_token=info.token(info.eos_token_id) or "",
                                    bos_token=info.token(info.bos_token_id) or "",
                                    add_generation_prompt=generation_prompt)
    return formatter(messages=messages).prompt


def template_parity(llm, info, tokenizer, conversation: list[dict]) -> dict:
    """Token ids of the GGUF's template rendering (tokenized by llama.cpp) vs. the training template's
    (rendered and tokenized by transformers), for a whole conversation and for a generation prompt."""
    out: dict = {"template_equal": info.chat_template == tokenizer.chat_template, "cases": {}}
    if info.chat_template is None:
        return {**out, "ok": False, "error": "no tokenizer.chat_template in the GGUF"}
    cases = {"conversation": (conversation, False), "generation_prompt": (conversation[:-1], True)}
    for name, (messages, gen) in cases.items():
        expected = _hf_ids(tokenizer, messages, gen)
        got = llm.tokenize(render_gguf_template(info, messages, gen).encode(), add_bos=False, special=True)
        first = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                     None if len(got) == len(expected) else min(len(got), len(expected)))
        out["cases"][name] = {"tokens": len(expected), "equal": got == expected, "first_difference": first}
    out["ok"] = all(c["equal"] for c in out["cases"].values())
    return out


def tokenizer_parity(llm, tokenizer, texts: list[str]) -> dict:
    """llama.cpp's tokenizer (from the GGUF) vs. the HF tokenizer on plain texts: proves the
    pre-tokenizer registration. `texts[0]` is the stress text, reported apart from the data."""
    mismatches = []
    for i, text in enumerate(texts):
        # special=True: HF recognizes special tokens written in the text (a prepared completion ends
        # with "<|im_end|>"), so llama.cpp must parse them too, or the two differ on every such text.
        got = llm.tokenize(text.encode(), add_bos=False, special=True)
        expected = tokenizer(text, add_special_tokens=False)["input_ids"]
        if got != expected:
            mismatches.append(i)
    data = [i for i in mismatches if i > 0]
    return {"texts": len(texts) - 1, "mismatches": len(data), "stress_text_equal": 0 not in mismatches,
            "first_mismatch": texts[data[0]][:120] if data else None, "ok": not data}


@dataclass
class Generation:
    ids: list[int]  # the new tokens, up to (not including) the end of turn
    text: str  # decoded with special tokens shown
    answer: str  # decoded without special tokens, stripped: what the task metrics score (as eval does)
    stopped: bool  # ended at an end-of-turn token (False: cut at max_new_tokens)


def generate_llama(llm, info, prompts: list[list[dict]], max_new_tokens: int) -> list[Generation]:
    """Greedy continuations by llama.cpp of each chat prompt, rendered with the GGUF's own template
    (as llama-cpp-python's chat completion renders it) and tokenized by llama.cpp."""
    import llama_cpp

    out = []
    for messages in prompts:
        ids = llm.tokenize(render_gguf_template(info, messages, True).encode(), add_bos=False, special=True)
        new: list[int] = []
        stopped = False
        for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok):
                stopped = True
                break
            if len(new) >= max_new_tokens:
                break
            new.append(tok)
        text = llm.detokenize(new, special=True).decode("utf-8", errors="replace")
        answer = llm.detokenize(new, special=False).decode("utf-8", errors="replace").strip()
        out.append(Generation(new, text, answer, stopped))
    return out


def generate_hf(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int) -> list[Generation]:
    import torch

    out = []
    with torch.inference_mode():
        for messages in prompts:
            ids = _hf_ids(tokenizer, messages, True)
            mask = torch.ones(1, len(ids), dtype=torch.long)
            gen = model.generate(torch.tensor([ids]), attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
            new = gen[0, len(ids):].tolist()
            stopped = tokenizer.eos_token_id in new
            if stopped:
                new = new[: new.index(tokenizer.eos_token_id)]
            out.append(Generation(new, tokenizer.decode(new, skip_special_tokens=False),
                                  tokenizer.decode(new, skip_special_tokens=True).strip(), stopped))
    return out


# ---- task metrics -----------------------------------------------------------------------------------
def task_metric_names(references: list[str]) -> tuple[str, ...]:
    """json_valid and json_field_f1 when most references are JSON documents, else rouge_l and fact_recall."""
    json_references = sum(json_reference(r) is not None for r in references)
    return JSON_METRICS if is_json_task(json_references, len(references)) else FREE_TEXT_METRICS


def task_scores(generations: list[Generation], references: list[str], metrics: tuple[str, ...]) -> dict:
    """{metric: {"value", "n"}} of one model's answers: each metric's mean over the answers it applies to
    (n; e.g. json_valid only where the reference is JSON), None when it applies to none."""
    totals = MetricTotals()
    for g, reference in zip(generations, references, strict=True):
        totals.add(score_pair(g.answer, reference, metrics))
    means = totals.means()
    return {m: {"value": round(means[m], 4) if m in means else None, "n": totals.counts.get(m, 0)}
            for m in metrics}


# ---- metadata ---------------------------------------------------------------------------------------
def main_tensor_type(type_name: str) -> str | None:
    """The ggml tensor type a file type mostly consists of: Q4_K_M -> Q4_K, Q8_0 -> Q8_0."""
    from gguf import GGMLQuantizationType

    names = set(GGMLQuantizationType.__members__)
    for candidate in (type_name, re.sub(r"_(S|M|L)$", "", type_name)):
        if candidate in names:
            return candidate
    return None


def metadata_checks(info, *, type_name: str, expected_ftype: int, tokenizer, hf_config: dict,
                    architecture: str | None) -> dict:
    """Named pass/fail checks of one file's metadata."""
    checks = {"file_type": info.file_type == expected_ftype}
    if architecture:
        checks["architecture"] = info.architecture == architecture
    if tokenizer.chat_template:
        checks["chat_template_embedded"] = info.chat_template == tokenizer.chat_template
    ctx = hf_config.get("max_position_embeddings") or hf_config.get("n_positions")
    if ctx:
        checks["context_length"] = info.context_length == ctx
    main = main_tensor_type(type_name)
    if main:
        checks[f"tensor_type_{main}_present"] = info.tensor_types.get(main, 0) > 0
    if type_name in ("Q4_K_M", "Q5_K_M"):
        # These mixes put the output layer and half of attn_v/ffn_down in Q6_K; none means a fallback.
        checks["tensor_type_Q6_K_present"] = info.tensor_types.get("Q6_K", 0) > 0
    return checks
