"""Bad input gives a clear error before any heavy work (the weights are never fetched), and corrupt or
incomplete checkpoints are skipped with a warning, never loaded."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from components.common import storage
from components.common.config import ConfigError
from components.common.errors import KubetuneError
from components.train import checkpoints, data
from components.train.step import run


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if the step gets as far as fetching the model's weights."""
    def refuse(*a, **k):
        raise AssertionError("the weights were fetched before the bad input was reported")

    monkeypatch.setattr(storage, "fetch_model", refuse)


def train(cfg, dataset_dir, tmp_path):
    return run(cfg, dataset_dir, tmp_path / "out", checkpoint_uri=None, run_id="bad", progress=False)


def test_unknown_target_module(make_config, prepared, tmp_path, no_weights):
    cfg = make_config(lora={"r": 8, "alpha": 16, "target_modules": ["q_proj", "qkv_proj"]})
    with pytest.raises(KubetuneError) as e:
        train(cfg, prepared, tmp_path)
    msg = str(e.value)
    assert "train.lora.target_modules" in msg and "'qkv_proj'" in msg
    assert "expected names from: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj" in msg


def test_lm_head_target_is_refused(make_config, prepared, tmp_path, no_weights):
    with pytest.raises(KubetuneError, match="'lm_head' cannot be a LoRA target"):
        train(make_config(lora={"target_modules": ["q_proj", "lm_head"]}), prepared, tmp_path)


@pytest.mark.parametrize(("override", "field"), [({"lora": {"r": 0}}, "train.lora.r"),
                                                 ({"lora": {"r": -4}}, "train.lora.r"),
                                                 ({"lr": 0}, "train.lr"), ({"lr": -1e-4}, "train.lr")])
def test_non_positive_rank_or_learning_rate(make_config, override, field):
    with pytest.raises(ConfigError) as e:
        make_config(**override)
    assert field in str(e.value) and "greater than 0" in str(e.value)


def test_qlora_without_bitsandbytes(make_config, prepared, tmp_path, monkeypatch, no_weights):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    with pytest.raises(KubetuneError) as e:
        train(make_config(method="qlora"), prepared, tmp_path)
    assert "train.method qlora needs bitsandbytes" in str(e.value) and "lora" in str(e.value)


def test_qlora_where_bitsandbytes_cannot_run(make_config, prepared, tmp_path, monkeypatch, no_weights):
    import bitsandbytes.functional as bnbf

    def broken(*a, **k):
        raise RuntimeError("no 4-bit kernel for this device")

    monkeypatch.setattr(bnbf, "quantize_4bit", broken)
    with pytest.raises(KubetuneError, match="cannot run 4-bit nf4 on cpu .*no 4-bit kernel"):
        train(make_config(method="qlora"), prepared, tmp_path)


def test_flash_attention_without_gpu(make_config, prepared, tmp_path, no_weights):
    with pytest.raises(KubetuneError, match="flash_attention_2 needs a CUDA GPU"):
        train(make_config(model={"attn_implementation": "flash_attention_2"}), prepared, tmp_path)


@pytest.mark.parametrize(("field", "value", "expected"), [("optim", "adamw_typo", "train.optim: 'adamw_typo'"),
                                                          ("lr_scheduler", "cosinus", "train.lr_scheduler")])
def test_unknown_optimizer_or_scheduler(make_config, prepared, tmp_path, no_weights, field, value, expected):
    with pytest.raises(KubetuneError, match=expected):
        train(make_config(**{field: value}), prepared, tmp_path)


# ---- dataset ------------------------------------------------------------------------------------
def test_missing_dataset_directory(make_config, tmp_path, no_weights):
    with pytest.raises(data.DatasetError, match="prepared dataset directory not found.*train.jsonl"):
        train(make_config(), tmp_path / "nope", tmp_path)


def test_dataset_without_train_split(make_config, tmp_path, no_weights):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "stats.json").write_text("{}")
    with pytest.raises(data.DatasetError) as e:
        train(make_config(), tmp_path / "ds", tmp_path)
    assert "no train.jsonl or train.parquet (found: stats.json)" in str(e.value)


@pytest.mark.parametrize(("record", "expected"), [
    ({"instruction": "x", "output": "y"}, "record 2: has keys ['instruction', 'output']; expected records "
                                          "with 'messages'"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "record 2: the last message has role 'user'"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, "record 2: messages[0] ="),
    ({"messages": []}, "record 2: 'messages' is empty"),
])
def test_wrong_schema_names_the_record_and_what_was_expected(make_config, tmp_path, no_weights, record,
                                                             expected):
    ds = tmp_path / "ds"
    ds.mkdir()
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    (ds / "train.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(data.DatasetError) as e:
        train(make_config(), ds, tmp_path)
    assert str(ds / "train.jsonl") in str(e.value) and expected in str(e.value)


def test_not_json(make_config, tmp_path, no_weights):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(data.DatasetError, match=r"train.jsonl:2: not valid JSON"):
        train(make_config(), tmp_path / "ds", tmp_path)


def test_text_mixed_with_chat(demo, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo.model_dir)
    ds = tmp_path / "ds"
    ds.mkdir()
    rows = [{"text": "plain text"}, {"messages": [{"role": "user", "content": "q"},
                                                  {"role": "assistant", "content": "a"}]}]
    (ds / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(data.DatasetError, match="mixes 1 plain-text records and 1 chat records.*full_sequence"):
        data.build(ds, "completion_only", tok)
    built = data.build(ds, "full_sequence", tok)  # allowed: both become text
    assert built.mode == "full_sequence"
    texts = built.train["text"]
    assert texts[0] == "plain text" and texts[1].startswith("<|im_start|>user\nq<|im_end|>")


# ---- checkpoints --------------------------------------------------------------------------------
def _fake_checkpoint(root, step):
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (d / "adapter_model.safetensors").write_bytes(b"weights of step %d" % step)
    return d


def test_corrupt_and_incomplete_checkpoints_are_skipped(s3_env, tmp_path, caplog):
    ckpts = s3_env.uri("runs/r/train/checkpoints")
    for step in (2, 4, 6, 8):
        local = _fake_checkpoint(tmp_path, step)
        if step == 8:  # files uploaded, killed before the manifest
            for f in local.iterdir():
                storage.upload_file(f, storage.join_uri(ckpts, f"checkpoint-{step}", f.name))
        else:
            storage.publish_dir(local, storage.join_uri(ckpts, f"checkpoint-{step}"), producer="train",
                                lineage={"config_hash": "abc"})
    # checkpoint-6: a weights file changed after its manifest was written
    bucket, key = storage.split_s3(storage.join_uri(ckpts, "checkpoint-6", "adapter_model.safetensors"))
    s3_env.client().put_object(Bucket=bucket, Key=key, Body=b"bit rot")
    # checkpoint-4: complete, but written under another config
    storage.publish_dir(_fake_checkpoint(tmp_path / "other", 4), storage.join_uri(ckpts, "checkpoint-4"),
                        producer="train", lineage={"config_hash": "another"}, overwrite=True)

    with caplog.at_level(logging.WARNING, logger="components.train.checkpoints"):
        resume = checkpoints.find_resume(ckpts, config_hash="abc")
    assert resume is not None and resume.step == 2
    assert json.loads((resume.local_dir / "trainer_state.json").read_text())["global_step"] == 2
    text = caplog.text
    assert "checkpoint-8" in text and "no _manifest.json (an interrupted upload): skipped" in text
    assert "checkpoint-6" in text and "corrupt or unreadable, skipped" in text and "sha256" in text
    assert "checkpoint-4" in text and "another config" in text


def test_local_checkpoint_without_state_is_skipped(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    good = _fake_checkpoint(tmp_path / "src", 3)
    storage.publish_dir(good, str(root / "checkpoint-3"), producer="train")
    bad = _fake_checkpoint(tmp_path / "src", 5)
    (bad / "trainer_state.json").unlink()
    storage.publish_dir(bad, str(root / "checkpoint-5"), producer="train")
    with caplog.at_level(logging.WARNING):
        resume = checkpoints.find_resume(str(root))
    assert resume.step == 3
    assert "checkpoint-5" in caplog.text and "no trainer_state.json" in caplog.text
    assert checkpoints.find_resume(str(tmp_path / "none")) is None


def test_report_to_drops_integrations_that_are_not_installed(caplog):
    from components.train.step import report_to

    with caplog.at_level(logging.WARNING):
        assert report_to(["no-such-tracker"]) == "none"
    assert "no-such-tracker is not installed here" in caplog.text
    assert report_to([]) == "none"


def test_early_stopping_needs_a_test_split(make_config, tmp_path, no_weights, prepared):
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "train.jsonl").write_text((prepared / "train.jsonl").read_text())
    with pytest.raises(data.DatasetError, match="early_stopping_patience needs the test split"):
        train(make_config(early_stopping_patience=2), ds, tmp_path)
