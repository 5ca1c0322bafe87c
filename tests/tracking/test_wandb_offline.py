"""Weights & Biases through `train.report_to: [wandb]` (transformers' own WandbCallback; the `wandb`
extra), offline (WANDB_MODE=offline: no account, no network): a real, short training run writes a
W&B offline run whose records hold the training loss. MLflow tracking is off here."""

from __future__ import annotations

from tracking_helpers import run_step, tiny_config


def test_report_to_wandb_writes_an_offline_run(demo, tmp_path, monkeypatch, torch_threads):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "wandb-dir").mkdir()
    cfg = tiny_config(tmp_path / "cfg.yaml", demo, str(tmp_path / "root"), None)
    cfg.train.report_to = ["wandb"]
    with torch_threads(1):
        run_step(cfg, "prepare", "wandb-1")
        trained = run_step(cfg, "train", "wandb-1")
    assert trained.manifest.lineage["train_steps"] == 4
    import wandb

    wandb.finish()  # what the end of a step's process does: the offline run's records are flushed
    runs = sorted((tmp_path / "wandb-dir" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    records = list(runs[0].glob("run-*.wandb"))
    assert len(records) == 1
    data = records[0].read_bytes()
    assert b"train/loss" in data and b"wandb-1" in data  # the curve's key, and the run named by the run id
