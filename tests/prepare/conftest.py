"""Fixtures for the prepare step's tests (helpers live in prepare_helpers.py)."""

from __future__ import annotations

import pytest
from prepare_helpers import build_tokenizer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)
