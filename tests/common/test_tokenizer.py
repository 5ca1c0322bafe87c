"""The one tokenizer loader every step uses: the config's trust_remote_code, the model.chat_template
override (read by `chat_template_override`), and the first-candidate search of eval and merge."""

from __future__ import annotations

import pytest

from components.common import tokenizer as tk
from components.common.config import config_from_dict
from components.common.errors import KubetuneError

TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"


class StepError(KubetuneError):
    pass


def config(**model):
    return config_from_dict({"model": {"name": "m", "base": "unused", **model},
                             "data": {"sources": [{"uri": "unused.jsonl"}]}, "storage": {"root": "file:///tmp/x"}})


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "hello", "world"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = "{{ messages[0]['content'] }}"
    out = tmp_path_factory.mktemp("tok")
    fast.save_pretrained(out)
    return out


def test_no_override(tokenizer_dir):
    cfg = config()
    assert tk.chat_template_override(cfg) is None and tk.chat_template_override(cfg.model) is None
    assert tk.load_tokenizer(cfg, tokenizer_dir).chat_template == "{{ messages[0]['content'] }}"


def test_override_from_the_config_or_given_text(tmp_path, tokenizer_dir):
    tpl = tmp_path / "chat.jinja"
    tpl.write_text(TEMPLATE)
    cfg = config(chat_template=f"file://{tpl}")
    assert tk.chat_template_override(cfg) == TEMPLATE
    assert tk.load_tokenizer(cfg, tokenizer_dir).chat_template == TEMPLATE
    assert tk.load_tokenizer(cfg.model, tokenizer_dir, chat_template="given").chat_template == "given"


def test_unreadable_override_raises_the_callers_error(tmp_path, tokenizer_dir):
    cfg = config(chat_template=str(tmp_path / "missing.jinja"))
    with pytest.raises(StepError, match=r"model.chat_template .*missing.jinja: cannot read it .*expected a .jinja"):
        tk.chat_template_override(cfg, error=StepError)
    with pytest.raises(StepError, match="missing.jinja: cannot read it"):
        tk.load_tokenizer(cfg, tokenizer_dir, error=StepError)


@pytest.mark.parametrize("trust", [False, True])
def test_trust_remote_code_follows_the_config(monkeypatch, tokenizer_dir, trust):
    from transformers import AutoTokenizer

    seen = {}
    real = AutoTokenizer.from_pretrained

    def spy(path, **kwargs):
        seen.update(kwargs)
        return real(path)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", spy)
    tk.load_tokenizer(config(trust_remote_code=trust), tokenizer_dir)
    assert seen == {"trust_remote_code": trust}


def test_unloadable_tokenizer(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(StepError, match=r"cannot load the tokenizer"):
        tk.load_tokenizer(config(), tmp_path, error=StepError)


def test_first_candidate_with_a_tokenizer_wins(tmp_path, tokenizer_dir):
    empty = tmp_path / "adapter"
    empty.mkdir()
    tok = tk.load_first_tokenizer(config(), [("the adapter", empty), ("the base model", tokenizer_dir)], StepError)
    assert tok.convert_tokens_to_ids("hello") == 3
    with pytest.raises(StepError, match=r"no tokenizer in the adapter .*adapter nor in the base model .*: expected"):
        tk.load_first_tokenizer(config(), [("the adapter", empty), ("the base model", empty)], StepError)
