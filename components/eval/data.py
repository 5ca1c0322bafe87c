"""The eval examples, streamed from the prepared test split and the optional general set.

The test split is the prepare step's `test.jsonl` (or `test.parquet`). A chat record becomes one
example: the generation prompt is `messages[:-1]` rendered with the tokenizer's chat template and the
generation prompt (the prepared `prompt` string when the tokenizer has no template), the reference
is the last assistant message's content, and perplexity is scored on the prepared `completion`
(the last turn's content and end-of-turn token) given the prepared `prompt`. So of a multi-turn
conversation only the last assistant turn is evaluated (the earlier ones are context); `count` says
how many such conversations there are. Plain-text records have no prompt/answer split and are
counted, not evaluated.

Examples are produced by generators that read one line (or Parquet batch) at a time, so the file's
size never matters; `ExampleSource` can be iterated any number of times (once per model).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from components.common import prepared
from components.common.errors import KubetuneError
from components.common.task_metrics import extract_facts, json_reference


class EvalDataError(KubetuneError):
    """The test split or the general set is missing, empty or not in the expected shape."""


@dataclass(frozen=True)
class Example:
    index: int
    id: str | None
    source: str | None
    gen_prompt: str  # rendered, special tokens included: what generation continues
    reference: str  # the expected answer text (no template tokens)
    ppl_prompt: str  # rendered prompt and completion for perplexity
    ppl_completion: str
    question: str  # the last user message, for the report
    assistant_turns: int  # > 1: a multi-turn conversation, of which only the last turn is evaluated


def find_test_split(dataset_dir: Path) -> Path:
    return prepared.require_split(dataset_dir, "test", error=EvalDataError)


def _rows(path: Path) -> Iterator[tuple[str, dict]]:
    return prepared.iter_records(path, error=EvalDataError)


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _example(index: int, where: str, row: dict, tokenizer) -> Example | None:
    messages = row.get("messages")
    if not messages:
        if row.get("text") is not None:
            return None  # plain text: nothing to generate
        raise EvalDataError(f"{where}: expected 'messages' (a conversation) or 'text', as the prepare step "
                            "writes records")
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise EvalDataError(f"{where}: the conversation must end with an assistant message (the reference)")
    users = [m.get("content", "") for m in messages[:-1] if isinstance(m, dict) and m.get("role") == "user"]
    assistant_turns = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
    if tokenizer.chat_template:
        gen_prompt = _render(tokenizer, messages[:-1], True)
    elif row.get("prompt"):
        gen_prompt = row["prompt"]
    else:
        raise EvalDataError(f"{where}: the tokenizer has no chat template and the record has no rendered "
                            "'prompt'; expected a model with a chat template (or model.chat_template)")
    ppl_prompt, ppl_completion = row.get("prompt"), row.get("completion")
    if ppl_prompt is None or ppl_completion is None:  # not from the prepare step: render it here
        ppl_prompt = gen_prompt
        full = _render(tokenizer, messages, False) if tokenizer.chat_template else gen_prompt + last["content"]
        ppl_completion = full[len(gen_prompt):].rstrip() if full.startswith(gen_prompt) else last["content"]
    return Example(index=index, id=row.get("id"), source=row.get("source"), gen_prompt=gen_prompt,
                   reference=str(last.get("content", "")), ppl_prompt=ppl_prompt,
                   ppl_completion=ppl_completion, question=users[-1] if users else "",
                   assistant_turns=assistant_turns)


@dataclass(frozen=True)
class SplitCounts:
    """What the test split holds, counted before any model is loaded."""

    examples: int  # evaluated (at most eval.max_examples)
    text_records: int  # plain-text records, skipped
    json_references: int  # examples whose reference is a JSON document (object or array)
    fact_references: int  # examples whose reference holds a fact (what fact_recall scores)
    multi_turn: int  # examples with more than one assistant turn (only the last one is evaluated)


@dataclass
class ExampleSource:
    """The test split's examples, re-readable; `max_examples` caps how many are evaluated."""

    path: Path
    tokenizer: object
    max_examples: int | None = None

    def __iter__(self) -> Iterator[Example]:
        n = 0
        for where, row in _rows(self.path):
            if self.max_examples is not None and n >= self.max_examples:
                return
            ex = _example(n, where, row, self.tokenizer)
            if ex is not None:
                n += 1
                yield ex

    def count(self) -> SplitCounts:
        """The examples that will be evaluated, by kind, and the plain-text records skipped; raises on
        an empty split."""
        n = text = json_refs = fact_refs = multi_turn = 0
        for where, row in _rows(self.path):
            ex = _example(0, where, row, self.tokenizer)
            if ex is None:
                text += 1
            elif self.max_examples is None or n < self.max_examples:
                n += 1
                json_refs += json_reference(ex.reference) is not None
                fact_refs += bool(extract_facts(ex.reference))
                multi_turn += ex.assistant_turns > 1
        if n == 0:
            what = f" ({text} plain-text record(s), which have no prompt/answer to evaluate)" if text else ""
            raise EvalDataError(f"{self.path}: the test split is empty{what}; eval needs held-out "
                                "conversations (set prepare.test_ratio > 0 and check the prepare report)")
        return SplitCounts(examples=n, text_records=text, json_references=json_refs,
                           fact_references=fact_refs, multi_turn=multi_turn)


# ---- the general set ------------------------------------------------------------------------------
def general_pairs(path: Path, tokenizer) -> Iterator[tuple[str, str]]:
    """(rendered prompt, completion) pairs of a {prompt, reference} JSONL, for perplexity.

    With a chat template the prompt is a user turn plus the generation prompt and the completion the
    reference as an assistant turn (content + end-of-turn); without one, the plain prompt, a newline,
    and the reference followed by eos.
    """
    n = 0
    for where, row in _rows(path):
        prompt = row.get("prompt")
        reference = row.get("reference", row.get("completion"))
        if not isinstance(prompt, str) or not isinstance(reference, str) or not reference:
            raise EvalDataError(f"{where}: expected {{\"prompt\": str, \"reference\": str}} (general eval set)")
        n += 1
        if tokenizer.chat_template:
            user = [{"role": "user", "content": prompt}]
            p = _render(tokenizer, user, True)
            full = _render(tokenizer, user + [{"role": "assistant", "content": reference}], False)
            if full.startswith(p):
                yield p, full[len(p):].rstrip()
                continue
        yield prompt + "\n", reference + (tokenizer.eos_token or "")
    if n == 0:
        raise EvalDataError(f"{path}: the general eval set (data.general_eval) has no records")
