"""Ollama Modelfiles: the GGUF, its chat template in Ollama's Go-template syntax, and stop tokens.

A Jinja chat template cannot be translated to Go templates in general, so the template is *probed*:
rendered (by the caller's `render`, i.e. jinja2 as llama.cpp/transformers render it) with sentinel
messages, which yields the text before the first message, each role's prefix and suffix around the
content, and the generation prompt. Those pieces are emitted as a Go template over Ollama's
`.Messages`, and accepted only if the reconstruction renders several test conversations exactly as
the Jinja template does. ChatML comes out as Ollama's usual ChatML template:

    {{ range .Messages }}<|im_start|>{{ .Role }}
    {{ .Content }}<|im_end|>
    {{ end }}<|im_start|>assistant

The BOS token is left out when the GGUF says add_bos_token: Ollama's runner adds it, as llama.cpp
does. Conversations are expected to end with a user turn (Ollama's chat API); the generation prompt
is always appended. A template that does not fit this shape yields a Modelfile without TEMPLATE
(Ollama then derives one from the GGUF's tokenizer.chat_template) and `template_converted: false`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

Render = Callable[[list[dict], bool], str]  # (messages, add_generation_prompt) -> text
ROLES = ("system", "user", "assistant")
SPECIAL_RE = re.compile(r"<\|[^<>|\s]+\|>|</?s>|\[/?INST\]|<start_of_turn>|<end_of_turn>")


@dataclass
class ChatShape:
    head: str  # text before the first message (BOS removed when the runner adds it)
    prefix: dict[str, str]
    suffix: dict[str, str]
    generation: str
    generic_role: bool = False  # every role is prefix.replace(role, ROLE) alike: use {{ .Role }}


@dataclass
class Modelfile:
    text: str
    template: str | None
    stops: list[str]
    system: str | None
    template_converted: bool
    notes: list[str] = field(default_factory=list)


def _sentinel(i: int) -> str:
    return f"KTSENTINEL{i}X"


def probe(render: Render, *, bos: str | None, strip_bos: bool) -> ChatShape | None:
    """The template's pieces, or None when it does not have the prefix/content/suffix shape."""
    try:
        singles = {role: render([{"role": role, "content": _sentinel(i)}], False)
                   for i, role in enumerate(ROLES)}
    except Exception:  # noqa: BLE001 - e.g. a template that rejects a lone system message
        return None
    try:
        head = render([], False)
    except Exception:  # noqa: BLE001 - transformers refuses empty conversations: BOS or nothing
        head = bos if bos and all(t.startswith(bos) for t in singles.values()) else ""
    prefix, suffix = {}, {}
    for i, role in enumerate(ROLES):
        text, x = singles[role], _sentinel(i)
        if text.count(x) != 1:
            return None
        before, after = text.split(x)
        if not before.startswith(head):
            return None
        prefix[role], suffix[role] = before[len(head):], after
    convo = [{"role": "user", "content": _sentinel(7)}]
    try:
        with_gen, without = render(convo, True), render(convo, False)
    except Exception:  # noqa: BLE001
        return None
    if not with_gen.startswith(without):
        return None
    if strip_bos and bos and head.startswith(bos):
        head = head[len(bos):]
    generic = len({prefix[r].replace(r, "\0") for r in ROLES}) == 1 and all(r in prefix[r] for r in ROLES) \
        and len(set(suffix.values())) == 1
    shape = ChatShape(head=head, prefix=prefix, suffix=suffix, generation=with_gen[len(without):],
                      generic_role=generic)
    return shape


def render_shape(shape: ChatShape, messages: list[dict], generation_prompt: bool) -> str:
    """What the Go template produced from `shape` renders (the reference for `probe`'s check)."""
    out = [shape.head]
    for m in messages:
        if m["role"] in shape.prefix:
            out.append(shape.prefix[m["role"]] + m["content"] + shape.suffix[m["role"]])
    return "".join(out) + (shape.generation if generation_prompt else "")


TEST_CONVERSATIONS = [
    [{"role": "system", "content": "S1"}, {"role": "user", "content": "U1"},
     {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"},
     {"role": "assistant", "content": "A2"}],
    [{"role": "user", "content": "hello\nthere"}, {"role": "assistant", "content": "{\"x\": 1}"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "U"}],
]


def shape_matches(shape: ChatShape, render: Render, bos_removed: str) -> bool:
    for convo in TEST_CONVERSATIONS:
        for gen in (False, True):
            if bos_removed + render_shape(shape, convo, gen) != render(convo, gen):
                return False
    return True


def _literal(text: str) -> str:
    """Go-template literal text: only '{{' needs care."""
    return text.replace("{{", '{{ "{{" }}')


def go_template(shape: ChatShape) -> str:
    """The Go template (Ollama's TEMPLATE) of `shape`. No trim markers: every byte is literal."""
    if shape.generic_role:
        role = ROLES[0]
        pre = _literal(shape.prefix[role]).replace(role, "{{ .Role }}")
        body = f"{pre}{{{{ .Content }}}}{_literal(shape.suffix[role])}"
    else:
        branches = []
        for i, role in enumerate(ROLES):
            keyword = "if" if i == 0 else "else if"
            branches.append(f'{{{{ {keyword} eq .Role "{role}" }}}}{_literal(shape.prefix[role])}'
                            f"{{{{ .Content }}}}{_literal(shape.suffix[role])}")
        body = "".join(branches) + "{{ end }}"
    return f"{_literal(shape.head)}{{{{ range .Messages }}}}{body}{{{{ end }}}}{_literal(shape.generation)}"


def stop_tokens(shape: ChatShape | None, eos: str | None) -> list[str]:
    """The end-of-turn marker(s) and EOS, plus the token that opens the next turn."""
    stops = [eos] if eos else []
    if shape is not None:
        stops += SPECIAL_RE.findall(shape.suffix["assistant"])  # the end-of-turn marker(s)
        stops += SPECIAL_RE.findall(shape.prefix["user"])[:1]  # the token that opens a new turn
    return list(dict.fromkeys(s for s in stops if s))


def _quoted(text: str) -> str:
    if '"""' in text:
        raise ValueError('text contains """, which a Modelfile cannot quote')
    return f'"""{text}"""'


def build_modelfile(gguf_name: str, render: Render, *, bos: str | None, eos: str | None, add_bos: bool,
                    system: str | None = None, num_ctx: int | None = None) -> Modelfile:
    """A Modelfile for the GGUF `gguf_name` (next to it), its template probed through `render`."""
    notes = []
    shape = probe(render, bos=bos, strip_bos=add_bos)
    if shape is not None:
        try:
            starts_with_bos = bool(bos) and render(TEST_CONVERSATIONS[0], False).startswith(bos)
            removed = bos if (add_bos and starts_with_bos) else ""
            if not shape_matches(shape, render, removed):
                shape = None
        except Exception:  # noqa: BLE001 - the template rejects one of the test conversations
            shape = None
    template = go_template(shape) if shape is not None else None
    if template is None:
        notes.append("chat template not convertible to Go; Ollama derives one from tokenizer.chat_template")
    stops = stop_tokens(shape, eos)
    lines = ["# Ollama Modelfile written by kubetune; use: ollama create NAME -f THIS_FILE",
             f"FROM ./{gguf_name}"]
    if template is not None:
        lines.append(f"TEMPLATE {_quoted(template)}")
    if system:
        lines.append(f"SYSTEM {_quoted(system)}")
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines.append("PARAMETER temperature 0")  # greedy decoding, as the eval and quantize steps measured it
    if num_ctx:
        lines.append(f"PARAMETER num_ctx {num_ctx}")
    return Modelfile(text="\n".join(lines) + "\n", template=template, stops=stops, system=system,
                     template_converted=template is not None, notes=notes)


def common_system_prompt(conversations: list[list[dict]]) -> str | None:
    """The system message every conversation starts with, if they all share one."""
    systems = {c[0]["content"] if c and c[0].get("role") == "system" and isinstance(c[0].get("content"), str)
               else None for c in conversations}
    return systems.pop() if len(systems) == 1 else None
