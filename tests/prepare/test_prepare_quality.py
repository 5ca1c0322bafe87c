"""Mixing weights, duplicates, decontamination, the length filter and the split's determinism."""

from __future__ import annotations

from collections import Counter

import pytest
from prepare_helpers import EOT, make_config, records, rows, sentence, write_jsonl

from components.prepare import run
from components.prepare.dedup import decontaminate
from components.prepare.mix import quotas
from components.prepare.problems import Tally
from components.prepare.validate import Example


def _sources(result) -> Counter:
    return Counter(r["source"] for r in rows(result.train_path) + rows(result.test_path))


def test_mixing_weights_take_all_of_the_constrained_source(tmp_path, tokenizer):
    domain = write_jsonl(tmp_path / "domain.jsonl", records("chat", 300))
    general = write_jsonl(tmp_path / "general.jsonl", records("prompt_completion", 100, 1000))
    cfg = make_config([{"uri": str(domain), "name": "contracts", "weight": 0.95},
                       {"uri": str(general), "name": "general", "weight": 0.05}])
    result = run(cfg, None, tmp_path / "out", tokenizer)
    # domain is the constraint (300 / 0.95 < 100 / 0.05): all 300, and general 300 * 5/95 = 15.8 -> 16.
    assert _sources(result) == {"contracts": 300, "general": 16}
    s = result.stats["sources"]
    assert s["general"]["target_fraction"] == 0.05 and s["general"]["mixed_fraction"] == round(16 / 316, 6)
    assert result.stats["drops"]["mixing_downsample"]["by_source"] == {"general": 84}
    # Stratified split: both sources are in the test set.
    assert {r["source"] for r in rows(result.test_path)} == {"contracts", "general"}
    # No upsampling: every output record is distinct.
    out = rows(result.train_path) + rows(result.test_path)
    assert len({r["id"] for r in out}) == len(out)


def test_mixing_when_the_small_source_is_the_constraint(tmp_path, tokenizer):
    a = write_jsonl(tmp_path / "a.jsonl", records("chat", 200))
    b = write_jsonl(tmp_path / "b.jsonl", records("text", 40, 500))
    cfg = make_config([{"uri": str(a), "weight": 3}, {"uri": str(b), "weight": 1}])
    assert _sources(run(cfg, None, tmp_path / "out", tokenizer)) == {"b": 40, "a": 120}
    capped = make_config([{"uri": str(a), "weight": 3}, {"uri": str(b), "weight": 1}], max_records=50)
    assert _sources(run(capped, None, tmp_path / "capped", tokenizer)) == {"a": 38, "b": 12}


def test_a_source_that_rounds_to_nothing_is_a_warning(tmp_path, tokenizer):
    a = write_jsonl(tmp_path / "a.jsonl", records("chat", 10))
    b = write_jsonl(tmp_path / "b.jsonl", records("text", 10, 500))
    result = run(make_config([{"uri": str(a), "weight": 0.99}, {"uri": str(b), "weight": 0.01}]), None,
                 tmp_path / "out", tokenizer)
    assert _sources(result) == {"a": 10}
    assert result.stats["warnings"] == ["source 'b' contributes no records: its weight share times the most "
                                        "constrained source's size rounds to 0"]
    assert "## Warnings" in result.report_path.read_text()


def test_quotas_add_up_and_never_upsample():
    assert quotas({"a": 1000, "b": 10}, {"a": 1, "b": 1}, None) == {"a": 10, "b": 10}
    assert quotas({"a": 7}, {"a": 0.3}, None) == {"a": 7}
    three = {"a": 1000, "b": 1000, "c": 1000}
    assert quotas(three, {"a": 1, "b": 1, "c": 1}, 100) == {"a": 34, "b": 33, "c": 33}
    assert quotas({"a": 100, "b": 5}, {"a": 0.5, "b": 0.5}, 1000) == {"a": 5, "b": 5}


def test_exact_and_near_duplicates_are_removed_and_counted(tmp_path, tokenizer):
    data = records("alpaca", 40)
    exact = dict(data[3], output="  " + data[3]["output"].upper() + " ")  # case and spacing only
    words = data[7]["output"].split()
    near = dict(data[7], output=" ".join(words[:-1] + ["zebra"]))  # one word of ~25 changed
    data += [exact, near]  # lines 41 and 42
    path = write_jsonl(tmp_path / "d.jsonl", data)
    result = run(make_config([{"uri": str(path)}]), None, tmp_path / "out", tokenizer)
    stages, drops = result.stats["stages"], result.stats["drops"]
    assert (stages["valid"], stages["unique"], stages["near_unique"]) == (42, 41, 40)
    assert drops["exact_duplicate"]["examples"] == [
        {"where": f"{path}:41", "snippet": drops["exact_duplicate"]["examples"][0]["snippet"],
         "detail": f"duplicate of {path}:4"}]
    example = drops["near_duplicate"]["examples"][0]
    assert example["where"] == f"{path}:42" and example["detail"].startswith(f"near duplicate of {path}:8 ")
    assert example["snippet"].startswith("user: item 7 ")
    assert result.num_train + result.num_test == 40
    report = result.report_path.read_text()
    assert "| exact_duplicate | 1 |" in report and "| near_duplicate | 1 |" in report


def test_near_duplicate_removal_can_be_disabled(tmp_path, tokenizer):
    data = records("text", 20)
    data.append({"text": data[0]["text"] + " zebra"})
    path = write_jsonl(tmp_path / "d.jsonl", data)
    result = run(make_config([{"uri": str(path)}], near_dup_threshold=1), None, tmp_path / "out", tokenizer)
    assert result.stats["stages"]["near_unique"] == 21 and "near_duplicate" not in result.stats["drops"]


def test_decontamination_drops_test_records_whose_prompt_is_in_train(tmp_path, tokenizer):
    # 60 pairs of records with the same question and different answers: not duplicates of each other,
    # but a pair split across train and test would let the eval see a trained-on question.
    data = []
    for i in range(60):
        question = sentence(i, salt="q")
        data += [{"prompt": question, "completion": sentence(i, salt="a1")},
                 {"prompt": question, "completion": sentence(i, salt="a2")}]
    path = write_jsonl(tmp_path / "d.jsonl", data)
    sources = [{"uri": str(path)}]
    dirty = run(make_config(sources, decontaminate=False, test_ratio=0.3), None, tmp_path / "dirty",
                tokenizer)
    train_prompts = {r["messages"][0]["content"] for r in rows(dirty.train_path)}
    leaked = [r for r in rows(dirty.test_path) if r["messages"][0]["content"] in train_prompts]
    assert leaked, "the fixture should put some pairs across the split"

    clean = run(make_config(sources, test_ratio=0.3), None, tmp_path / "clean", tokenizer)
    assert rows(clean.train_path) == rows(dirty.train_path)
    assert clean.stats["drops"]["test_contaminated"]["count"] == len(leaked)
    assert clean.stats["stages"]["test"] == clean.stats["stages"]["test_split"] - len(leaked)
    train_prompts = {r["messages"][0]["content"] for r in rows(clean.train_path)}
    assert not [r for r in rows(clean.test_path) if r["messages"][0]["content"] in train_prompts]


def test_decontamination_catches_near_duplicate_prompts():
    def ex(prompt: str, answer: str, where: str) -> Example:
        e = Example("s", "prompt_completion", where, messages=[{"role": "user", "content": prompt},
                                                                 {"role": "assistant", "content": answer}])
        from components.prepare.dedup import assign_keys

        assign_keys([e])
        return e

    q = sentence(1, n_words=30)
    train = [ex(q, "a", "train:1"), ex(sentence(2), "b", "train:2")]
    test = [ex(q + " please", "c", "test:1"), ex(sentence(3), "d", "test:2")]
    tally = Tally()
    kept = decontaminate(train, test, 0.8, 128, tally)
    assert [e.where for e in kept] == ["test:2"]
    assert tally.reasons["test_contaminated"].examples[0]["detail"].startswith(
        "prompt near-duplicates that of train record train:1")


def _long_records() -> list[dict]:
    short = records("chat", 20)
    long_answer = {"messages": [
        {"role": "user", "content": "Write a long one."},
        {"role": "assistant", "content": " ".join(sentence(i, salt="la") for i in range(30))}]}
    long_prompt = {"messages": [
        {"role": "user", "content": " ".join(sentence(i, salt="lp") for i in range(30))},
        {"role": "assistant", "content": "Short."}]}
    long_text = {"text": " ".join(sentence(i, salt="t") for i in range(30))}
    return short + [long_answer, long_prompt, long_text]


@pytest.mark.parametrize("policy", ["drop", "truncate"])
def test_length_filter(tmp_path, tokenizer, policy):
    # One source (a directory of two files), so that mixing weights play no part here.
    chat = write_jsonl(tmp_path / "data" / "chat.jsonl", _long_records()[:-1])
    write_jsonl(tmp_path / "data" / "text.jsonl", _long_records()[-1:] + records("text", 5, 70))
    cfg = make_config([{"uri": str(tmp_path / "data")}], max_seq_len=128, length_policy=policy)
    result = run(cfg, None, tmp_path / "out", tokenizer)
    drops = result.stats["drops"]
    out = rows(result.train_path) + rows(result.test_path)
    # A prompt longer than the limit is dropped whatever the policy: nothing would be left to learn.
    assert drops["prompt_too_long"]["count"] == 1
    assert drops["prompt_too_long"]["examples"][0]["where"] == f"{chat}:22"
    assert all(r["num_tokens"] <= 128 for r in out)
    assert result.stats["token_lengths"]["train"]["max"] <= 128
    if policy == "drop":
        assert drops["too_long"]["count"] == 2 and "truncated" not in drops
        assert len(out) == 20 + 5 and not any(r["truncated"] for r in out)
        return
    assert "too_long" not in drops and drops["truncated"]["count"] == 2
    cut = [r for r in out if r["truncated"]]
    assert len(cut) == 2 and len(out) == 27
    for r in cut:
        assert r["num_tokens"] <= 128 and r["num_tokens"] >= 120  # cut near the limit, not far below
        if r["format"] == "text":
            assert _long_records()[-1]["text"].startswith(r["text"])
        else:  # the end of the answer goes, the end-of-turn token with it; messages say the same
            assert not r["completion"].endswith(EOT)
            assert r["completion"] == r["messages"][-1]["content"]
            assert _long_records()[20]["messages"][-1]["content"].startswith(r["completion"])


def _all_bytes(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_same_input_and_seed_give_identical_bytes(tmp_path, tokenizer):
    paths = [write_jsonl(tmp_path / "a.jsonl", records("chat", 80)),
             write_jsonl(tmp_path / "b.jsonl", records("text", 30, 500))]
    cfg = make_config([{"uri": str(paths[0]), "weight": 2}, {"uri": str(paths[1]), "weight": 1}])
    first = run(cfg, None, tmp_path / "one", tokenizer)
    second = run(cfg, None, tmp_path / "two", tokenizer)
    assert _all_bytes(first.output_dir) == _all_bytes(second.output_dir)
    assert set(_all_bytes(first.output_dir)) == {"train.jsonl", "test.jsonl", "stats.json", "report.md",
                                                 "token_lengths.png"}

    other = run(make_config([{"uri": str(paths[0]), "weight": 2}, {"uri": str(paths[1]), "weight": 1}],
                            seed=43), None, tmp_path / "three", tokenizer)
    ids = {r["id"] for r in rows(first.test_path)}
    assert ids != {r["id"] for r in rows(other.test_path)}
    assert len(rows(other.test_path)) == len(ids)


def test_split_is_stable_when_records_are_added(tmp_path, tokenizer):
    base = records("chat", 200)
    v1 = write_jsonl(tmp_path / "v1" / "d.jsonl", base)
    v2 = write_jsonl(tmp_path / "v2" / "d.jsonl", base + records("chat", 20, 900))  # 10% more data
    before = run(make_config([{"uri": str(v1)}]), None, tmp_path / "o1", tokenizer)
    after = run(make_config([{"uri": str(v2)}]), None, tmp_path / "o2", tokenizer)
    old_test = {r["id"] for r in rows(before.test_path)}
    new_test = {r["id"] for r in rows(after.test_path)}
    old_train = {r["id"] for r in rows(before.train_path)}
    # A seeded shuffle of the new list would keep ~10% of the old test set, and move ~18 old train
    # records into test (where a model trained on the old split has already seen them).
    assert len(old_test & new_test) >= 0.8 * len(old_test)
    assert len(old_train & new_test) <= 2
