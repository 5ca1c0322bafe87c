"""The run summary's side-by-side test examples (pipelines.summary): the formatting, on answers the demo's
tiny model really gave, and the reading of samples.jsonl from an eval output published to the real S3."""

from __future__ import annotations

import json

from components.common import storage
from pipelines.local import LocalRun
from pipelines.summary import (
    ANSWER_LINES,
    LABEL_WIDTH,
    SAMPLES_FILE,
    read_eval_samples,
    side_by_side_lines,
    summary_lines,
)

# Three lines of a demo run's eval samples.jsonl (fields the summary does not read left out).
QUESTION = ("Return the parties and the effective date of this agreement as JSON.\n\nTHIS EMPLOYMENT AGREEMENT "
            "is dated 2015-11-12 and is made between Jade Healthcare Corp., a Delaware corporation (hereinafter "
            "referred to as the \"Employer\") and Chloe Morgan, an individual residing in Germany.")
SAMPLES = [
    {"index": 0, "question": QUESTION,
     "reference": '{"parties":[{"name":"Jade Healthcare Corp.","role":"Employer","jurisdiction":"Delaware"},'
                  '{"name":"Chloe Morgan","role":"Employee","jurisdiction":"Germany"}],'
                  '"effective_date":"2015-11-12"}',
     "base": "eighty-six",
     "tuned": '{"parties":[{"name":"Thomas","role":"Employer","jurisdiction":"Ontario"},{"name":"Thomas",'
              '"role":"Agent","jurisdiction":"Ontario"}],"effective_date":"2020-01-25"}'},
    {"index": 1, "question": "Read the contract excerpt and return a JSON object with the parties.",
     "reference": '{"parties":[{"name":"Apex Data K.K.","role":"Seller","jurisdiction":"Japan"},{"name":'
                  '"Old Mill Biotech plc","role":"Buyer","jurisdiction":"England and Wales"},{"name":"Norcross '
                  'Partners LLC","role":"Escrow Agent","jurisdiction":"Texas"}],"effective_date":"2018-01-16"}',
     "base": 'The opposite of "hot" is\n"cold".',
     "tuned": ""},
    {"index": 7, "question": "What is the capital of France?", "reference": "Paris.", "base": "Paris",
     "tuned": "Paris."},
]


def answer_blocks(lines: list[str]) -> list[dict[str, str]]:
    """side_by_side_lines back into {answer: its text with the wrapped lines joined}, one dict per example."""
    examples: list[dict[str, str]] = []
    label = None
    for line in lines[1:]:
        if line.startswith("  #"):
            examples.append({})
        elif line.startswith(" " * LABEL_WIDTH):
            examples[-1][label] += line[LABEL_WIDTH:]
        else:
            label = line.split()[0]
            examples[-1][label] = line[LABEL_WIDTH:]
    return examples


def test_side_by_side_shows_reference_base_and_tuned_for_each_example():
    lines = side_by_side_lines(SAMPLES, total=24, width=100)
    assert lines[0] == "3 of 24 test examples (reference, base, tuned):"
    assert all(len(line) <= 100 for line in lines), [line for line in lines if len(line) > 100]
    assert [line for line in lines if line.startswith("  #")] == [
        "  #0: Return the parties and the effective date of this agreement as JSON. THIS EMPLOYMENT AGR …",
        "  #1: Read the contract excerpt and return a JSON object with the parties.",
        "  #7: What is the capital of France?"]
    first, second, third = answer_blocks(lines)
    assert list(first) == ["reference", "base", "tuned"]
    # answers that fit in ANSWER_LINES lines come through whole, cut at the same columns
    assert first == {"reference": SAMPLES[0]["reference"], "base": "eighty-six", "tuned": SAMPLES[0]["tuned"]}
    assert third == {"reference": "Paris.", "base": "Paris", "tuned": "Paris."}
    # the newline is collapsed to a space, an empty answer says so
    assert second["base"] == 'The opposite of "hot" is "cold".' and second["tuned"] == "(empty)"


def test_long_answers_are_cut_with_a_mark():
    width = 60
    lines = side_by_side_lines(SAMPLES[1:2], total=1, width=width)
    text_width = width - LABEL_WIDTH
    reference = [line for line in lines if line.startswith(("    reference", " " * LABEL_WIDTH))][:ANSWER_LINES]
    assert len(reference) == ANSWER_LINES
    shown = "".join(line[LABEL_WIDTH:] for line in reference)
    assert shown.endswith(" …")
    assert SAMPLES[1]["reference"].startswith(shown[:-2])
    assert len(shown) == ANSWER_LINES * text_width  # every line full up to the width, the mark included
    assert all(len(line) <= width for line in lines)


def publish_eval_output(tmp_path, uri: str, lines: list[str] | None) -> None:
    out = tmp_path / "eval-output"
    out.mkdir()
    (out / "eval_results.json").write_text("{}")
    if lines is not None:
        (out / SAMPLES_FILE).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    storage.publish_dir(out, uri, producer="eval")


def run_with_eval(s3_env, eval_outcome: dict) -> LocalRun:
    return LocalRun(run_id="r1", run_root=s3_env.uri("runs/r1"), wall_seconds=12.0, step_seconds={"eval": 3.0},
                    outcomes={"eval": eval_outcome})


def test_summary_reads_the_samples_from_the_published_eval_output(s3_env, tmp_path):
    more = {**SAMPLES[2], "index": 8}
    publish_eval_output(tmp_path, s3_env.uri("runs/r1/eval"),
                        [json.dumps(s, ensure_ascii=False) for s in [*SAMPLES, more]])
    result = run_with_eval(s3_env, {"seconds": 3.0})

    samples = read_eval_samples(result)
    assert samples.uri == s3_env.uri("runs/r1/eval", SAMPLES_FILE)
    assert (samples.samples, samples.total, samples.skipped) == (SAMPLES, 4, None)
    text = "\n".join(summary_lines(result, samples))
    assert "3 of 4 test examples (reference, base, tuned):" in text
    assert "#7: What is the capital of France?" in text and "#8:" not in text


def test_a_cached_eval_step_is_read_from_the_output_it_reused(s3_env, tmp_path):
    earlier = s3_env.uri("runs/r0/eval")
    publish_eval_output(tmp_path, earlier, [json.dumps(SAMPLES[2])])
    samples = read_eval_samples(run_with_eval(s3_env, {"cached_from": earlier}))
    assert samples.uri == storage.join_uri(earlier, SAMPLES_FILE) and samples.samples == [SAMPLES[2]]


def test_without_a_samples_file_the_section_is_one_line(s3_env, tmp_path):
    publish_eval_output(tmp_path, s3_env.uri("runs/r1/eval"), None)
    result = run_with_eval(s3_env, {"seconds": 3.0})
    lines = summary_lines(result, read_eval_samples(result))
    skipped = [line for line in lines if line.startswith("test examples")]
    assert skipped == [f"test examples: skipped, the eval output {s3_env.uri('runs/r1/eval')} has no samples.jsonl"]
    assert not any("reference" in line for line in lines)


def test_a_malformed_samples_line_is_named_and_skipped(s3_env, tmp_path):
    publish_eval_output(tmp_path, s3_env.uri("runs/r1/eval"), [json.dumps(SAMPLES[0]), "{not json"])
    samples = read_eval_samples(run_with_eval(s3_env, {"seconds": 3.0}))
    assert samples.skipped.startswith(f"{s3_env.uri('runs/r1/eval', SAMPLES_FILE)} line 2 is not JSON")


def test_no_eval_step_no_section(s3_env):
    result = LocalRun(run_id="r2", run_root=s3_env.uri("runs/r2"), wall_seconds=5.0,
                      step_seconds={"prepare": 1.0}, outcomes={"prepare": {}})
    assert read_eval_samples(result) is None
    assert not any("test examples" in line for line in summary_lines(result, None))
