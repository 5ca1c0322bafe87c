"""Batched greedy generation and completion-only scoring, one batch at a time.

Nothing here holds more than one batch of tensors: callers feed a stream of examples through
`batched` and write the results out as they come. Generation pads on the left (so every row's new
tokens start at the same column), decodes greedily up to `max_new_tokens`, and stops at the model's
eos or the chat template's end-of-turn token. Scoring pads on the right and keeps only the
completion tokens' log-probabilities (see `metrics.completion_nll`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TypeVar

from components.eval.metrics import completion_nll

T = TypeVar("T")

# End-of-turn tokens of common chat templates; generation stops at any that the vocabulary has.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end_of_turn|>",
                      "<|end|>", "<|endoftext|>")


def batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(islice(it, n)):
        yield chunk


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """eos of the generation config and the tokenizer, plus any end-of-turn special token present."""
    ids: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos, tokenizer.eos_token_id):
        ids += value if isinstance(value, list | tuple) else [value] if value is not None else []
    vocab = tokenizer.get_vocab()
    special = set(getattr(tokenizer, "all_special_tokens", ())) | set(tokenizer.get_added_vocab())
    ids += [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab and t in special]
    return sorted(set(int(i) for i in ids))


def pad_token_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is None:
        from components.common.errors import KubetuneError

        raise KubetuneError("the tokenizer has neither a pad nor an eos token; batched generation needs one")
    return int(tokenizer.eos_token_id)


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int
    stopped: bool  # ended at a stop token (False: cut at max_new_tokens)


def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, stop_ids: list[int],
             max_prompt_tokens: int | None = None) -> list[Generation]:
    """Greedy continuations of already-rendered prompts (chat template applied, special tokens in)."""
    import torch
    from transformers import GenerationConfig

    enc = tokenizer(list(prompts), add_special_tokens=False, padding=True, return_tensors="pt",
                    padding_side="left")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if max_prompt_tokens is not None and ids.shape[1] > max_prompt_tokens:
        ids, mask = ids[:, -max_prompt_tokens:], mask[:, -max_prompt_tokens:]  # keep the prompts' ends
    device = _device(model)
    pad = pad_token_id(tokenizer)
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                              eos_token_id=stop_ids or None, pad_token_id=pad)
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             generation_config=config)
    new = out[:, ids.shape[1]:].tolist()
    stops = set(stop_ids)
    results = []
    for row in new:
        cut = next((i for i, t in enumerate(row) if t in stops), None)
        tokens = row if cut is None else row[:cut]  # a row that never stopped was never padded
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        results.append(Generation(text=text.strip(), new_tokens=len(tokens), stopped=cut is not None))
    return results


def score_completions(model, tokenizer, pairs: Sequence[tuple[str, str]], *,
                      max_tokens: int | None = None) -> list[tuple[float, int]]:
    """(sum of NLL, token count) over each completion's tokens, given its prompt.

    Prompt and completion are tokenized separately (no special tokens added: the rendered text has
    them) and concatenated, so the boundary is exact. Sequences longer than `max_tokens` lose the
    start of their prompt, never completion tokens.
    """
    import torch

    seqs, masks = [], []
    for prompt, completion in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        c = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if max_tokens is not None and len(p) + len(c) > max_tokens:
            c = c[:max_tokens]  # a completion longer than the model's context keeps its start
            keep = max_tokens - len(c)
            p = p[len(p) - keep:] if keep else []
        seqs.append(p + c)
        masks.append([0] * len(p) + [1] * len(c))
    width = max(len(s) for s in seqs)
    pad = pad_token_id(tokenizer)
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    device = _device(model)
    with torch.inference_mode():
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
    out = []
    for i, (s, m) in enumerate(zip(seqs, masks, strict=True)):
        n = len(s)
        out.append(completion_nll(logits[i, :n], ids[i, :n].to(logits.device),
                                  torch.tensor(m, device=logits.device)))
    del logits
    return out


def _device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:
        return "cpu"
