"""Span copying: the skill the demo task needs, taught and measured on the base model.

The contract task is mostly copying: a party's name, its jurisdiction and the day and year of a date
are spans of the excerpt that the answer repeats. A transformer copies with an *induction* circuit
(one head marks each position with the token before it, a later head finds the earlier occurrence
of the current token and predicts what followed it). That circuit forms only when pre-training pays
for copying, and on the demo's templated prose it hardly does: a base pre-trained on the prose alone
copies nothing (`copy_accuracy` 0.0), and fine-tuning then teaches the JSON format but not the names.

So pre-training mixes in sequences of random tokens in which a span is repeated after some filler,
with the loss on the repeat only (the first occurrence is unpredictable noise). The offset between
the two occurrences varies, so the model cannot copy "from N positions back" and must find the span by
content. The curriculum starts with a small pool of frequent tokens and widens it to the whole
vocabulary whenever the copy loss is low, since on the full vocabulary at once the loss stays at
ln(V) for as long as we can afford to train.

None of this is the task: there is no JSON and no instruction in it, and the base still scores about 0
on the task before fine-tuning.
"""

from __future__ import annotations

import random

IGNORE = -100  # the label transformers' loss skips


def copy_token_pool(tokenizer) -> list[int]:
    """Ordinary tokens (no special or reserved ones), in id order: BPE ids grow as merges get rarer, so
    a prefix of this list is a pool of frequent tokens."""
    special = set(tokenizer.all_special_ids)
    return [i for i in range(len(tokenizer)) if i not in special
            and not tokenizer.convert_ids_to_tokens(i).startswith("<|")]


def unspaced_variants(tokenizer) -> dict[int, int]:
    """{id of "Ġword": id of "word"} for every word the vocabulary has in both forms.

    The GPT-2 pre-tokenizer glues a space to the word after it, so a name is ``ĠJade ĠHealthcare`` in
    running text but ``"Jade ĠHealthcare`` after a quote: a copy into quotes (or into JSON) starts
    with a different token than its source."""
    vocab = tokenizer.get_vocab()
    return {i: vocab[token[1:]] for token, i in vocab.items() if token.startswith("Ġ") and token[1:] in vocab}


def copy_batch(rng: random.Random, pool: list[int], level: float, batch_size: int, bos_id: int,
               pool_start: int, quoted: tuple[int, dict[int, int]] | None = None,
               ) -> tuple[list[list[int]], list[list[int]]]:
    """`batch_size` sequences `bos, span, filler, span` of one length, and their labels: the repeated
    span after its first token (which nothing in the context predicts); everything else is ignored.

    `quoted` = (id of the quote token, unspaced_variants): half of the sequences whose span starts
    with a spaced word repeat it in quotes instead, `"` + the unspaced word + the rest, the way a
    phrase is quoted in prose; then the unspaced word is scored too. The sequence keeps its length:
    the quote takes the place of one filler token (or of the last token, without filler).

    `level` in [0, 1] is the curriculum's progress: the tokens come from the first
    pool_start + level * (len(pool) - pool_start) of `pool`, and spans (10 to 20 + 10 * level tokens)
    and fillers (up to 40 * level) grow with it. Spans stop at 30 tokens: the task copies names and
    dates of a few tokens, and a longer span makes each step dearer (the copy batch is most of a
    step's tokens at high levels) without teaching another skill."""
    tokens = pool[:pool_start + round(level * (len(pool) - pool_start))]
    span_len = rng.randint(10, int(20 + 10 * level))
    filler_len = rng.randint(0, int(40 * level))
    ids, labels = [], []
    for _ in range(batch_size):
        span = [rng.choice(tokens) for _ in range(span_len)]
        filler = [rng.choice(tokens) for _ in range(filler_len)]
        if quoted and span[0] in quoted[1] and rng.random() < 0.5:
            quote_id, unspaced = quoted
            repeat = [quote_id, unspaced[span[0]], *span[1:]]
            if filler:
                filler = filler[:-1]
            else:
                repeat = repeat[:-1]
            ids.append([bos_id, *span, *filler, *repeat])
            labels.append([IGNORE] * (2 + span_len + len(filler)) + repeat[1:])
            continue
        ids.append([bos_id, *span, *filler, *span])
        labels.append([IGNORE] * (2 + span_len + filler_len) + span[1:])
    return ids, labels


def copy_accuracy(model, tokenizer, *, sequences: int = 32, span: int = 20, filler: int = 10,
                  seed: int = 1234, quoted: bool = False) -> float:
    """Share of the repeated span's tokens (after its first) that greedy next-token prediction gets
    right, on random spans drawn from the whole vocabulary: the base model's copying, measured.

    quoted=True: every span starts with a spaced word that has an unspaced form, and the repeat is
    `"` + that unspaced word + the rest; the unspaced word is scored too. That is the copy a name
    needs on its way into JSON (``ĠJade`` in the excerpt, ``":"Jade`` in the answer)."""
    import torch

    rng = random.Random(seed)
    pool = copy_token_pool(tokenizer)
    unspaced = unspaced_variants(tokenizer)
    starts = sorted(set(pool) & set(unspaced))
    quote_id = tokenizer.convert_tokens_to_ids('"')
    batch = []
    for _ in range(sequences):
        first = [rng.choice(pool) for _ in range(span)]
        middle = [rng.choice(pool) for _ in range(filler)]
        if quoted:
            first[0] = rng.choice(starts)
            batch.append([tokenizer.bos_token_id, *first, *middle, quote_id, unspaced[first[0]], *first[1:]])
        else:
            batch.append([tokenizer.bos_token_id, *first, *middle, *first])
    x = torch.tensor(batch)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        predicted = model(input_ids=x).logits[:, :-1].argmax(-1)
    model.train(was_training)
    # Position of the repeat's first token (the quote, when quoted); predictions from the next one on.
    start = 1 + span + filler
    hits = predicted[:, start:] == x[:, start + 1:]
    return round(hits.float().mean().item(), 4)
