"""Live metrics reach a real Prometheus Pushgateway (Debian package prometheus-pushgateway), grouped by
run id, and a Pushgateway that is down never stops training."""

from __future__ import annotations

import json
import logging
import urllib.request

from components.train.live_metrics import JOB, PushgatewayCallback
from components.train.step import run


def pushed_groups(url: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v1/metrics", timeout=5) as r:
        return json.loads(r.read())["data"]


def test_training_pushes_loss_lr_throughput_step_epoch(pushgateway, make_config, prepared, tmp_path,
                                                       monkeypatch):
    monkeypatch.setenv("PROMETHEUS_PUSHGATEWAY", pushgateway)  # the env var enables it
    cfg = make_config(max_steps=3, logging_steps=1)
    run(cfg, prepared, tmp_path / "out", checkpoint_uri=None, run_id="live-1", progress=False)

    groups = [g for g in pushed_groups(pushgateway) if g["labels"].get("run_id") == "live-1"]
    assert len(groups) == 1 and groups[0]["labels"]["job"] == JOB
    group = groups[0]

    def value(name):
        metric = group[f"{JOB}_{name}"]
        assert metric["type"] == "GAUGE"
        return float(metric["metrics"][0]["value"])

    assert value("step") == 3
    assert 0 < value("epoch") < 1
    assert 0 < value("loss") < 20
    assert 0 < value("eval_loss") < 20
    assert value("learning_rate") >= 0
    assert value("tokens_per_second") > 0


def test_config_field_wins_and_a_dead_gateway_is_only_a_warning(pushgateway, caplog):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    dead = PushgatewayCallback("http://127.0.0.1:9", run_id="dead", timeout=1)
    live = PushgatewayCallback(pushgateway, run_id="cb-2")
    state = TrainerState()
    state.global_step, state.epoch, state.num_input_tokens_seen = 5, 0.5, 100
    args = TrainingArguments(output_dir="/tmp/unused", use_cpu=True, report_to="none")
    with caplog.at_level(logging.WARNING):
        for cb in (dead, live):
            cb.on_train_begin(args, state, TrainerControl())
            state.num_input_tokens_seen = 300
            cb.on_log(args, state, TrainerControl(), logs={"loss": 1.5, "learning_rate": 1e-4})
            cb.on_log(args, state, TrainerControl(), logs={"loss": 1.25, "learning_rate": 1e-4})
    assert dead.pushes == 0 and caplog.text.count("push failed") == 1  # once per failure streak
    assert live.pushes == 2
    (group,) = [g for g in pushed_groups(pushgateway) if g["labels"].get("run_id") == "cb-2"]
    assert float(group[f"{JOB}_loss"]["metrics"][0]["value"]) == 1.25
    assert float(group[f"{JOB}_step"]["metrics"][0]["value"]) == 5
