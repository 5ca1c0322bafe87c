"""`kubetune prepare` on the demo's dataset and tiny model, as `kubetune demo` runs it: from S3, with
the shipped tiny-cpu-demo.yaml, publishing to S3."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from prepare_helpers import make_config, rows

from components.common import storage
from components.prepare import run
from pipelines.cli import main

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "pipelines" / "configs" / "tiny-cpu-demo.yaml"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from pipelines.demo.assets import ensure_demo_assets

    # pretrain_steps=0: a random model, built in seconds; prepare only needs its tokenizer.
    return ensure_demo_assets(tmp_path_factory.mktemp("demo"), pretrain_steps=0, progress=False)


def test_cli_on_the_demo_dataset(s3_env, demo, tmp_path, capsys):
    model = s3_env.uri("models", "tiny-llama")
    storage.publish_dir(demo.model_dir, model, producer="demo-assets")
    chat, general = s3_env.uri("datasets", "contracts", "chat.jsonl"), s3_env.uri("datasets", "general",
                                                                                   "prompt_completion.jsonl")
    storage.upload_file(demo.chat, chat)
    storage.upload_file(demo.general, general)
    output = s3_env.uri("runs", "demo", "prepare")

    started = time.monotonic()
    # tracking off: the demo config tracks into the MLflow server `kubetune demo` starts, not here
    rc = main(["prepare", "--config", str(DEMO_CONFIG), "--set", f"model.base={model}",
               "--set", "tracking.mlflow_uri=null", "--input", chat, "--input", general, "--output", output])
    seconds = time.monotonic() - started
    out = capsys.readouterr().out
    assert rc == 0, out
    with capsys.disabled():
        print(f"\n[prepare demo] kubetune prepare on the demo dataset (S3 in and out): {seconds:.1f} s\n"
              f"{out}")

    manifest = storage.read_manifest(output)
    assert {f.path for f in manifest.files} == {"train.jsonl", "test.jsonl", "stats.json", "report.md",
                                                 "token_lengths.png", "step_outcome.json"}
    assert manifest.lineage["tokenizer"] == model
    stats = json.loads(storage.fetch_file(f"{output}/stats.json").read_text())
    assert set(stats["sources"]) == {"contracts", "general"}
    assert stats["settings"]["max_seq_len"] == 512 and stats["settings"]["seed"] == 7
    stages = stats["stages"]
    assert stages["read"] == sum(1 for _ in demo.chat.open()) + sum(1 for _ in demo.general.open())
    assert stages["train"] > 0 and stages["test"] > 0
    general_share = stats["sources"]["general"]["mixed_fraction"]
    assert abs(general_share - 0.05) < 0.005  # the config's 95/5 mix
    for split in ("train", "test"):
        lengths = stats["token_lengths"][split]
        assert lengths["p50"] <= lengths["p90"] <= lengths["p95"] <= lengths["p99"] <= lengths["max"] <= 512
    report = storage.fetch_file(f"{output}/report.md").read_text()
    assert "![token lengths](token_lengths.png)" in report and "| contracts |" in report
    assert storage.fetch_file(f"{output}/token_lengths.png").read_bytes().startswith(b"\x89PNG")
    print(report)

    # What the train step will read: completions end with the demo template's end of turn.
    train = [json.loads(line)
             for line in storage.fetch_file(f"{output}/train.jsonl").read_text().splitlines()]
    assert all(r["completion"].endswith("<|im_end|>") for r in train)
    assert all(r["prompt"].startswith("<|begin_of_text|>") for r in train)


@pytest.mark.parametrize("fmt", ["alpaca", "chat", "prompt_completion", "text"])
def test_demo_datasets_in_every_format(demo, tmp_path, fmt):
    path = getattr(demo, fmt)
    result = run(make_config([{"uri": str(path)}], max_seq_len=512), None, tmp_path / "out", demo.model_dir)
    files = result.stats["sources"][fmt]["files"]
    assert files[0]["format"] == fmt
    out = rows(result.train_path)
    assert out and {r["format"] for r in out} == {fmt}
    if fmt == "text":
        return
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo.model_dir)
    for r in out[:50]:
        full = tok.apply_chat_template(r["messages"], tokenize=False)
        assert r["prompt"] + r["completion"] == full.rstrip()
        assert r["completion"].endswith(tok.eos_token)
