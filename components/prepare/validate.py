"""Format detection and per-record validation into one normalised shape.

Four formats are accepted and all become either a conversation (`messages`) or plain `text`:

* chat:              {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
* alpaca:            {"instruction": str, "input": str (optional), "output": str, "system": optional}
* prompt_completion: {"prompt": str, "completion": str}
* text:              {"text": str}

alpaca and prompt/completion become a user turn and an assistant turn, so every conversation is
rendered by the same chat-template code. Extra keys are ignored (datasets often carry ids, metadata).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant")
FORMATS = ("chat", "alpaca", "prompt_completion", "text")
FORMAT_KEYS = "messages (chat), instruction + output (alpaca), prompt + completion, or text"


class Invalid(Exception):
    """One record's problem: kind is a ProblemPolicy field name."""

    def __init__(self, kind: str, field: str | None, message: str) -> None:
        super().__init__(message)
        self.kind, self.field, self.message = kind, field, message


@dataclass
class Example:
    """A valid record, normalised. Later stages fill in the rendering and token counts."""

    source: str
    format: str
    where: str
    messages: list[dict[str, str]] | None = None  # for conversations
    text: str | None = None                       # for plain text (full-sequence loss)
    prompt: str | None = None
    completion: str | None = None
    num_tokens: int = 0
    prompt_tokens: int = 0
    truncated: bool = False
    key: str = ""         # sha256 of the normalised content: exact dedup, ids, split and ordering
    prompt_key: str = ""  # sha256 of the normalised prompt side: decontamination

    @property
    def is_text(self) -> bool:
        return self.messages is None

    @property
    def rendered(self) -> str:
        """The whole training text: prompt + completion, or the plain text."""
        return self.text if self.is_text else (self.prompt or "") + (self.completion or "")


def detect_format(value: Any) -> str | None:
    """The format a record's keys say it has, or None. Null-valued keys do not count."""
    if not isinstance(value, dict):
        return None
    keys = {k for k, v in value.items() if v is not None}
    if "messages" in keys:
        return "chat"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if "text" in keys:
        return "text"
    return None


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for messages people can act on."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def to_example(value: Any, fmt: str, source: str, where: str) -> Example:
    """Validate one record of the given format; raises Invalid with the field at fault."""
    if not isinstance(value, dict):
        raise Invalid("wrong_type", None, f"expected a JSON object (a record), got {json_type(value)}")
    if fmt == "chat":
        return Example(source, fmt, where, messages=_chat(value))
    if fmt == "alpaca":
        instruction = _string(value, "instruction", empty_kind="missing_field")
        extra = _string(value, "input", required=False)
        output = _string(value, "output", empty_kind="empty_output")
        system = _string(value, "system", required=False)
        user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        return Example(source, fmt, where, messages=_turns(system, user, output))
    if fmt == "prompt_completion":
        prompt = _string(value, "prompt", empty_kind="missing_field")
        completion = _string(value, "completion", empty_kind="empty_output")
        return Example(source, fmt, where, messages=_turns(None, prompt, completion))
    if fmt == "text":
        return Example(source, fmt, where, text=_string(value, "text", empty_kind="empty_output"))
    raise ValueError(f"unknown format {fmt!r}")


def _turns(system: str | None, user: str, assistant: str) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": system}] if system and system.strip() else []
    return turns + [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def _string(record: dict, name: str, *, required: bool = True, empty_kind: str | None = None) -> str | None:
    value = record.get(name)
    if value is None:
        if required:
            raise Invalid("missing_field", name, "required field is missing")
        return None
    if not isinstance(value, str):
        raise Invalid("wrong_type", name, f"expected a string, got {json_type(value)}")
    if empty_kind and not value.strip():
        what = "the answer is empty" if empty_kind == "empty_output" else "is empty"
        raise Invalid(empty_kind, name, what)
    return value


def _chat(record: dict) -> list[dict[str, str]]:
    messages = record.get("messages")
    if messages is None:
        raise Invalid("missing_field", "messages", "required field is missing")
    if not isinstance(messages, list):
        raise Invalid("wrong_type", "messages", f"expected an array of {{role, content}} objects, got "
                                                f"{json_type(messages)}")
    if not messages:
        raise Invalid("missing_field", "messages", "is empty (expected user and assistant messages)")
    out = []
    for i, message in enumerate(messages):
        name = f"messages[{i}]"
        if not isinstance(message, dict):
            raise Invalid("wrong_type", name, f"expected an object with role and content, got "
                                              f"{json_type(message)}")
        role, content = message.get("role"), message.get("content")
        if role is None:
            raise Invalid("missing_field", f"{name}.role", "required field is missing")
        if not isinstance(role, str):
            raise Invalid("wrong_type", f"{name}.role", f"expected a string, got {json_type(role)}")
        if role not in ROLES:
            raise Invalid("unknown_role", f"{name}.role", f"unknown role '{role}' (expected system, user or "
                                                          f"assistant)")
        if content is None:
            raise Invalid("missing_field", f"{name}.content", "required field is missing")
        if not isinstance(content, str):
            hint = " (content parts are not supported; use a string)" if isinstance(content, list) else ""
            raise Invalid("wrong_type", f"{name}.content",
                          f"expected a string, got {json_type(content)}{hint}")
        if role == "system" and any(m["role"] != "system" for m in out):
            raise Invalid("misplaced_system", f"{name}.role", "a system message after the conversation started "
                                                              "(expected system messages only before the first "
                                                              "user or assistant message)")
        if role == "user" and not content.strip():
            raise Invalid("missing_field", f"{name}.content", "the user's message is empty (expected text)")
        out.append({"role": role, "content": content})
    last = len(out) - 1
    if out[last]["role"] != "assistant":
        raise Invalid("missing_field", f"messages[{last}]", f"the last message must be the assistant's "
                                                            f"answer (got role '{out[last]['role']}')")
    if not out[last]["content"].strip():
        raise Invalid("empty_output", f"messages[{last}].content", "the answer is empty")
    if not any(m["role"] == "user" for m in out):
        raise Invalid("missing_field", "messages", "no user message")
    return out
