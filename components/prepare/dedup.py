"""Exact and near-duplicate removal, and decontamination of the test split.

What is compared: the text of the conversation without system messages (a system prompt shared by
every record would make every pair look similar), with role labels, normalised: lowercase, whitespace
collapsed. An alpaca record and a chat record with the same turns are therefore duplicates.

* Exact duplicates: same sha256 of the normalised text. The first one (source order, then file
  order) is kept.
* Near duplicates: MinHash over word 3-gram shingles, LSH for candidates, kept out when the MinHash
  Jaccard estimate reaches `prepare.near_dup_threshold` (1 disables). 3-grams, because datasets of
  short records (a contract clause, a question) differ in a word or two when they are near copies.
* Decontamination compares *prompts* (what the model is given; the whole text for plain-text records)
  of the test split with those of the train split. Whole-record duplicates are already gone by then;
  what remains is the case that inflates evals: a test question seen in training with another answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from tqdm import tqdm

from components.prepare.problems import Tally
from components.prepare.validate import Example

if TYPE_CHECKING:  # datasketch (and scipy under it) is imported when used: a second off every CLI start
    from datasketch import MinHash

SHINGLE_WORDS = 3
MINHASH_SEED = 1  # fixed: the same text always gets the same signature, run after run
MINHASH_SCHEME = "affine32"  # datasketch 2 default; explicit because shared permutations require it


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def _conversation_text(messages: Iterable[dict[str, str]]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages if m["role"] != "system")


def content_text(ex: Example) -> str:
    return normalise(ex.text if ex.is_text else _conversation_text(ex.messages))


def prompt_text(ex: Example) -> str:
    return normalise(ex.text if ex.is_text else _conversation_text(ex.messages[:-1]))


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def assign_keys(examples: list[Example]) -> None:
    for ex in examples:
        ex.key = sha256(content_text(ex))
        ex.prompt_key = sha256(prompt_text(ex))


def exact_dedup(examples: list[Example], tally: Tally) -> list[Example]:
    first: dict[str, Example] = {}
    kept = []
    for ex in examples:
        if ex.key in first:
            tally.add("exact_duplicate", ex.source, ex.where, content_text(ex),
                      detail=f"duplicate of {first[ex.key].where}")
            continue
        first[ex.key] = ex
        kept.append(ex)
    return kept


def _shingles(text: str) -> list[bytes]:
    words = text.split()
    if len(words) <= SHINGLE_WORDS:
        return [" ".join(words).encode("utf-8")]
    return list({" ".join(words[i:i + SHINGLE_WORDS]).encode("utf-8")
                 for i in range(len(words) - SHINGLE_WORDS + 1)})


def _signatures(texts: list[str], num_perm: int, desc: str) -> list[MinHash]:
    # One permutation table shared by all signatures: generating it per record dominates otherwise.
    from datasketch import MinHash

    template = MinHash(num_perm=num_perm, seed=MINHASH_SEED, scheme=MINHASH_SCHEME)
    out = []
    for text in tqdm(texts, desc=desc, unit="rec", disable=None, leave=False):
        m = MinHash(num_perm=num_perm, seed=MINHASH_SEED, permutations=template.permutations,
                    scheme=MINHASH_SCHEME)
        m.update_batch(_shingles(text))
        out.append(m)
    return out


class _Index:
    """MinHash LSH that confirms candidates with the Jaccard estimate (LSH alone over-reports)."""

    def __init__(self, threshold: float, num_perm: int) -> None:
        self.threshold = threshold
        from datasketch import MinHashLSH

        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.signatures: list[MinHash] = []

    def match(self, sig: MinHash) -> tuple[int, float] | None:
        best = None
        for i in self.lsh.query(sig):
            jaccard = sig.jaccard(self.signatures[i])
            if jaccard >= self.threshold and (best is None or (jaccard, -i) > (best[1], -best[0])):
                best = (i, jaccard)
        return best

    def add(self, sig: MinHash) -> None:
        self.lsh.insert(len(self.signatures), sig)
        self.signatures.append(sig)


def near_dedup(examples: list[Example], threshold: float, num_perm: int, tally: Tally) -> list[Example]:
    if threshold >= 1:
        return examples
    texts = [content_text(ex) for ex in examples]
    index = _Index(threshold, num_perm)
    kept: list[Example] = []
    for ex, text, sig in zip(examples, texts, _signatures(texts, num_perm, "near-dup"), strict=True):
        hit = index.match(sig)
        if hit is not None:
            tally.add("near_duplicate", ex.source, ex.where, text,
                      detail=f"near duplicate of {kept[hit[0]].where} (Jaccard ~{hit[1]:.2f})")
            continue
        index.add(sig)
        kept.append(ex)
    return kept


def decontaminate(train: list[Example], test: list[Example], threshold: float, num_perm: int,
                  tally: Tally) -> list[Example]:
    """Test records whose prompt is an exact or near duplicate of a train record's prompt."""
    by_key = {}
    for ex in train:
        by_key.setdefault(ex.prompt_key, ex)
    index = None
    if threshold < 1:
        index = _Index(threshold, num_perm)
        for sig in _signatures([prompt_text(ex) for ex in train], num_perm, "decontaminate"):
            index.add(sig)
    kept = []
    test_sigs = _signatures([prompt_text(ex) for ex in test], num_perm, "decontaminate") if index else None
    for i, ex in enumerate(test):
        match = by_key.get(ex.prompt_key)
        detail = f"prompt equals that of train record {match.where}" if match else ""
        if match is None and index is not None:
            hit = index.match(test_sigs[i])
            if hit is not None:
                detail = f"prompt near-duplicates that of train record {train[hit[0]].where} " \
                         f"(Jaccard ~{hit[1]:.2f})"
        if detail:
            tally.add("test_contaminated", ex.source, ex.where, prompt_text(ex), detail=detail)
            continue
        kept.append(ex)
    return kept
