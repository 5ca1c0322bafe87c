"""The demo assets: synthetic datasets, tokenizer + chat template, tiny model, and the build cache.

The model is built without pre-training here (seconds); pre-training itself is checked on a few
steps of a small corpus.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from pathlib import Path

import pytest

from pipelines.demo import ensure_demo_assets
from pipelines.demo.assets import DATASET_FILES
from pipelines.demo.dataset import write_datasets
from pipelines.demo.tokenizer import BOS, EOS, IM_START, PAD

N = 2000
FIELDS = {"alpaca": {"instruction", "input", "output"}, "chat": {"messages"},
          "prompt_completion": {"prompt", "completion"}, "text": {"text"}}
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    return ensure_demo_assets(tmp_path_factory.mktemp("demo"), pretrain_steps=0, progress=False)


@pytest.fixture(scope="session")
def tokenizer(assets):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(assets.model_dir, trust_remote_code=False)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def dates_in(text: str) -> set[dt.date]:
    """Every date written in `text`, in any of the formats a contract might use (parsed here
    independently of the generator)."""
    short = [m[:3] + r"\." if len(m) > 4 else m for m in MONTHS]
    month = "|".join(MONTHS + short)
    found = set()
    for y, m, d in re.findall(r"\b(\d{4})-(\d{2})-(\d{2})\b", text):
        found.add(dt.date(int(y), int(m), int(d)))
    patterns = [rf"\b({month}) (\d{{1,2}})(?:st|nd|rd|th)?, (\d{{4}})",
                rf"\b(\d{{1,2}})(?:st|nd|rd|th)? ({month}) (\d{{4}})",
                rf"\bthe (\d{{1,2}})(?:st|nd|rd|th) day of ({month}), (\d{{4}})"]
    for i, pattern in enumerate(patterns):
        for groups in re.findall(pattern, text):
            mon, day, year = groups if i == 0 else (groups[1], groups[0], groups[2])
            index = next(k for k, name in enumerate(MONTHS) if name.startswith(mon.rstrip(".")))
            found.add(dt.date(int(year), index + 1, int(day)))
    return found


# ---------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------
def test_same_seed_gives_identical_bytes_and_other_seed_differs(assets, tmp_path):
    again = write_datasets(tmp_path / "same", seed=0)
    other = write_datasets(tmp_path / "other", seed=1)
    for name in DATASET_FILES:
        built = getattr(assets, name).read_bytes()
        assert again[name].read_bytes() == built, name
        assert other[name].read_bytes() != built, name


def test_every_format_has_the_records_and_fields(assets):
    for fmt, fields in FIELDS.items():
        records = read_jsonl(getattr(assets, fmt))
        assert len(records) == N, fmt
        for r in records:
            assert set(r) == fields, (fmt, r)
            assert all(isinstance(v, (str, list)) and v for v in r.values()), (fmt, r)
    general = read_jsonl(assets.general)
    heldout = read_jsonl(assets.general_heldout)
    assert len(general) == 200 and len(heldout) == 50
    assert all(set(r) == {"prompt", "completion"} and r["prompt"] and r["completion"] for r in general)
    assert all(set(r) == {"prompt", "reference"} and r["prompt"] and r["reference"] for r in heldout)
    assert not {r["prompt"] for r in general} & {r["prompt"] for r in heldout}, "held-out prompts leak"


def test_chat_records_are_well_formed_and_some_are_multi_turn(assets):
    records = read_jsonl(assets.chat)
    multi = 0
    for r in records:
        roles = [m["role"] for m in r["messages"]]
        assert roles[:3] == ["system", "user", "assistant"]
        assert roles[3:] in ([], ["user", "assistant"])
        multi += len(roles) > 3
        assert all(isinstance(m["content"], str) and m["content"] for m in r["messages"])
    assert 0.05 * N < multi < 0.15 * N


def test_json_answers_parse_and_match_the_excerpt(assets):
    alpaca = read_jsonl(assets.alpaca)
    chat = read_jsonl(assets.chat)
    pc = read_jsonl(assets.prompt_completion)
    text = read_jsonl(assets.text)
    roles = set()
    for a, c, p, t in zip(alpaca, chat, pc, text, strict=True):
        excerpt, answer = a["input"], a["output"]
        # The same example in every format.
        assert c["messages"][2]["content"] == p["completion"] == answer
        assert excerpt in c["messages"][1]["content"] and excerpt in p["prompt"] and excerpt in t["text"]
        assert t["text"].endswith("\n" + answer)
        assert answer == json.dumps(json.loads(answer), separators=(",", ":")), "not compact JSON"
        obj = json.loads(answer)
        assert set(obj) == {"parties", "effective_date"}
        assert 2 <= len(obj["parties"]) <= 3
        names = [party["name"] for party in obj["parties"]]
        assert len(set(names)) == len(names)
        positions = []
        for party in obj["parties"]:
            assert set(party) == {"name", "role", "jurisdiction"}
            assert party["name"] in excerpt and party["jurisdiction"] in excerpt and party["role"] in excerpt
            positions.append(excerpt.index(party["name"]))
            roles.add(party["role"])
        assert positions == sorted(positions), "parties are listed in order of appearance"
        date = dt.date.fromisoformat(obj["effective_date"])
        assert date in dates_in(excerpt), (obj["effective_date"], excerpt)
    assert {"Licensor", "Licensee", "Buyer", "Seller", "Employer", "Employee", "Lender", "Borrower"} <= roles


def test_the_task_is_varied(assets):
    records = read_jsonl(assets.alpaca)
    excerpts = [r["input"] for r in records]
    assert len(set(excerpts)) == N
    with_distractor_date = sum(len(dates_in(e)) > 1 for e in excerpts)
    assert 0.15 * N < with_distractor_date < 0.5 * N
    iso = sum(bool(re.search(r"\d{4}-\d{2}-\d{2}", e)) for e in excerpts)
    assert iso < 0.4 * N, "most dates must need converting"
    three_party = sum(json.loads(r["output"])["parties"].__len__() == 3 for r in records)
    assert 0.1 * N < three_party < 0.5 * N


def test_examples_are_short_in_demo_tokens(assets, tokenizer):
    pc = read_jsonl(assets.prompt_completion)
    lengths = [len(tokenizer(r["prompt"] + r["completion"])["input_ids"]) for r in pc]
    assert max(lengths) < 280 and sum(lengths) / len(lengths) < 200
    chat = read_jsonl(assets.chat)
    lengths = [len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
               for r in chat]
    assert max(lengths) <= 300


def test_prompts_end_on_a_token_boundary(assets, tokenizer):
    """TRL masks the prompt by tokenizing it alone: that must be a prefix of prompt+completion."""
    for path in (assets.prompt_completion, assets.general):
        records = read_jsonl(path)
        assert all(r["prompt"].endswith("\n") for r in records)
        prompts = tokenizer([r["prompt"] for r in records])["input_ids"]
        full = tokenizer([r["prompt"] + r["completion"] for r in records])["input_ids"]
        for p, f in zip(prompts, full, strict=True):
            assert f[:len(p)] == p and len(f) > len(p)


# ---------------------------------------------------------------------------------------------
# tokenizer and chat template
# ---------------------------------------------------------------------------------------------
def test_special_tokens_and_ids_in_configs(assets, tokenizer):
    assert len(tokenizer) == 4096
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (BOS, EOS, PAD)
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
           tokenizer.convert_tokens_to_ids(IM_START)}
    assert len(ids) == 4 and None not in ids, "bos, eos, pad and im_start must be distinct tokens"
    assert tokenizer.padding_side == "right"
    config = json.loads((assets.model_dir / "config.json").read_text())
    gen = json.loads((assets.model_dir / "generation_config.json").read_text())
    for c in (config, gen):
        assert c["bos_token_id"] == tokenizer.bos_token_id
        assert c["eos_token_id"] == tokenizer.eos_token_id
        assert c["pad_token_id"] == tokenizer.pad_token_id
    tok_config = json.loads((assets.model_dir / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast" and tok_config["add_bos_token"] is True


def test_tokenizer_is_gpt2_byte_level_and_round_trips(assets, tokenizer):
    spec = json.loads((assets.model_dir / "tokenizer.json").read_text())
    assert spec["model"]["type"] == "BPE"
    assert spec["pre_tokenizer"]["type"] == "ByteLevel" and spec["pre_tokenizer"]["use_regex"] is True
    assert spec["pre_tokenizer"]["add_prefix_space"] is False
    text = "Zürich GmbH owes €1,250.50 — naïve café\ttab\n\nnew"  # bytes outside the training text too
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids


def test_chat_template_renders_chatml(tokenizer):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (f"{BOS}<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
                    "<|im_start|>assistant\n")
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
    assert ids["input_ids"].count(tokenizer.bos_token_id) == 1, "bos must not be doubled"
    assert "{% generation %}" in tokenizer.chat_template
    parts = [{"role": "user", "content": [{"type": "text", "text": "U"}]}]
    assert tokenizer.apply_chat_template(parts, tokenize=False) == f"{BOS}<|im_start|>user\nU<|im_end|>\n"


def test_assistant_mask_covers_exactly_the_answers_and_their_end_token(assets, tokenizer):
    chat = read_jsonl(assets.chat)
    multi = [r for r in chat if len(r["messages"]) > 3]
    samples = multi[:5] + [r for r in chat if len(r["messages"]) == 3][:5]
    for record in samples:
        out = tokenizer.apply_chat_template(record["messages"], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        ids, mask = out["input_ids"], out["assistant_masks"]
        assert len(ids) == len(mask)
        spans, current = [], []
        for token, m in zip(ids, mask, strict=True):
            if m:
                current.append(token)
            elif current:
                spans.append(current)
                current = []
        if current:
            spans.append(current)
        expected = [m["content"] + EOS for m in record["messages"] if m["role"] == "assistant"]
        assert [tokenizer.decode(s) for s in spans] == expected
        assert sum(mask) < len(mask) / 2


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
def test_model_dir_holds_safetensors_only_and_loads_without_remote_code(assets, tokenizer):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    names = {p.name for p in assets.model_dir.iterdir()}
    assert "model.safetensors" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".py"))], names
    model = AutoModelForCausalLM.from_pretrained(assets.model_dir, trust_remote_code=False)
    assert type(model).__name__ == "LlamaForCausalLM"
    cfg = model.config
    assert cfg.hidden_size % 256 == 0 and cfg.intermediate_size % 256 == 0
    assert cfg.vocab_size == len(tokenizer) and not cfg.tie_word_embeddings
    assert 2 <= cfg.num_hidden_layers <= 4
    assert 2_000_000 < sum(p.numel() for p in model.parameters()) < 10_000_000
    with safe_open(assets.model_dir / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" in keys and "model.embed_tokens.weight" in keys
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer)) and torch.isfinite(logits).all()
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_pretraining_lowers_the_loss(tokenizer):
    from pipelines.demo.tiny_model import PretrainSettings, init_model, pretrain

    model = init_model(tokenizer, seed=0)
    # copy_batch_size=0: prose only (with the copy curriculum, prose waits for it to start widening)
    result = pretrain(model, tokenizer, PretrainSettings(steps=12, batch_size=4, seq_len=128, n_docs=600,
                                                         warmup_steps=3, copy_batch_size=0), progress=False)
    assert result["heldout_loss_after"] < result["heldout_loss_before"] - 1.0
    assert result["final_loss"] < result["first_loss"]
    assert result["steps"] == 12 and result["prose_tokens"] == 12 * 4 * 128


def test_pretraining_ends_a_fixed_tail_after_the_curriculum_completes(tokenizer):
    """The schedule follows the curriculum: once the level reaches 1.0 the learning rate decays over
    tail_steps and pre-training ends, long before `steps`. Here the curriculum widens on every step
    (copy_widen_below far above any loss) and completes in 2; prose joins once the level is 0.5."""
    from pipelines.demo.tiny_model import PretrainSettings, init_model, pretrain

    model = init_model(tokenizer, seed=0)
    result = pretrain(model, tokenizer, PretrainSettings(steps=50, batch_size=2, seq_len=64, n_docs=200,
                                                         warmup_steps=1, tail_steps=3, copy_batch_size=4,
                                                         copy_widen_below=1e9, copy_widen_steps=2,
                                                         prose_from_level=0.5), progress=False)
    assert result["copy_level_final"] == 1.0
    assert result["decay_started_at_step"] == 2 and result["steps"] == 2 + 3
    assert result["prose_tokens"] == 4 * 2 * 64  # 4 of the 5 steps: the level is 0.5 after the first


def test_copy_batches_label_exactly_the_repeated_span(tokenizer):
    import random

    from pipelines.demo.copy_task import IGNORE, copy_batch, copy_token_pool

    pool = copy_token_pool(tokenizer)
    assert not set(pool) & set(tokenizer.all_special_ids) and len(pool) > 3000
    for level in (0.0, 0.5, 1.0):
        ids, labels = copy_batch(random.Random(3), pool, level, 4, tokenizer.bos_token_id, pool_start=300)
        allowed = set(pool[:300 + round(level * (len(pool) - 300))])
        for seq, lab in zip(ids, labels, strict=True):
            assert len(seq) == len(lab) and seq[0] == tokenizer.bos_token_id
            scored = [k for k, label in enumerate(lab) if label != IGNORE]
            span = len(scored) + 1  # the repeat's first token is not scored
            assert seq[1:1 + span] == seq[-span:], "the sequence must end with its first span again"
            assert scored == list(range(len(seq) - span + 1, len(seq)))
            assert [lab[k] for k in scored] == seq[-span + 1:]
            assert set(seq[1:]) <= allowed


def test_quoted_copies_start_with_the_unspaced_word(tokenizer):
    import random

    from pipelines.demo.copy_task import IGNORE, copy_batch, copy_token_pool, unspaced_variants

    pool, variants = copy_token_pool(tokenizer), unspaced_variants(tokenizer)
    quote = tokenizer.convert_tokens_to_ids('"')
    assert tokenizer.convert_ids_to_tokens(variants[tokenizer.convert_tokens_to_ids("ĠJade")]) == "Jade"
    spaced = [i for i in pool if i in variants]
    rng, quoted_seen = random.Random(5), 0
    for level in [0.0, 0.03, 0.5, 1.0] * 5:  # 0.0 and 0.03: no filler or a filler of one token
        ids, labels = copy_batch(rng, spaced, level, 4, tokenizer.bos_token_id, pool_start=len(spaced),
                                 quoted=(quote, variants))
        assert len({len(seq) for seq in ids}) == 1, "a batch must stay rectangular"
        for seq, lab in zip(ids, labels, strict=True):
            assert len(seq) == len(lab)
            first = [k for k, label in enumerate(lab) if label != IGNORE][0]
            if seq[first - 1] == quote:
                quoted_seen += 1
                assert seq[first] == variants[seq[1]] and lab[first] == seq[first]
    assert quoted_seen > 10


def test_copy_accuracy_is_zero_for_a_random_model_and_one_for_an_oracle(tokenizer):
    import torch

    from pipelines.demo.copy_task import copy_accuracy
    from pipelines.demo.tiny_model import init_model

    model = init_model(tokenizer, seed=0)
    assert copy_accuracy(model, tokenizer, sequences=8) < 0.02

    class Oracle(torch.nn.Module):
        """Predicts, at each position, the token that followed the same token's earlier occurrence."""

        def forward(self, input_ids):
            logits = torch.zeros(*input_ids.shape, len(tokenizer))
            for b, row in enumerate(input_ids.tolist()):
                for k, token in enumerate(row):
                    earlier = [j for j in range(k) if row[j] == token]
                    if earlier and earlier[-1] + 1 < len(row):
                        logits[b, k, row[earlier[-1] + 1]] = 1.0
            return type("Out", (), {"logits": logits})()

    assert copy_accuracy(Oracle(), tokenizer, sequences=8) > 0.95


def test_quoted_copy_accuracy_scores_the_unspaced_first_word(tokenizer):
    """A copier that repeats tokens literally misses the quoted probe's first word (the repeat is
    `"` + the unspaced variant + the rest); one that also maps `ĠJade` to `Jade` gets all of it."""
    import torch

    from pipelines.demo.copy_task import copy_accuracy, unspaced_variants

    unspaced = unspaced_variants(tokenizer)
    spaced_of = {u: s for s, u in unspaced.items()}
    quote = tokenizer.convert_tokens_to_ids('"')

    class Copier(torch.nn.Module):
        def __init__(self, maps_variants: bool):
            super().__init__()
            self.maps_variants = maps_variants

        def forward(self, input_ids):
            logits = torch.zeros(*input_ids.shape, len(tokenizer))
            for b, row in enumerate(input_ids.tolist()):
                for k, token in enumerate(row):
                    if self.maps_variants and token == quote:
                        logits[b, k, unspaced[row[1]]] = 1.0  # the span starts right after bos
                        continue
                    after_quote = self.maps_variants and k > 0 and row[k - 1] == quote
                    source = spaced_of.get(token, token) if after_quote else token
                    earlier = [j for j in range(k) if row[j] == source]
                    if earlier and earlier[-1] + 1 < len(row):
                        logits[b, k, row[earlier[-1] + 1]] = 1.0
            return type("Out", (), {"logits": logits})()

    literal = copy_accuracy(Copier(False), tokenizer, sequences=8, quoted=True)
    mapping = copy_accuracy(Copier(True), tokenizer, sequences=8, quoted=True)
    assert literal < 0.95 < mapping, (literal, mapping)
    assert copy_accuracy(Copier(False), tokenizer, sequences=8) > 0.95  # the unquoted probe: all copied


def test_the_copy_loss_on_labelled_positions_equals_the_full_loss(tokenizer):
    import random

    import torch

    from pipelines.demo.copy_task import copy_batch, copy_token_pool
    from pipelines.demo.tiny_model import init_model, labelled_positions_loss

    model = init_model(tokenizer, seed=0)
    ids, labels = copy_batch(random.Random(5), copy_token_pool(tokenizer), 0.5, 4, tokenizer.bos_token_id, 300)
    ids, labels = torch.tensor(ids), torch.tensor(labels)
    full = model(input_ids=ids, labels=labels).loss
    assert torch.allclose(labelled_positions_loss(model, ids, labels), full, atol=1e-5), full


def test_pretraining_with_the_copy_curriculum_reports_its_figures(tokenizer):
    from pipelines.demo.tiny_model import PretrainSettings, init_model, pretrain

    model = init_model(tokenizer, seed=0)
    result = pretrain(model, tokenizer, PretrainSettings(steps=6, batch_size=2, seq_len=64, n_docs=200,
                                                         warmup_steps=2, copy_batch_size=4), progress=False)
    assert 0.0 <= result["copy_accuracy_before"] <= 1.0 and 0.0 <= result["copy_accuracy_after"] <= 1.0
    assert result["copy_final_loss"] is not None and result["copy_level_final"] == 0.0  # loss still high
    assert 0.0 <= result["quoted_copy_accuracy_after"] <= 1.0 and result["copy_level_every_100_steps"] == []


def test_model_build_is_byte_identical_for_a_seed(tmp_path):
    from pipelines.demo.assets import build_model

    first = build_model(tmp_path / "a", pretrain_steps=3, progress=False)
    second = build_model(tmp_path / "b", pretrain_steps=3, progress=False)
    assert first["pretrain"]["final_loss"] == second["pretrain"]["final_loss"]
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


# ---------------------------------------------------------------------------------------------
# cache and CLI
# ---------------------------------------------------------------------------------------------
def _mtimes(assets) -> dict[str, int]:
    files = [*assets.model_dir.iterdir(), *assets.dataset_files().values()]
    return {str(p): p.stat().st_mtime_ns for p in files}


def test_second_call_reuses_the_build(assets):
    assert set(assets.built) == {"model", "datasets"}
    before = _mtimes(assets)
    again = ensure_demo_assets(assets.root, pretrain_steps=0, progress=False)
    assert again.built == ()
    assert _mtimes(again) == before
    assert again.model_info["parameters"] == assets.model_info["parameters"]


def test_stale_or_partial_builds_are_rebuilt(tmp_path):
    first = ensure_demo_assets(tmp_path, pretrain_steps=0, progress=False)
    first.chat.unlink()  # a damaged datasets folder
    assert ensure_demo_assets(tmp_path, pretrain_steps=0, progress=False).built == ("datasets",)
    (tmp_path / ".model-killed").mkdir()  # what a killed build leaves behind
    changed = ensure_demo_assets(tmp_path, pretrain_steps=2, progress=False)  # other builder parameters
    assert changed.built == ("model",) and changed.model_info["pretrain"]["steps"] == 2
    forced = ensure_demo_assets(tmp_path, pretrain_steps=2, force=True, progress=False)
    assert forced.built == ("datasets", "model")
    assert not list(tmp_path.glob(".model-*")) and not list(tmp_path.glob(".datasets-*"))


def test_default_root_honours_the_environment(monkeypatch, tmp_path):
    from pipelines.demo import default_root

    monkeypatch.setenv("KUBETUNE_DEMO_DIR", str(tmp_path / "x"))
    assert default_root() == tmp_path / "x"
    monkeypatch.delenv("KUBETUNE_DEMO_DIR")
    assert default_root() == Path.home() / ".cache" / "kubetune" / "demo"


def test_cli_prints_what_it_built_and_where(assets, capsys):
    from pipelines.commands import demo_assets

    parser = argparse.ArgumentParser()
    demo_assets.add_arguments(parser)
    assert demo_assets.run(parser.parse_args(["--root", str(assets.root), "--pretrain-steps", "0"])) == 0
    out = capsys.readouterr().out
    assert "built: nothing" in out and str(assets.model_dir) in out and str(assets.chat) in out
    assert "(2000 records)" in out
