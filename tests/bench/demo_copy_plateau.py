# ruff: noqa  (a research script, kept as it was run)
"""Research script behind the demo's pre-training learning rate (pipelines/demo/README.md, "What
changed"): train the tiny base on copy sequences alone (prose joins at --prose-from-level) and report
the step at which the smoothed copy loss first falls below the widening threshold, i.e. the step at
which the copy curriculum starts. Not part of the product or the tests.

    .venv/bin/python tests/bench/demo_copy_plateau.py --name lr1e3 --lr 1e-3 --prose-from-level 0.1 \
        --sched-steps 100000 --max-steps 700

One line per 25 steps: (step, seconds, smoothed copy loss, level, prose loss); a JSON summary at the end.
"""
import argparse, json, math, random, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import torch
from tokenizers import Tokenizer

from pipelines.demo.assets import _tokenizer_json
from pipelines.demo.copy_task import copy_accuracy, copy_batch, copy_token_pool, unspaced_variants
from pipelines.demo.corpus import pretraining_documents
from pipelines.demo.tiny_model import _pack, init_model, labelled_positions_loss
from pipelines.demo.tokenizer import wrap

p = argparse.ArgumentParser()
p.add_argument("--name", required=True)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--lr", type=float, default=2e-3)
p.add_argument("--warmup", type=int, default=30)
p.add_argument("--sched-steps", type=int, default=900)  # cosine length; huge = constant
p.add_argument("--prose-batch", type=int, default=8)
p.add_argument("--prose-from-level", type=float, default=0.0)  # no prose until level >= this
p.add_argument("--copy-batch", type=int, default=64)
p.add_argument("--pool-start", type=int, default=300)
p.add_argument("--widen-below", type=float, default=2.0)
p.add_argument("--widen-steps", type=int, default=300)
p.add_argument("--max-steps", type=int, default=500)
p.add_argument("--stop-level", type=float, default=0.2)
p.add_argument("--wd", type=float, default=0.1)
a = p.parse_args()
torch.set_num_threads(a.threads)
tok = wrap(Tokenizer.from_str(_tokenizer_json(a.seed)))
model = init_model(tok, a.seed)
seqs = _pack(tok, pretraining_documents(12000, a.seed), 256)
random.Random(a.seed).shuffle(seqs)
data = torch.tensor(seqs)
torch.manual_seed(a.seed)
decay = [q for n, q in model.named_parameters() if q.ndim >= 2 and "embed" not in n]
nod = [q for n, q in model.named_parameters() if not (q.ndim >= 2 and "embed" not in n)]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": nod, "weight_decay": 0}],
                        lr=a.lr, betas=(0.9, 0.95))


def lr_at(s):
    if s < a.warmup:
        return (s + 1) / a.warmup
    t = (s - a.warmup) / max(1, a.sched_steps - a.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1, t)))


sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
rng = random.Random(f"copy-{a.seed}")
pool = copy_token_pool(tok)
quoted = (tok.convert_tokens_to_ids('"'), unspaced_variants(tok))
level, sm = 0.0, float("inf")
t0 = time.monotonic(); trace = []; first_widen = None; pi = 0
for step in range(a.max_steps):
    total = 0; pl = float("nan")
    if a.prose_batch and level >= a.prose_from_level:
        start = (pi * a.prose_batch) % (len(data) - a.prose_batch); pi += 1
        b = data[start:start + a.prose_batch]
        loss = model(input_ids=b, labels=b).loss; total = loss; pl = loss.item()
    ids, labels = copy_batch(rng, pool, level, a.copy_batch, tok.bos_token_id, a.pool_start, quoted)
    cl = labelled_positions_loss(model, torch.tensor(ids), torch.tensor(labels))
    total = total + cl
    sm = cl.item() if step == 0 else 0.9 * sm + 0.1 * cl.item()
    if sm < a.widen_below:
        if first_widen is None:
            first_widen = (step, round(time.monotonic() - t0, 1))
        level = min(1.0, level + 1 / a.widen_steps)
    total.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step(); sched.step(); opt.zero_grad(set_to_none=True)
    if step % 25 == 24:
        trace.append((step + 1, round(time.monotonic() - t0), round(sm, 3), round(level, 3), round(pl, 3)))
        print(a.name, trace[-1], flush=True)
    if level >= a.stop_level:
        break
print(json.dumps({"name": a.name, "args": vars(a), "first_widen": first_widen, "steps": step + 1,
                  "seconds": round(time.monotonic() - t0, 1), "level": level,
                  "copy_acc": copy_accuracy(model, tok), "trace": trace}), flush=True)
