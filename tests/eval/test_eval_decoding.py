"""Generation and scoring on the real tiny model: left-padded batches give the same greedy outputs and
the same completion NLL as one example at a time, and the NLL is the completion tokens' only."""

from __future__ import annotations

import pytest
import torch

from components.eval.generate import generate, score_completions, stop_token_ids


@pytest.fixture(scope="module")
def model_and_tokenizer(demo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(demo.model_dir).eval(), AutoTokenizer.from_pretrained(demo.model_dir)


def chat(tok, text):
    return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


def test_stop_tokens_include_end_of_turn(model_and_tokenizer):
    model, tok = model_and_tokenizer
    ids = stop_token_ids(tok, model)
    assert tok.convert_tokens_to_ids("<|im_end|>") in ids and tok.pad_token_id not in ids


def test_batched_greedy_equals_one_at_a_time(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompts = [chat(tok, "Short."), chat(tok, "A much longer question about contracts, parties and dates " * 3)]
    stops = stop_token_ids(tok, model)
    batch = generate(model, tok, prompts, max_new_tokens=12, stop_ids=stops)
    single = [generate(model, tok, [p], max_new_tokens=12, stop_ids=stops)[0] for p in prompts]
    assert [g.text for g in batch] == [g.text for g in single]
    assert all(g.new_tokens <= 12 for g in batch) and all(g.text for g in batch)


def test_completion_nll_batched_and_by_hand(model_and_tokenizer):
    model, tok = model_and_tokenizer
    pairs = [(chat(tok, "Hi"), "Hello there.<|im_end|>"), (chat(tok, "A longer prompt " * 6), "Yes.<|im_end|>")]
    batch = score_completions(model, tok, pairs)
    single = [score_completions(model, tok, [p])[0] for p in pairs]
    for (nb, tb), (ns, ts) in zip(batch, single, strict=True):
        assert tb == ts and nb == pytest.approx(ns, rel=1e-5)
    prompt, completion = pairs[0]
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(completion, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=torch.tensor([p + c])).logits[0].float(), -1)
    by_hand = -sum(logp[len(p) + i - 1, t].item() for i, t in enumerate(c))
    assert batch[0] == (pytest.approx(by_hand, rel=1e-5), len(c))
