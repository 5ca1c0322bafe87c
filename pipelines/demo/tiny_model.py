"""The tiny demo base model: a ~4.5M-parameter `LlamaForCausalLM`, briefly pre-trained on CPU.

Sizes are chosen for llama.cpp: hidden (256) and intermediate (768) are multiples of 256, so the
K-quants (Q4_K, Q6_K) really apply instead of silently falling back; heads 4 (head_dim 64) with 2
key/value heads (GQA, which the converter handles); an untied output layer, as in Llama 3 8B.
`rope_theta` stays at 10000, llama.cpp's default, so a converter that only reads the older
top-level `rope_theta` key still gets the right value.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MODEL_SHAPE = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=3, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=64, max_position_embeddings=1024, rms_norm_eps=1e-5,
                   rope_theta=10000.0, tie_word_embeddings=False, hidden_act="silu")


@dataclass(frozen=True)
class PretrainSettings:
    # The most steps. A run with the copy curriculum usually ends sooner: `tail_steps` after the
    # curriculum reaches the whole vocabulary (level 1.0), see `pretrain`.
    steps: int = 1500
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 1e-3
    warmup_steps: int = 30
    # After the curriculum is complete (or `steps - tail_steps` in, whichever comes first), the learning
    # rate decays (cosine, to a tenth) over this many steps and pre-training ends.
    tail_steps: int = 200
    weight_decay: float = 0.1
    seed: int = 0
    n_docs: int = 48000  # about 11,600 sequences of 256 tokens: more than one run reads
    # The copy curriculum (pipelines.demo.copy_task): a batch of repeated random spans at each step. It
    # starts on the copy_pool_start most frequent tokens, and each step whose smoothed copy loss is below
    # copy_widen_below moves it 1/copy_widen_steps of the way to the whole vocabulary (and to longer
    # spans and fillers). The prose batch joins once the level reaches prose_from_level.
    copy_batch_size: int = 64
    copy_pool_start: int = 300
    copy_widen_below: float = 2.0
    copy_widen_steps: int = 150
    prose_from_level: float = 0.1


def make_config(tokenizer):
    from transformers import LlamaConfig

    shape = {k: v for k, v in MODEL_SHAPE.items() if k != "rope_theta"}
    return LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": MODEL_SHAPE["rope_theta"]},
        dtype="float32", **shape,
    )


def init_model(tokenizer, seed: int = 0):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(make_config(tokenizer))
    model.generation_config = generation_config(tokenizer)
    return model


def generation_config(tokenizer):
    from transformers import GenerationConfig

    return GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)


def _pack(tokenizer, docs, seq_len: int) -> list[list[int]]:
    """Tokenize documents (text gets bos...eos, conversations the chat template) and cut the stream
    into `seq_len`-token sequences."""
    texts = [d for d in docs if isinstance(d, str)]
    chats = [d for d in docs if not isinstance(d, str)]
    stream: list[int] = []
    ids = tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else []
    rendered = [tokenizer.apply_chat_template(c, tokenize=False) for c in chats]
    chat_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"] if rendered else []
    text_iter, chat_iter = iter(ids), iter(chat_ids)
    for d in docs:  # keep the original document order
        stream += (next(text_iter) + [tokenizer.eos_token_id]) if isinstance(d, str) else next(chat_iter)
    return [stream[i:i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]


def training_threads() -> int:
    """Threads for the pre-training matmuls: $KUBETUNE_DEMO_THREADS, else 2.

    A fixed count, whatever the machine's cores and load, because a thread count can change the order
    of floating-point sums, and the copy curriculum amplifies such differences (an earlier recipe built
    bases copying 0.92 and 0.70 of a span on 1 and 2 threads, pipelines/demo/README.md). With the
    current recipe, 1 and 2 threads built byte-identical weights on an AMD EPYC; a fixed count keeps
    that a property of the recipe rather than of the machine's load. Two: the machines the demo is made
    for have two cores."""
    if os.environ.get("KUBETUNE_DEMO_THREADS"):
        return max(1, int(os.environ["KUBETUNE_DEMO_THREADS"]))
    return 2


def pretrain(model, tokenizer, settings: PretrainSettings, progress: bool = True) -> dict:
    """Next-token pre-training on the corpus of `pipelines.demo.corpus`. Returns loss figures."""
    import torch
    from tqdm.auto import tqdm

    from pipelines.demo.copy_task import copy_accuracy, copy_batch, copy_token_pool, unspaced_variants
    from pipelines.demo.corpus import pretraining_documents

    started = time.monotonic()
    train_seqs = _pack(tokenizer, pretraining_documents(settings.n_docs, settings.seed), settings.seq_len)
    heldout = _pack(tokenizer, pretraining_documents(400, settings.seed + 10_000), settings.seq_len)[:16]
    random.Random(settings.seed).shuffle(train_seqs)
    data = torch.tensor(train_seqs, dtype=torch.long)
    heldout_t = torch.tensor(heldout, dtype=torch.long)

    previous_threads = torch.get_num_threads()
    threads = training_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(settings.seed)
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
        no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
        groups = [{"params": decay, "weight_decay": settings.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=settings.lr, betas=(0.9, 0.95))

        heldout_before = _eval_loss(model, heldout_t)
        copy_before = copy_accuracy(model, tokenizer)
        copy_rng = random.Random(f"copy-{settings.seed}")
        pool = copy_token_pool(tokenizer)
        quoted = (tokenizer.convert_tokens_to_ids('"'), unspaced_variants(tokenizer))
        level, copy_loss_smoothed = 0.0, float("inf")
        # The schedule follows the curriculum, not a fixed step count: warm-up, then a constant rate for
        # as long as the copy circuit is forming and widening (when it forms depends on floating-point
        # details such as the thread count), then a fixed decay once the curriculum is complete. A
        # fixed cosine would give a late-forming circuit a rate too low to finish the widening.
        tail_start = max(0, settings.steps - settings.tail_steps)
        tail_steps = settings.steps - tail_start
        model.train()
        losses: list[float] = []
        copy_losses: list[float] = []
        level_trace: list[float] = []  # the curriculum's level every 100 steps: when copying formed
        prose_batches = 0
        bar = tqdm(total=settings.steps, desc="pre-training tiny model", disable=not progress, unit="step")
        step = 0
        while step < tail_start + tail_steps:
            if step < settings.warmup_steps:
                scale = (step + 1) / settings.warmup_steps
            elif step < tail_start:
                scale = 1.0
            else:
                scale = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - tail_start) / max(1, tail_steps)))
            for group in opt.param_groups:
                group["lr"] = settings.lr * scale
            total = 0.0
            # prose once the curriculum has started, and always in the decay (a short capped build,
            # e.g. the tests' 30 steps, is all decay: it still learns some language)
            if not settings.copy_batch_size or level >= settings.prose_from_level or step >= tail_start:
                start = (prose_batches * settings.batch_size) % max(1, len(data) - settings.batch_size)
                prose_batches += 1
                batch = data[start:start + settings.batch_size]
                loss = model(input_ids=batch, labels=batch).loss
                total = loss
                losses.append(loss.item())
            if settings.copy_batch_size:
                ids, labels = copy_batch(copy_rng, pool, level, settings.copy_batch_size,
                                         tokenizer.bos_token_id, settings.copy_pool_start, quoted)
                copy_loss = labelled_positions_loss(model, torch.tensor(ids), torch.tensor(labels))
                total = total + copy_loss
                copy_losses.append(copy_loss.item())
                copy_loss_smoothed = copy_losses[-1] if step == 0 else (
                    0.9 * copy_loss_smoothed + 0.1 * copy_losses[-1])
                if copy_loss_smoothed < settings.copy_widen_below:
                    level = min(1.0, level + 1 / settings.copy_widen_steps)
                    if level == 1.0 and step + 1 < tail_start:
                        tail_start = step + 1  # complete: decay from the next step on
                        bar.total = tail_start + tail_steps
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            bar.update()
            if settings.copy_batch_size and step % 100 == 0:
                level_trace.append(round(level, 3))
            if step % 10 == 1:
                bar.set_postfix(**({"loss": f"{losses[-1]:.3f}"} if losses else {}),
                                **({"copy": f"{copy_losses[-1]:.3f}", "level": f"{level:.2f}"} if copy_losses else {}))
        bar.close()
        model.eval()
        heldout_after = _eval_loss(model, heldout_t)
        copy_after = copy_accuracy(model, tokenizer)
        quoted_copy_after = copy_accuracy(model, tokenizer, quoted=True)
    finally:
        torch.set_num_threads(previous_threads)
    tail = losses[-20:]
    log.info("pre-trained %d steps on %d thread(s) in %.0fs: held-out loss %.3f -> %.3f, copy accuracy "
             "%.3f -> %.3f", step, threads, time.monotonic() - started, heldout_before, heldout_after,
             copy_before, copy_after)
    copy_tail = copy_losses[-20:]
    return {
        "steps": step, "prose_tokens": prose_batches * settings.batch_size * settings.seq_len,
        "decay_started_at_step": tail_start,
        "seconds": round(time.monotonic() - started, 1), "threads": threads,
        "first_loss": round(losses[0], 4) if losses else None,
        "final_loss": round(sum(tail) / len(tail), 4) if tail else None,
        "heldout_loss_before": round(heldout_before, 4), "heldout_loss_after": round(heldout_after, 4),
        "copy_accuracy_before": copy_before, "copy_accuracy_after": copy_after,
        "quoted_copy_accuracy_after": quoted_copy_after,
        "copy_final_loss": round(sum(copy_tail) / len(copy_tail), 4) if copy_tail else None,
        "copy_level_final": round(level, 4) if settings.copy_batch_size else None,
        "copy_level_every_100_steps": level_trace,
        "settings": asdict(settings),
    }


def labelled_positions_loss(model, ids, labels):
    """The causal LM loss of `model(input_ids=ids, labels=labels).loss`, with the output layer applied
    only where a label is scored. A copy sequence scores only its repeat (about 40% of it), and the
    output layer (256 x 4,096) is a third of this model's compute: skipping it elsewhere makes a
    copy batch about 25% cheaper (measured), with the same loss."""
    import torch.nn.functional as F

    hidden = model.model(input_ids=ids).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    scored = targets != -100
    return F.cross_entropy(model.lm_head(hidden[scored]).float(), targets[scored])


def _eval_loss(model, data) -> float:
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        loss = model(input_ids=data, labels=data).loss.item()
    model.train(was_training)
    return loss


def save_model(model, tokenizer, out_dir: Path) -> None:
    """Weights (safetensors only), config, generation config and tokenizer with its chat template."""
    from pipelines.demo.tokenizer import save_tokenizer

    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    save_tokenizer(tokenizer, out_dir)
    leftovers = [p.name for p in out_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    if leftovers:
        raise RuntimeError(f"pickle weights written to {out_dir}: {leftovers}")


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())
