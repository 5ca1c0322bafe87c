"""Loading a tokenizer the way every step does: the config's trust_remote_code, and its chat template.

`model.chat_template` in the config (a file or URI whose text replaces the tokenizer's template) is
read by `chat_template_override` and applied by `load_tokenizer`. A train output (adapter or full
weights) carries the tokenizer and chat template it was trained with; it wins over the base model's
(`load_first_tokenizer`).
"""

from __future__ import annotations

from pathlib import Path

from components.common.config import KubetuneConfig, ModelConfig
from components.common.errors import KubetuneError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tokenizer_config.json")


def _model(cfg: KubetuneConfig | ModelConfig) -> ModelConfig:
    return cfg.model if isinstance(cfg, KubetuneConfig) else cfg


def chat_template_override(cfg: KubetuneConfig | ModelConfig, *,
                           error: type[KubetuneError] = KubetuneError) -> str | None:
    """The text of `model.chat_template` (local path, file://, s3:// or hf://datasets/...), or None when the
    config sets none. Raises `error` when it cannot be read."""
    from components.common import storage

    uri = _model(cfg).chat_template
    if not uri:
        return None
    try:
        return storage.fetch_file(uri).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, storage.StorageError) as e:
        raise error(f"model.chat_template {uri}: cannot read it ({e}); expected a .jinja file with the chat "
                    "template") from None


def load_tokenizer(cfg: KubetuneConfig | ModelConfig, path: str | Path, *,
                   error: type[KubetuneError] = KubetuneError, chat_template: str | None = None):
    """The tokenizer in `path` (a local directory), loaded with the config's trust_remote_code, its chat
    template replaced by `chat_template` when given, else by `model.chat_template` when the config sets
    one. Raises `error` when it cannot be loaded or the override cannot be read."""
    from transformers import AutoTokenizer

    model = _model(cfg)
    template = chat_template if chat_template is not None else chat_template_override(model, error=error)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise error(f"{path}: cannot load the tokenizer ({e})") from None
    if template is not None:
        tok.chat_template = template
    return tok


def has_tokenizer(directory: Path) -> bool:
    return any((Path(directory) / f).is_file() for f in TOKENIZER_FILES)


def load_first_tokenizer(cfg: KubetuneConfig | ModelConfig, candidates: list[tuple[str, Path]],
                         error: type[KubetuneError]):
    """`load_tokenizer` on the first (description, directory) candidate that has a tokenizer; `error` is
    raised (naming every place looked in) when none has, or when it cannot be loaded."""
    for _, directory in candidates:
        if has_tokenizer(directory):
            return load_tokenizer(cfg, directory, error=error)
    places = " nor in ".join(f"{what} {directory}" for what, directory in candidates)
    raise error(f"no tokenizer in {places}: expected tokenizer.json (or tokenizer.model) and "
                "tokenizer_config.json in one of them; a model must ship with its tokenizer and chat template")
