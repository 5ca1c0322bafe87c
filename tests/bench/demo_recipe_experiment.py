# ruff: noqa  (a research script, kept as it was run)
"""Research script behind the demo recipe (pipelines/demo/README.md, "Why this recipe"): pre-train the
tiny base with or without the copy curriculum, probe its copying, then fine-tune (full or LoRA) with a
plain PyTorch loop on the first 1,800 chat records and score field F1 on the first 64 single-turn ones
of the last 200. Not part of the product or the tests; the figures of the real pipeline come from
`kubetune demo`. Run from the repository root, e.g.

    .venv/bin/python tests/bench/demo_recipe_experiment.py --steps 900 --copy-batch 64 --pool0 300 \
        --grow-below 2.0 --vocab-ramp 300 --ft-steps 600 --threads 2

Its copy batches predate pipelines/demo/copy_task.py (no quoted repeats).
"""
import argparse, json, math, random, sys, time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
import torch
from tokenizers import Tokenizer

from pipelines.demo.assets import _tokenizer_json
from pipelines.demo.tokenizer import wrap
from pipelines.demo import tiny_model as TM
from pipelines.demo.corpus import pretraining_documents
from pipelines.demo.dataset import generate_examples, to_records

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=600)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--copy-batch", type=int, default=8)
p.add_argument("--seq", type=int, default=256)
p.add_argument("--lr", type=float, default=2e-3)
p.add_argument("--layers", type=int, default=3)
p.add_argument("--hidden", type=int, default=256)
p.add_argument("--inter", type=int, default=768)
p.add_argument("--heads", type=int, default=4)
p.add_argument("--kv", type=int, default=2)
p.add_argument("--vocab-ramp", type=int, default=300, help="steps to widen copy ids to full vocab")
p.add_argument("--copy-until", type=float, default=1.0, help="fraction of steps with copy batches")
p.add_argument("--ft-steps", type=int, default=300)
p.add_argument("--ft-lr", type=float, default=1e-3)
p.add_argument("--ft-batch", type=int, default=8)
p.add_argument("--stage1-steps", type=int, default=0)
p.add_argument("--stage1-pool", type=int, default=1000)
p.add_argument("--stage1-batch", type=int, default=32)
p.add_argument("--grow-below", type=float, default=1.0)
p.add_argument("--pool0", type=int, default=1000)
p.add_argument("--lora-r", type=int, default=0)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--save", default="")
p.add_argument("--load", default="")
p.add_argument("--n-eval", type=int, default=64)
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
rng = random.Random(0)

tok = wrap(Tokenizer.from_str(_tokenizer_json(0)))
V = len(tok)
TM.MODEL_SHAPE.update(hidden_size=args.hidden, intermediate_size=args.inter, num_hidden_layers=args.layers,
                      num_attention_heads=args.heads, num_key_value_heads=args.kv,
                      head_dim=args.hidden // args.heads)
model = TM.init_model(tok, 0)
print("params", TM.param_count(model), flush=True)

# word-ish token ids: real BPE tokens that are words (no specials)
word_ids = [i for i in range(4, V) if not tok.convert_ids_to_tokens(i).startswith("<|")]


def copy_batch(n, f):
    """one span per sequence, repeated after some filler; curriculum fraction f in [0,1]."""
    pool = word_ids[: int(args.pool0 + (len(word_ids) - args.pool0) * f)]
    L = rng.randint(10, int(20 + 40 * f))
    F = rng.randint(0, int(40 * f))
    ids, labels = [], []
    for _ in range(n):
        span = [rng.choice(pool) for _ in range(L)]
        filler = [rng.choice(pool) for _ in range(F)]
        ids.append([tok.bos_token_id] + span + filler + span)
        labels.append([-100] * (2 + L + F) + span[1:])
    return torch.tensor(ids), torch.tensor(labels)


@torch.no_grad()
def probe(n=16, pool=None, L=30, F=20):
    model.eval()
    r = random.Random(123)
    pool = pool or len(word_ids)
    ids, labs = [], []
    for _ in range(n):
        span = [r.choice(word_ids[:pool]) for _ in range(L)]
        filler = [r.choice(word_ids[:pool]) for _ in range(F)]
        ids.append([tok.bos_token_id] + span + filler + span)
    x = torch.tensor(ids)
    logits = model(input_ids=x).logits
    pred = logits[:, :-1].argmax(-1)
    tgt = x[:, 1:]
    start = 1 + L + F  # index of second span's first token in x
    m = pred[:, start:] == tgt[:, start:]  # predicting tokens 2..30 of the second span
    model.train()
    return m.float().mean().item()


if args.load:
    from safetensors.torch import load_file
    model.load_state_dict(load_file(args.load), strict=False)
if True:
    docs = pretraining_documents(16000 * max(1, args.steps // 300) if args.steps else 10, 0)
    seqs = TM._pack(tok, docs, args.seq)
    random.Random(0).shuffle(seqs)
    data = torch.tensor(seqs)
    print("corpus seqs", len(seqs), flush=True)
    decay = [p_ for n, p_ in model.named_parameters() if p_.ndim >= 2 and "embed" not in n]
    nodecay = [p_ for n, p_ in model.named_parameters() if not (p_.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": nodecay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    warm = 30
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, args.steps - warm))))
    t0 = time.monotonic()
    model.train()
    opt1 = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    print("stage1 lr", args.lr, "batch", args.stage1_batch, flush=True)
    for step in range(args.stage1_steps):
        ids, labs = [], []
        for _ in range(args.stage1_batch):
            L, F = 20, 12
            Lr, Fr = rng.randint(8, 20), rng.randint(0, 12)
            span = [rng.choice(word_ids[: args.stage1_pool]) for _ in range(Lr)]
            fill = [rng.choice(word_ids[: args.stage1_pool]) for _ in range(Fr)]
            pad = [rng.choice(word_ids[: args.stage1_pool]) for _ in range(2 * (L - Lr) + (F - Fr))]
            ids.append([tok.bos_token_id] + span + fill + span + pad)
            labs.append([-100] * (2 + Lr + Fr) + span[1:] + [-100] * len(pad))
        for g in opt1.param_groups:
            g["lr"] = args.lr * min(1.0, (step + 1) / 30)
        l1 = model(input_ids=torch.tensor(ids), labels=torch.tensor(labs)).loss
        l1.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt1.step(); opt1.zero_grad()
        if step % 50 == 0 or step == args.stage1_steps - 1:
            print(f"s1 step {step} loss {l1.item():.3f} probe {probe(pool=1000, L=20, F=0):.3f}/{probe():.3f} t {time.monotonic() - t0:.0f}s", flush=True)
    frac, ema = 0.0, 10.0
    for step in range(args.steps):
        b = data[(step * args.batch) % (len(data) - args.batch):][: args.batch]
        loss = model(input_ids=b, labels=b).loss
        closs = torch.tensor(0.0)
        if args.copy_batch and step < args.copy_until * args.steps:
            cx, cy = copy_batch(args.copy_batch, frac)
            closs = model(input_ids=cx, labels=cy).loss
        ema = 0.9 * ema + 0.1 * closs.item()
        if ema < args.grow_below:
            frac = min(1.0, frac + 1.0 / args.vocab_ramp)
        (loss + closs).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); sched.step(); opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.3f} copy {closs.item():.3f} f {frac:.2f} probe {probe(pool=1000, L=20, F=0):.3f}/{probe():.3f} "
                  f"t {time.monotonic() - t0:.0f}s", flush=True)
    print(f"pretrain done {time.monotonic() - t0:.0f}s probe {probe(pool=1000, L=20, F=0):.3f}/{probe():.3f}", flush=True)
    if args.save:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.save)

if args.ft_steps <= 0:
    sys.exit(0)

# ---------------- fine-tune on the task (assistant-only loss, chat records) -------------
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from components.eval.metrics import json_field_scores, parse_json, is_invalid

examples = generate_examples(2000, 0)
recs = to_records(examples, 0)["chat"]
train_recs, test_recs = recs[:1800], recs[1800:]


def encode(msgs):
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids = out["input_ids"]; mask = out["assistant_masks"]
    return ids, [i if m else -100 for i, m in zip(ids, mask)]


enc = [encode(r["messages"]) for r in train_recs]
print("max train len", max(len(e[0]) for e in enc), flush=True)
if args.lora_r:
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    model.print_trainable_parameters()
opt = torch.optim.AdamW([p_ for p_ in model.parameters() if p_.requires_grad], lr=args.ft_lr, weight_decay=0.0)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / args.ft_steps))
model.train()
t0 = time.monotonic()
order = list(range(len(enc)))
random.Random(1).shuffle(order)
for step in range(args.ft_steps):
    idx = [order[(step * args.ft_batch + j) % len(order)] for j in range(args.ft_batch)]
    L = max(len(enc[i][0]) for i in idx)
    x = torch.tensor([enc[i][0] + [tok.pad_token_id] * (L - len(enc[i][0])) for i in idx])
    y = torch.tensor([enc[i][1] + [-100] * (L - len(enc[i][1])) for i in idx])
    att = (torch.arange(L)[None] < torch.tensor([len(enc[i][0]) for i in idx])[:, None]).long()
    loss = model(input_ids=x, attention_mask=att, labels=y).loss
    loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step(); sched.step(); opt.zero_grad(set_to_none=True)
    if step % 50 == 0 or step == args.ft_steps - 1:
        print(f"ft step {step} loss {loss.item():.3f} t {time.monotonic() - t0:.0f}s", flush=True)

model.eval()
f1s, valid = [], []
samples = []
with torch.no_grad():
    evals = [r for r in test_recs if len(r["messages"]) == 3][: args.n_eval]
    for k in range(0, len(evals), 16):
        chunk = evals[k:k + 16]
        prompts = [tok.apply_chat_template(r["messages"][:2], tokenize=True, add_generation_prompt=True) for r in chunk]
        prompts = [list(p_["input_ids"]) if hasattr(p_, "keys") else list(p_) for p_ in prompts]
        L = max(map(len, prompts))
        x = torch.tensor([[tok.pad_token_id] * (L - len(p_)) + p_ for p_ in prompts])
        att = torch.tensor([[0] * (L - len(p_)) + [1] * len(p_) for p_ in prompts])
        out = model.generate(input_ids=x, attention_mask=att, max_new_tokens=160, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        for r, o in zip(chunk, out):
            text = tok.decode(o[L:], skip_special_tokens=True)
            ref = r["messages"][2]["content"]
            s = json_field_scores(text, ref)
            f1s.append(s.f1); valid.append(0.0 if is_invalid(parse_json(text)) else 1.0)
            samples.append((ref, text))
print(f"RESULT f1 {sum(f1s)/len(f1s):.3f} valid {sum(valid)/len(valid):.3f} n {len(f1s)} ft {time.monotonic()-t0:.0f}s", flush=True)
for ref, text in samples[:3]:
    print("REF ", ref); print("PRED", text)
