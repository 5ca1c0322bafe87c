"""Preemption: `kubetune train` as a subprocess against the real local S3 (SeaweedFS).

SIGTERM: the run saves a checkpoint at the next step boundary, uploads it and exits 75; the rerun
resumes from exactly that step and finishes. SIGKILL: nothing is saved at the kill, so the rerun
resumes from the newest periodic checkpoint, losing at most save_steps steps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from components.common import storage
from components.train.checkpoints import EXIT_PREEMPTED, list_checkpoints

MAX_STEPS = 20
SAVE_STEPS = 4


@pytest.fixture
def s3_run(s3_env, demo, prepared, tmp_path):
    """Model and a prepared dataset published to S3, and a config pointing at them. The dataset is
    the short records of the shared one, without a test split: these tests are about steps."""
    model_uri = s3_env.uri("models/tiny-llama")
    dataset_uri = s3_env.uri("runs/r1/prepare")
    short = tmp_path / "short"
    short.mkdir()
    lines = [line for line in (prepared / "train.jsonl").read_text().splitlines()
             if json.loads(line)["num_tokens"] <= 64]
    assert len(lines) >= 8
    (short / "train.jsonl").write_text("\n".join(lines) + "\n")
    storage.publish_dir(demo.model_dir, model_uri, producer="test")
    storage.publish_dir(short, dataset_uri, producer="prepare")
    cfg = {
        "model": {"name": "tiny-test", "base": model_uri, "dtype": "float32"},
        "data": {"sources": [{"uri": "unused.jsonl"}]},
        "storage": {"root": s3_env.uri("")},
        "prepare": {"max_seq_len": 384},
        "train": {"method": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "max_steps": MAX_STEPS,
                  "per_device_batch_size": 2, "gradient_accumulation_steps": 1, "lr": 0.003,
                  "max_grad_norm": 1.0, "optim": "adamw_torch", "gradient_checkpointing": False,
                  "eval_steps": 1000, "save_steps": SAVE_STEPS, "logging_steps": 2},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, dataset_uri


def start(config, dataset, output, log_path):
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--config", str(config), "--dataset", dataset,
           "--output", output, "--no-progress"]
    log = open(log_path, "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ),
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    log.close()
    return proc


def wait_for_checkpoint(proc, checkpoints_uri, step, log_path, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        complete, _ = list_checkpoints(checkpoints_uri)
        if step in complete:
            return complete
        if proc.poll() is not None:
            pytest.fail(f"train exited with {proc.returncode} before checkpoint-{step}:\n{log_path.read_text()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no checkpoint-{step} within {timeout}s:\n{log_path.read_text()}")


def finish(config, dataset, output, log_path):
    proc = start(config, dataset, output, log_path)
    rc = proc.wait(timeout=600)
    assert rc == 0, log_path.read_text()
    out = storage.fetch_dir(output)
    metrics = json.loads((out / "train_metrics.json").read_text())
    history = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    return metrics, history


def test_sigterm_saves_uploads_exits_75_and_the_rerun_resumes(s3_run, s3_env, tmp_path):
    config, dataset = s3_run
    output = s3_env.uri("runs/r1/train")
    checkpoints = storage.join_uri(output, "checkpoints")
    log = tmp_path / "train.log"

    proc = start(config, dataset, output, log)
    wait_for_checkpoint(proc, checkpoints, SAVE_STEPS, log)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=300)
    assert rc == EXIT_PREEMPTED, log.read_text()
    complete, incomplete = list_checkpoints(checkpoints)
    stopped = max(complete)
    assert SAVE_STEPS < stopped < MAX_STEPS, (complete, log.read_text())
    assert not incomplete
    assert f"stopped by SIGTERM at step {stopped}" in log.read_text()
    assert storage.read_manifest(output) is None, "a preempted run must not publish its output"
    state = json.loads((storage.fetch_dir(complete[stopped]) / "trainer_state.json").read_text())
    assert state["global_step"] == stopped

    metrics, history = finish(config, dataset, output, log)
    assert metrics["resumed_from_step"] == stopped
    assert metrics["global_step"] == MAX_STEPS
    assert f"resuming from checkpoint-{stopped}" in log.read_text()
    # the log history carries the first attempt's losses and continues after the resume point
    steps = [h["step"] for h in history if "loss" in h]
    assert steps[0] == 1 and steps[-1] == MAX_STEPS and len(steps) == len(set(steps))
    assert metrics["tokens_seen"] > metrics["tokens_seen_this_session"] > 0

    # a retry after the publish is a no-op
    rc = start(config, dataset, output, log).wait(timeout=300)
    assert rc == 0 and "already published" in log.read_text()


def test_sigkill_resumes_from_the_last_periodic_checkpoint(s3_run, s3_env, tmp_path):
    config, dataset = s3_run
    output = s3_env.uri("runs/r2/train")
    checkpoints = storage.join_uri(output, "checkpoints")
    log = tmp_path / "train.log"

    proc = start(config, dataset, output, log)
    wait_for_checkpoint(proc, checkpoints, 2 * SAVE_STEPS, log)
    proc.kill()  # SIGKILL: no handler runs
    assert proc.wait(timeout=60) == -signal.SIGKILL
    complete, _ = list_checkpoints(checkpoints)
    newest = max(complete)
    assert newest >= 2 * SAVE_STEPS and newest % SAVE_STEPS == 0 and newest < MAX_STEPS

    metrics, _ = finish(config, dataset, output, log)
    assert metrics["resumed_from_step"] == newest
    assert metrics["global_step"] == MAX_STEPS
