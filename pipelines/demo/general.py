"""Templated general-knowledge instructions: the "general" mix-in set and its held-out eval set.

Each item is a (prompt, answer) pair: capitals, small arithmetic, numbers in words, plurals,
opposites, past tense and upper case. The same facts appear in the pre-training corpus, so the tiny
base model knows some of them; the held-out set then measures whether fine-tuning on contracts made
it forget them.
"""

from __future__ import annotations

import random

from pipelines.demo import words as W


def number_in_words(n: int) -> str:
    if n < 20:
        return W.NUMBER_WORDS[n]
    tens, ones = divmod(n, 10)
    return W.TENS_WORDS[tens] + ("" if ones == 0 else "-" + W.NUMBER_WORDS[ones])


def general_pool(seed: int) -> list[tuple[str, str]]:
    """Every candidate (prompt, answer), in a seed-dependent order, without duplicate prompts."""
    rng = random.Random(f"general-pool-{seed}")
    pool: list[tuple[str, str]] = []
    for country, capital in W.CAPITALS:
        pool.append((f"What is the capital of {country}?", f"The capital of {country} is {capital}."))
        pool.append((f"Name the capital city of {country}.", f"{capital} is the capital of {country}."))
    for noun, plural in W.PLURALS:
        pool.append((f"What is the plural of \"{noun}\"?", f"The plural of \"{noun}\" is \"{plural}\"."))
    for word, opposite in W.OPPOSITES:
        pool.append((f"What is the opposite of \"{word}\"?",
                     f"The opposite of \"{word}\" is \"{opposite}\"."))
    for subject, present, past, obj in W.VERB_SENTENCES:
        pool.append((f"Rewrite this sentence in the past tense: {subject} {present} {obj}.",
                     f"{subject} {past} {obj}."))
    for word in W.WORDS_TO_UPPER:
        pool.append((f"Write the word \"{word}\" in capital letters.", word.upper()))
    for n in rng.sample(range(100), 60):
        pool.append((f"Write the number {n} in words.", number_in_words(n)))
    seen = set()
    for _ in range(120):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        op = rng.choice(["plus", "minus", "times"])
        if op == "minus" and b > a:
            a, b = b, a
        if op == "times":
            a, b = a % 12 + 1, b % 12 + 1
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        result = a + b if op == "plus" else a - b if op == "minus" else a * b
        pool.append((f"What is {a} {op} {b}?", f"{a} {op} {b} is {result}."))
    rng.shuffle(pool)
    return pool


def general_sets(seed: int, n_train: int = 200, n_heldout: int = 50
                 ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A training set and a disjoint held-out set (no prompt in both)."""
    pool = general_pool(seed)
    if n_train + n_heldout > len(pool):
        raise ValueError(f"only {len(pool)} distinct general prompts, asked for {n_train + n_heldout}")
    return pool[:n_train], pool[n_train:n_train + n_heldout]


def fact_sentence(rng: random.Random) -> str:
    """One declarative general-knowledge sentence for the pre-training corpus."""
    kind = rng.randrange(6)
    if kind == 0:
        country, capital = rng.choice(W.CAPITALS)
        return rng.choice([f"The capital of {country} is {capital}.",
                           f"{capital} is the capital of {country}.",
                           f"{capital} is a large city in {country}."])
    if kind == 1:
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        return rng.choice([f"{a} plus {b} is {a + b}.", f"{max(a, b)} minus {min(a, b)} is {abs(a - b)}.",
                           f"{a % 12 + 1} times {b % 12 + 1} is {(a % 12 + 1) * (b % 12 + 1)}."])
    if kind == 2:
        noun, plural = rng.choice(W.PLURALS)
        return f"One {noun}, two {plural}. The plural of \"{noun}\" is \"{plural}\"."
    if kind == 3:
        word, opposite = rng.choice(W.OPPOSITES)
        return f"The opposite of \"{word}\" is \"{opposite}\"."
    if kind == 4:
        n = rng.randrange(100)
        return f"The number {n} is written \"{number_in_words(n)}\"."
    subject, present, past, obj = rng.choice(W.VERB_SENTENCES)
    subj = subject if subject == "I" else subject.lower()
    return f"Today {subj} {present} {obj}. Yesterday {subj} {past} {obj} too."


def story(rng: random.Random) -> str:
    """A few sentences of simple narrative text."""
    name = rng.choice(W.FIRST_NAMES)
    pronoun = rng.choice(["He", "She", "They"])
    place, item, animal = rng.choice(W.PLACES), rng.choice(W.ITEMS), rng.choice(W.ANIMALS)
    adj, day, n = rng.choice(W.ADJECTIVES), rng.choice(W.DAYS), rng.randint(2, 12)
    sentences = [
        f"On {day}, {name} walked to the {place}.",
        f"The morning was {adj} and the streets were {rng.choice(W.ADJECTIVES)}.",
        f"{pronoun} bought {n} {item} and put them in a bag.",
        f"Near the {rng.choice(W.PLACES)}, a {adj} {animal} was sleeping in the sun.",
        f"{name} smiled and said hello to a friend.",
        f"Later {pronoun.lower()} went home and wrote a letter about the day.",
        f"The {animal} woke up and followed {name} for a while.",
        f"In the evening, {name} read a book by the window.",
    ]
    first, rest = sentences[0], sentences[1:]
    rng.shuffle(rest)
    return " ".join([first, *rest[: rng.randint(2, 5)]])
