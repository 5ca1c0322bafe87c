"""The config schema: example configs load, and bad configs fail with the YAML path and line."""

import json
from pathlib import Path

import pytest

from components.common.config import ConfigError, KubetuneConfig, config_from_dict, json_schema, load_config
from pipelines.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "pipelines" / "configs"
EXAMPLES = sorted(CONFIGS.glob("*.yaml"))


def test_examples_are_shipped():
    names = {p.name for p in EXAMPLES}
    assert {"tiny-cpu-demo.yaml", "llama3.1-8b-qlora.yaml", "mistral-7b-lora.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_validate(path):
    cfg = load_config(path)
    assert isinstance(cfg, KubetuneConfig)
    assert cfg.model.trust_remote_code is False
    assert cfg.model.allow_pickle is False


def test_guide_defaults_for_a_7b_run():
    cfg = load_config(CONFIGS / "llama3.1-8b-qlora.yaml")
    assert cfg.train.method == "qlora"
    assert (cfg.train.lora.r, cfg.train.lora.alpha) == (16, 32)
    assert cfg.train.per_device_batch_size * cfg.train.gradient_accumulation_steps == 16
    assert cfg.train.lr_scheduler == "cosine" and cfg.train.gradient_checkpointing


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


MINIMAL = """\
model:
  name: m
  base: /models/base
data:
  sources:
    - uri: data.jsonl
storage:
  root: /tmp/out
"""


def test_minimal_config_gets_defaults(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.prepare.max_seq_len == 2048
    assert cfg.quantize.types == ["Q4_K_M", "Q8_0"]
    from pipelines.steps import spec

    assert spec("train").options(cfg).use_gpu and not spec("prepare").options(cfg).use_gpu


def test_unknown_key_names_path_and_line(tmp_path):
    path = write(tmp_path, MINIMAL + "train:\n  lora:\n    rank: 8\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert f"{path}:11: train.lora.rank: unknown key" in msg


def test_wrong_value_names_path_line_and_expectation(tmp_path):
    path = write(tmp_path, MINIMAL + "train:\n  lr: -0.1\n  method: dora\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert f"{path}:10: train.lr: expected greater than 0 (got -0.1)" in msg
    assert f"{path}:11: train.method: expected 'lora', 'qlora' or 'full' (got \"dora\")" in msg


def test_missing_required_section(tmp_path):
    path = write(tmp_path, "model:\n  name: m\n  base: x\nstorage:\n  root: /tmp\n")
    with pytest.raises(ConfigError, match=r"data: required field is missing"):
        load_config(path)


def test_list_item_error_points_at_item(tmp_path):
    path = write(tmp_path, MINIMAL.replace("- uri: data.jsonl", "- uri: data.jsonl\n      weight: 0"))
    with pytest.raises(ConfigError, match=r"cfg.yaml:7: data.sources.0.weight: expected greater than 0"):
        load_config(path)


def test_invalid_yaml_names_line(tmp_path):
    path = write(tmp_path, "model:\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml:\d+: invalid YAML"):
        load_config(path)


def test_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_empty_target_modules_rejected():
    data = {"model": {"name": "m", "base": "b"}, "data": {"sources": [{"uri": "d"}]},
            "storage": {"root": "/tmp"}, "train": {"lora": {"target_modules": []}}}
    with pytest.raises(ConfigError, match="target_modules"):
        config_from_dict(data)


def test_assignment_is_validated(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(ValueError):
        cfg.train.lora.r = 0


def test_content_hash_changes_with_content(tmp_path):
    a = load_config(write(tmp_path, MINIMAL))
    b = load_config(write(tmp_path, MINIMAL.replace("name: m", "name: n")))
    assert a.content_hash() != b.content_hash()
    assert a.content_hash() == load_config(write(tmp_path, MINIMAL)).content_hash()


def test_cli_schema_and_validate(tmp_path, capsys):
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema == json_schema()
    assert set(schema["properties"]) >= {"model", "data", "prepare", "train", "eval", "merge", "quantize",
                                         "publish", "serve", "cluster"}
    assert main(["config", "validate", str(CONFIGS / "tiny-cpu-demo.yaml")]) == 0
    bad = write(tmp_path, MINIMAL + "serve:\n  max_model_len: lots\n")
    assert main(["config", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "serve.max_model_len" in err and "cfg.yaml:10" in err


def test_set_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    from components.common.config import parse_overrides

    overrides = parse_overrides(["train.max_steps=50", "quantize.types=[Q8_0]", "model.trust_remote_code=false"])
    assert overrides == {"train.max_steps": 50, "quantize.types": ["Q8_0"], "model.trust_remote_code": False}
    cfg = load_config(write(tmp_path, MINIMAL), overrides)
    assert cfg.train.max_steps == 50 and cfg.quantize.types == ["Q8_0"]
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["train.max_steps"])
    with pytest.raises(ConfigError, match=r"train\.lr: expected greater than 0"):
        load_config(write(tmp_path, MINIMAL), parse_overrides(["train.lr=-1"]))
