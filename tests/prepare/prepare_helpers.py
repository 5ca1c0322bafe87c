"""Helpers for the prepare step's tests: a small ChatML tokenizer, configs and data-file writers.

(Not named conftest.py: tests import these by module name, and tests/conftest.py exists too.)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

from components.common.config import config_from_dict

# ChatML, the same shape as the demo model's template: bos, {% generation %} around the answers.
CHATML = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{- '\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
EOT = "<|im_end|>"
WORDS = ("the quick brown fox jumps over a lazy dog while contract parties agree on dates amounts and "
         "terms of payment delivery notice termination governing law seller buyer licensor licensee "
         "effective date agreement between company limited corporation incorporated under laws state "
         "province kingdom republic").split()


def build_tokenizer(out_dir: Path) -> Path:
    """A byte-level BPE with the ChatML template above, saved like a model's tokenizer (~0.3 s)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|begin_of_text|>", EOT, "<|im_start|>", "<|pad|>"])
    tok.train_from_iterator([" ".join(WORDS)] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token=EOT,
                                   pad_token="<|pad|>")
    fast.chat_template = CHATML
    fast.save_pretrained(out_dir)
    return out_dir


def config_dict(sources: list[dict], base: str = "unused-in-step-tests", **prepare) -> dict:
    return {"model": {"name": "test-model", "base": base},
            "data": {"sources": sources},
            "storage": {"root": "file:///tmp/unused"},
            "prepare": prepare}


def make_config(sources: list[dict], **prepare):
    """A valid KubetuneConfig with the given data sources and prepare settings."""
    return config_from_dict(config_dict(sources, **prepare))


def write_config(path: Path, sources: list[dict], base: str = "unused", **prepare) -> Path:
    path.write_text(yaml.safe_dump(config_dict(sources, base=base, **prepare), sort_keys=False))
    return path


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_json(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    return path


def write_parquet(path: Path, records: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


WRITERS = {"jsonl": write_jsonl, "json": write_json, "parquet": write_parquet}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]


def sentence(i: int, n_words: int = 14, salt: str = "") -> str:
    """A distinct random-looking sentence per (i, salt); unrelated sentences share almost no 3-grams."""
    rng = random.Random(f"{salt}-{i}")
    return f"item {i} " + " ".join(rng.choice(WORDS) for _ in range(n_words))


def records(fmt: str, n: int, start: int = 0, salt: str = "") -> list[dict]:
    """n distinct records of one format."""
    out = []
    for i in range(start, start + n):
        q, a = sentence(i, salt=salt + "q"), sentence(i, salt=salt + "a")
        if fmt == "chat":
            out.append({"messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": q},
                                     {"role": "assistant", "content": a}]})
        elif fmt == "alpaca":
            out.append({"instruction": q, "input": f"input {i}", "output": a})
        elif fmt == "prompt_completion":
            out.append({"prompt": q, "completion": a})
        elif fmt == "text":
            out.append({"text": f"{q} {a}"})
        else:
            raise ValueError(fmt)
    return out


def rows(path: Path) -> list[dict]:
    """Output records of train/test, JSONL or Parquet."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    return read_jsonl(path)
