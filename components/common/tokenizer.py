"""Loading the tokenizer that travels with a step's output, shared by eval and merge.

A train output (adapter or full weights) carries the tokenizer and chat template it was trained with;
it wins over the base model's. `model.chat_template` in the config overrides the template.
"""

from __future__ import annotations

from pathlib import Path

from components.common.config import KubetuneConfig
from components.common.errors import KubetuneError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tokenizer_config.json")


def load_first_tokenizer(cfg: KubetuneConfig, candidates: list[tuple[str, Path]], error: type[KubetuneError]):
    """The tokenizer of the first (description, directory) candidate that has one; `error` is raised
    (naming every place looked in) when none has, or when it cannot be loaded."""
    from transformers import AutoTokenizer

    for _, directory in candidates:
        if any((directory / f).is_file() for f in TOKENIZER_FILES):
            try:
                tok = AutoTokenizer.from_pretrained(directory, trust_remote_code=cfg.model.trust_remote_code)
            except (OSError, ValueError) as e:
                raise error(f"{directory}: cannot load the tokenizer ({e})") from None
            break
    else:
        places = " nor in ".join(f"{what} {directory}" for what, directory in candidates)
        raise error(f"no tokenizer in {places}: expected tokenizer.json (or tokenizer.model) and "
                    "tokenizer_config.json in one of them; a model must ship with its tokenizer and chat template")
    if cfg.model.chat_template:
        from components.common import storage

        tok.chat_template = storage.fetch_file(cfg.model.chat_template).read_text(encoding="utf-8")
    return tok
