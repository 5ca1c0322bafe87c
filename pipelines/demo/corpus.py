"""Text for training the demo tokenizer and pre-training the tiny base model.

The pre-training mix is general text (short stories, descriptions, facts, questions and answers,
some of them as ChatML conversations so the base model knows the chat format) plus contract
boilerplate (confidentiality, termination, notices, governing law, ...). It contains no JSON and no
extraction instructions: the base model learns some English and some legal language, but not the
task, so fine-tuning has something to show.
"""

from __future__ import annotations

import datetime as dt
import random

from pipelines.demo import words as W
from pipelines.demo.dataset import (
    AGREEMENTS,
    SYSTEM_PROMPT,
    format_date,
    generate_examples,
    prompt_text,
    to_records,
)
from pipelines.demo.general import fact_sentence, general_pool, story

ROLES = sorted({r for _, main, third in AGREEMENTS.values() for r, _ in main + ([third] if third else [])})
BOILERPLATE = [
    "Each Party shall keep confidential all Confidential Information disclosed by the other Party and shall "
    "not disclose it to any third party without prior written consent.",
    "Either Party may terminate this Agreement upon {n} days' written notice if the other Party materially "
    "breaches any provision of this Agreement and fails to cure such breach.",
    "{a} shall indemnify and hold harmless {b} from and against any losses, claims and expenses arising out "
    "of any breach of this Agreement.",
    "Neither Party shall be liable for any delay or failure to perform caused by events beyond its "
    "reasonable control, including fire, flood, strike or war.",
    "{a} may not assign this Agreement without the prior written consent of {b}.",
    "All notices under this Agreement shall be in writing and delivered to the address of the receiving "
    "Party set out above.",
    "This Agreement constitutes the entire agreement between the Parties and supersedes all prior "
    "negotiations, representations and agreements.",
    "If any provision of this Agreement is held invalid, the remaining provisions shall remain in full "
    "force and effect.",
    "This Agreement shall be governed by and construed in accordance with the laws of {law}.",
    "Any dispute arising under this Agreement shall be settled by arbitration in {law}.",
    "{a} warrants that it has full power and authority to enter into this Agreement.",
    "In no event shall {a} be liable to {b} for any indirect, incidental or consequential damages.",
    "No amendment of this Agreement shall be effective unless made in writing and signed by both Parties.",
    "This Agreement may be executed in counterparts, each of which shall be deemed an original.",
    "{b} shall pay all amounts due within {n} days of the date of each invoice.",
    "The failure of {a} to enforce any right shall not be deemed a waiver of that right.",
    "{a} shall maintain accurate books and records and allow {b} to audit them once per year.",
    "Payments shall be made in {currency} by wire transfer to the account designated by {a}.",
    "The term of this Agreement begins on {date} and continues for {n} months unless terminated earlier.",
    "Notices to {name} shall be sent to its registered office in {law}.",
]
CURRENCIES = ["United States dollars", "euros", "pounds sterling", "Swiss francs", "Japanese yen"]


def contract_paragraph(rng: random.Random) -> str:
    a, b = rng.sample(ROLES, 2)
    values = {"a": a, "b": b, "n": rng.choice([10, 15, 30, 45, 60, 90]), "currency": rng.choice(CURRENCIES),
              "law": rng.choice(W.JURISDICTIONS)[0],
              "name": f"{rng.choice(W.COMPANY_FIRST)} {rng.choice(W.COMPANY_SECOND)}",
              "date": format_date(rng, dt.date(2016 + rng.randrange(14), rng.randint(1, 12),
                                               rng.randint(1, 28)))}
    clauses = [c.format(**values) for c in rng.sample(BOILERPLATE, rng.randint(3, 6))]
    heading = rng.choice(["", "General Provisions. ", "Miscellaneous. ", f"{rng.randint(2, 14)}. "])
    return heading + " ".join(clauses)


def description(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(3, 6)):
        noun, other = rng.sample(W.NOUNS, 2)
        adj, adj2 = rng.choice(W.ADJECTIVES_MORE), rng.choice(W.ADJECTIVES + W.ADJECTIVES_MORE)
        present, past = rng.choice(W.VERBS)
        sentences.append(rng.choice([
            f"The {adj} {noun} {rng.choice(W.ADVERBS)} {present} the {adj2} {other}.",
            f"Yesterday the {noun} {past} a {adj} {other}.",
            f"A {adj} {noun} stood near the {other}, {rng.choice(W.ADVERBS)} waiting.",
            f"Every {rng.choice(W.DAYS)} the {noun} {present} the {other} {rng.choice(W.ADVERBS)}.",
            f"There was a {adj} {noun} in the {adj2} {other}.",
        ]))
    return " ".join(sentences)


def chat_document(rng: random.Random, pool: list[tuple[str, str]]) -> list[dict]:
    messages = [{"role": "system", "content": "You are a helpful assistant."}] if rng.random() < 0.5 else []
    for prompt, answer in rng.sample(pool, rng.randint(1, 3)):
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return messages


def pretraining_documents(n: int, seed: int) -> list[str | list[dict]]:
    """`n` documents: a str is plain text, a list is a conversation to render with the chat template."""
    rng = random.Random(f"pretrain-{seed}")
    pool = general_pool(seed)
    docs: list[str | list[dict]] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.18:
            docs.append(story(rng))
        elif r < 0.30:
            docs.append(" ".join(fact_sentence(rng) for _ in range(rng.randint(3, 6))))
        elif r < 0.45:
            docs.append(description(rng))
        elif r < 0.55:
            pairs = rng.sample(pool, rng.randint(1, 4))
            docs.append("\n\n".join(f"Question: {p}\nAnswer: {a}" for p, a in pairs))
        elif r < 0.70:
            docs.append(chat_document(rng, pool))
        else:
            docs.append(contract_paragraph(rng))
    return docs


def tokenizer_texts(seed: int, n_docs: int = 12000, n_examples: int = 3000) -> list[str]:
    """Text to train the BPE on: the pre-training mix plus task-shaped text (excerpts, JSON answers)."""
    texts = [SYSTEM_PROMPT]
    for doc in pretraining_documents(n_docs, seed):
        texts += [doc] if isinstance(doc, str) else [f"{m['role']}\n{m['content']}" for m in doc]
    # Other examples than the datasets' (another seed): the same distribution, not the same records.
    examples = generate_examples(n_examples, seed + 7919)
    for record, ex in zip(to_records(examples, seed)["chat"], examples, strict=True):
        texts += [f"{m['role']}\n{m['content']}" for m in record["messages"]] + [prompt_text(ex)]
    return texts
