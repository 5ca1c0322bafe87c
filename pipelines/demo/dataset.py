"""The synthetic task: contract excerpt in, compact JSON of parties and effective date out.

Each example is a few sentences of contract language naming 2 or 3 parties, their roles
(Licensor/Licensee, Seller/Buyer, Employer/Employee, Lender/Borrower, ...) and jurisdictions, and an
effective date in one of several formats; some excerpts also carry a distracting date (an expiry,
a payment date) or a governing-law jurisdiction. The answer is

    {"parties":[{"name":"...","role":"...","jurisdiction":"..."}],"effective_date":"YYYY-MM-DD"}

with the parties in the order they appear. Everything is deterministic in the seed: the same seed
gives byte-identical files (`write_datasets`).
"""

from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import dataclass
from pathlib import Path

from pipelines.demo import words as W
from pipelines.demo.general import general_sets

SYSTEM_PROMPT = ("You extract the parties and the effective date from contracts. "
                 "Answer with compact JSON only.")
INSTRUCTIONS = [
    "Extract the parties (name, role, jurisdiction) and the effective date from this contract excerpt. "
    "Answer with JSON only.",
    "Read the contract excerpt and return a JSON object with the parties and the effective date "
    "(YYYY-MM-DD).",
    "List every party in the excerpt with its role and jurisdiction, and give the effective date, as "
    "compact JSON.",
    "Return the parties and the effective date of this agreement as JSON.",
]

# title choices, then (role, kind) for the two main parties, then the optional third party.
# kind: "company" or "person" or "any".
AGREEMENTS = {
    "license": (["Software License Agreement", "License Agreement", "Patent License Agreement",
                 "Trademark License Agreement"],
                [("Licensor", "company"), ("Licensee", "any")], ("Guarantor", "company")),
    "purchase": (["Asset Purchase Agreement", "Share Purchase Agreement", "Purchase Agreement",
                  "Sale Agreement"],
                 [("Seller", "any"), ("Buyer", "company")], ("Escrow Agent", "company")),
    "employment": (["Employment Agreement", "Executive Employment Agreement"],
                   [("Employer", "company"), ("Employee", "person")], ("Guarantor", "company")),
    "loan": (["Loan Agreement", "Credit Agreement", "Term Loan Agreement"],
             [("Lender", "company"), ("Borrower", "any")], ("Guarantor", "any")),
    "services": (["Master Services Agreement", "Consulting Agreement", "Services Agreement"],
                 [("Provider", "company"), ("Customer", "company")], None),
    "supply": (["Supply Agreement", "Distribution Agreement"],
               [("Supplier", "company"), ("Distributor", "company")], ("Agent", "company")),
}
CLAUSES = {
    "license": ["{0} grants {1} a non-exclusive, non-transferable license to use the Licensed Software.",
                "{1} shall pay {0} a royalty of {pct} percent of Net Sales each quarter.",
                "{1} shall not sublicense the Licensed Patents without the prior written consent of {0}."],
    "purchase": ["{0} agrees to sell, and {1} agrees to purchase, the Assets for {money}.",
                 "{1} shall pay the purchase price at Closing by wire transfer.",
                 "{0} represents that it holds good title to the Assets."],
    "employment": ["{0} agrees to employ {1} as {job}.",
                   "{1} shall receive an annual base salary of {money}.",
                   "{1} shall devote full business time and attention to the business of {0}."],
    "loan": ["{0} agrees to lend {1} the principal amount of {money}.",
             "Interest shall accrue at {pct} percent per annum.",
             "{1} shall repay the Loan in twelve equal monthly installments."],
    "services": ["{0} shall provide the Services described in Schedule A.",
                 "{1} shall pay each undisputed invoice within thirty days.",
                 "{0} shall perform the Services in a professional manner."],
    "supply": ["{0} shall supply the Products to {1} at the prices in Exhibit B.",
               "{1} shall use reasonable efforts to promote the Products in the Territory.",
               "{1} shall place purchase orders at least {pct} days in advance."],
}
THIRD_CLAUSES = {"Guarantor": "{2} unconditionally guarantees the obligations of {1}.",
                 "Escrow Agent": "{2} shall hold the deposit in escrow until Closing.",
                 "Agent": "{2} shall act as agent of {0} for all notices."}
JOBS = ["Chief Financial Officer", "Senior Engineer", "Sales Director", "Head of Research", "Product Manager"]
ENTITY = {"Inc.": "corporation", "Corp.": "corporation", "LLC": "limited liability company",
          "L.P.": "limited partnership", "Ltd.": "company"}


@dataclass(frozen=True)
class Party:
    name: str
    role: str
    jurisdiction: str  # as it appears in the excerpt, without a leading "the"


@dataclass(frozen=True)
class ContractExample:
    excerpt: str
    parties: tuple[Party, ...]
    effective_date: dt.date
    instruction: str

    def target(self) -> dict:
        return {"parties": [{"name": p.name, "role": p.role, "jurisdiction": p.jurisdiction}
                            for p in self.parties],
                "effective_date": self.effective_date.isoformat()}

    def target_json(self) -> str:
        return json.dumps(self.target(), separators=(",", ":"), ensure_ascii=False)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def format_date(rng: random.Random, d: dt.date) -> str:
    month = W.MONTHS[d.month - 1]
    short = month if len(month) <= 4 else month[:3] + "."
    return rng.choice([
        f"{month} {d.day}, {d.year}", f"{d.day} {month} {d.year}",
        f"the {_ordinal(d.day)} day of {month}, {d.year}", d.isoformat(), f"{short} {d.day}, {d.year}",
        f"{month} {_ordinal(d.day)}, {d.year}", f"{_ordinal(d.day)} {month} {d.year}",
    ])


def _random_date(rng: random.Random) -> dt.date:
    return dt.date(2015, 1, 1) + dt.timedelta(days=rng.randrange(16 * 365))


def _company(rng: random.Random, used: set[str]) -> tuple[str, str, str]:
    """A company name, its jurisdiction and the phrase that introduces it."""
    while True:
        jurisdiction, kind, suffixes = rng.choice(W.JURISDICTIONS)
        suffix = rng.choice(suffixes)
        name = f"{rng.choice(W.COMPANY_FIRST)} {rng.choice(W.COMPANY_SECOND)} {suffix}"
        if name.split()[0] not in {n.split()[0] for n in used}:
            break
    if kind == "state":
        entity = ENTITY.get(suffix, "company")
        region = "Province" if jurisdiction in ("Ontario", "British Columbia") else "State"
        phrase = rng.choice([f"a {jurisdiction} {entity}",
                             f"a {entity} organized under the laws of the {region} of {jurisdiction}",
                             f"a {entity} existing under the laws of {jurisdiction}"])
    else:
        phrase = rng.choice([f"a company incorporated in {jurisdiction}",
                             f"a company organized and existing under the laws of {jurisdiction}",
                             f"a company registered in {jurisdiction}",
                             f"incorporated under the laws of {jurisdiction}"])
    return name, jurisdiction, phrase


def _person(rng: random.Random, used: set[str]) -> tuple[str, str, str]:
    while True:
        name = f"{rng.choice(W.FIRST_NAMES)} {rng.choice(W.LAST_NAMES)}"
        if rng.random() < 0.2:
            first, last = name.split()
            name = f"{first} {rng.choice('ABCDEFGHJKLMNPRSTW')}. {last}"
        if name not in used:
            break
    residence = rng.choice(W.RESIDENCES)
    phrase = rng.choice([f"an individual residing in {residence}", f"an individual resident in {residence}",
                         f"a resident of {residence}"])
    return name, residence, phrase


def _join(items: list[str], sep: str = ", ") -> str:
    if len(items) == 1:
        return items[0]
    return sep.join(items[:-1]) + (";" if sep == "; " else "") + " and " + items[-1]


def make_example(rng: random.Random) -> ContractExample:
    kind = rng.choice(sorted(AGREEMENTS))
    titles, main_roles, third = AGREEMENTS[kind]
    title = rng.choice(titles)
    roles = list(main_roles) + ([third] if third and rng.random() < 0.3 else [])
    used: set[str] = set()
    parties, intros = [], []
    for role, party_kind in roles:
        person = party_kind == "person" or (party_kind == "any" and rng.random() < 0.35)
        name, jurisdiction, phrase = (_person if person else _company)(rng, used)
        used.add(name)
        parties.append(Party(name, role, jurisdiction.removeprefix("the ")))
        intros.append((name, phrase, role))

    inline_roles = rng.random() < 0.75
    label = rng.choice(['("{r}")', '(the "{r}")', '(hereinafter referred to as the "{r}")'])
    described = [f"{n}, {p} " + label.format(r=r) if inline_roles else f"{n}, {p}" for n, p, r in intros]
    plist = _join(described, "; " if len(described) > 2 else ", ")
    between = "among" if len(parties) > 2 else "between"
    date = _random_date(rng)
    dtext = format_date(rng, date)
    sentences = [rng.choice([
        f"This {title} (the \"Agreement\") is entered into as of {dtext} (the \"Effective Date\") by and "
        f"{between} {plist}.",
        f"This {title} is made on {dtext} {between} {plist}.",
        f"{title}. This Agreement, effective as of {dtext}, is made by and {between} {plist}.",
        f"THIS {title.upper()} is dated {dtext} and is made {between} {plist}.",
        f"This {title} is entered into by and {between} {plist}. This Agreement shall become effective on "
        f"{dtext} (the \"Effective Date\").",
        f"The parties to this {title} are {plist}. The Agreement takes effect on {dtext}.",
    ])]
    if not inline_roles:
        sentences.append(rng.choice([
            "In this Agreement, " + _join([f"{n} acts as {r}" for n, _, r in intros]) + ".",
            _join([f"{n} is referred to as the \"{r}\"" for n, _, r in intros]) + ".",
        ]))
    names = [p.role for p in parties]  # clauses refer to the parties by role, as contracts do
    values = {"pct": rng.choice([3, 5, 7, 8, 10, 12, 15]), "job": rng.choice(JOBS),
              "money": f"${rng.randint(5, 950) * 1000:,}"}
    n_clauses = rng.randint(0, 2 if len(parties) == 2 else 1)  # keeps examples under ~250 tokens
    clauses = [c.format(*names, **values) for c in rng.sample(CLAUSES[kind], n_clauses)]
    if len(parties) > 2:
        clauses.append(THIRD_CLAUSES[parties[2].role].format(*names))
    rng.shuffle(clauses)
    sentences += clauses
    if rng.random() < 0.3:
        other = format_date(rng, _random_date(rng))
        sentences.append(rng.choice([f"The initial term ends on {other}.",
                                     f"The first payment is due on {other}.",
                                     f"Either party may terminate this Agreement after {other}.",
                                     f"This Agreement replaces the prior agreement of {other}."]))
    if rng.random() < 0.25:
        law = rng.choice(W.JURISDICTIONS)[0]
        sentences.append(f"This Agreement is governed by the laws of {law}.")
    return ContractExample(" ".join(sentences), tuple(parties), date, rng.choice(INSTRUCTIONS))


def generate_examples(n: int, seed: int) -> list[ContractExample]:
    rng = random.Random(f"contracts-{seed}")
    return [make_example(rng) for _ in range(n)]


# ----------------------------------------------------------------------------------------------
# The four record formats
# ----------------------------------------------------------------------------------------------
def user_message(ex: ContractExample) -> str:
    return f"{ex.instruction}\n\n{ex.excerpt}"


def prompt_text(ex: ContractExample) -> str:
    # Ends on a single "\n" (a pre-token boundary), so prompt and prompt+completion tokenize alike.
    return f"{ex.instruction}\n\nContract excerpt:\n{ex.excerpt}\n\nJSON:\n"


def follow_up(rng: random.Random, ex: ContractExample) -> tuple[str, str]:
    party = rng.choice(ex.parties)
    return rng.choice([
        (f"Which party is the {party.role}?", party.name),
        ("What is the effective date in YYYY-MM-DD format?", ex.effective_date.isoformat()),
        (f"Which jurisdiction is given for {party.name}?", party.jurisdiction),
        ("How many parties are named?", str(len(ex.parties))),
    ])


def to_records(examples: list[ContractExample], seed: int, multi_turn: float = 0.1) -> dict[str, list[dict]]:
    rng = random.Random(f"formats-{seed}")
    out: dict[str, list[dict]] = {"alpaca": [], "chat": [], "prompt_completion": [], "text": []}
    for ex in examples:
        answer = ex.target_json()
        out["alpaca"].append({"instruction": ex.instruction, "input": ex.excerpt, "output": answer})
        messages = [{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": user_message(ex)},
                    {"role": "assistant", "content": answer}]
        if rng.random() < multi_turn:
            question, reply = follow_up(rng, ex)
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
        out["chat"].append({"messages": messages})
        out["prompt_completion"].append({"prompt": prompt_text(ex), "completion": answer})
        out["text"].append({"text": f"### Instruction:\n{ex.instruction}\n\n### Input:\n{ex.excerpt}\n\n"
                                    f"### Response:\n{answer}"})
    return out


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n")


def write_datasets(out_dir: Path, *, seed: int = 0, n: int = 2000, n_general: int = 200,
                   n_heldout: int = 50) -> dict[str, Path]:
    """Write every dataset file under `out_dir`; returns {name: path}.

    contracts/{alpaca,chat,prompt_completion,text}.jsonl  the task, n records each (same examples)
    general/prompt_completion.jsonl                        general instructions to mix in
    general/heldout.jsonl                                  {prompt, reference} for regression eval
    """
    out_dir = Path(out_dir)
    paths: dict[str, Path] = {}
    for fmt, records in to_records(generate_examples(n, seed), seed).items():
        paths[fmt] = out_dir / "contracts" / f"{fmt}.jsonl"
        _write_jsonl(paths[fmt], records)
    train, heldout = general_sets(seed, n_general, n_heldout)
    # Prompts end on "\n" like the contract prompts: TRL joins prompt and completion as they are.
    paths["general"] = out_dir / "general" / "prompt_completion.jsonl"
    _write_jsonl(paths["general"], [{"prompt": p + "\n", "completion": a} for p, a in train])
    paths["general_heldout"] = out_dir / "general" / "heldout.jsonl"
    _write_jsonl(paths["general_heldout"], [{"prompt": p + "\n", "reference": a} for p, a in heldout])
    return paths
