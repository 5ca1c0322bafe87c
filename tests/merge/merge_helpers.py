"""Helpers for the merge tests (not in conftest.py: tests import them by module name)."""

from __future__ import annotations

import shutil
from pathlib import Path


def save_adapter(model, out: Path, *, r: int = 8, seed: int = 0, tokenizer_from: Path | None = None) -> Path:
    """A LoRA adapter on `model` with random (non-zero) A and B, so merging really changes weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear",
                                                  init_lora_weights=False, task_type="CAUSAL_LM"))
    with torch.no_grad():  # keep the update modest: B ~ N(0, 0.02)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    peft_model.save_pretrained(out)
    if tokenizer_from is not None:
        AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(out)
    return out


def copy_model(src: Path, dst: Path, *, tokenizer: bool = True) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if tokenizer or not p.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy2(p, dst / p.name)
    return dst
