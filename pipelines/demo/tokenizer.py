"""The demo tokenizer: a byte-level BPE trained here, with a ChatML chat template.

* Byte-level BPE (``tokenizers``) with the GPT-2 pre-tokenizer (``ByteLevel(use_regex=True)``, i.e.
  the GPT-2 split regex, no prefix space), so llama.cpp can treat it as its ``gpt-2`` pre-tokenizer
  once a converter wrapper registers the hash of this vocabulary.
* Special tokens, in this order (ids 0-3): ``<|begin_of_text|>`` (bos), ``<|im_end|>`` (eos and
  end of turn), ``<|im_start|>`` and ``<|pad|>`` (a pad distinct from eos, so that padding is never
  confused with the end of an answer). No unk: byte-level BPE can encode any string.
* Plain ``tokenizer(text)`` prepends bos (like Llama 3); the chat template writes bos itself and
  ``apply_chat_template`` tokenizes without adding special tokens, so there is exactly one bos.
* ``padding_side="right"``, what training collators expect; batched generation must pass
  ``padding_side="left"`` itself.
* The chat template wraps each assistant turn's content and its ``<|im_end|>`` in
  ``{% generation %}``, so ``return_assistant_tokens_mask=True`` (TRL's ``assistant_only_loss``)
  marks exactly the tokens the model must learn to produce.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

BOS = "<|begin_of_text|>"
EOS = "<|im_end|>"
IM_START = "<|im_start|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [BOS, EOS, IM_START, PAD]
VOCAB_SIZE = 4096
MODEL_MAX_LENGTH = 1024

# ChatML. Content may be a string or a list of {"type": "text", "text": ...} parts.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set content = message['content'] %}"
    "{%- else %}{%- set content = message['content'] | map(attribute='text') | join('') %}{%- endif %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{% generation %}{{- content + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE):
    """Train the byte-level BPE on `texts` and wrap it as a `PreTrainedTokenizerFast`.

    If the text has too few distinct words to learn `vocab_size` tokens, the rest are filled with
    `<|reserved_N|>` special tokens (as Llama 3 does), so the vocabulary size stays fixed.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    missing = vocab_size - tok.get_vocab_size()
    if missing > 0:
        tok.add_special_tokens([AddedToken(f"<|reserved_{i}|>", special=True) for i in range(missing)])
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size()} tokens, wanted {vocab_size}")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
        special_tokens=[(BOS, tok.token_to_id(BOS))])
    return wrap(tok)


def wrap(tok):
    """A `tokenizers.Tokenizer` as a `transformers.PreTrainedTokenizerFast` with our settings."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="right",
        truncation_side="right", model_max_length=MODEL_MAX_LENGTH, chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer, out_dir: Path) -> None:
    """`save_pretrained`, then make tokenizer_config.json readable by more than transformers 5.

    transformers 5 writes ``"tokenizer_class": "TokenizersBackend"``, a name transformers 4 (which
    llama.cpp's converter and older vLLM builds may use) does not know, and drops ``add_bos_token``,
    which llama.cpp's gguf writer reads. The class name ``PreTrainedTokenizerFast`` means the same
    thing to both versions.
    """
    tokenizer.save_pretrained(out_dir)
    path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(tokenizer_class="PreTrainedTokenizerFast", add_bos_token=True, add_eos_token=False)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
