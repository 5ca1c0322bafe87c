"""The tracking config section, the config's flattening into MLflow params, and what the compiled
pipeline gives a step (no server needed)."""

from __future__ import annotations

import pytest

from components.common import tracking
from components.common.config import ConfigError, config_from_dict

BASE = {"model": {"name": "m", "base": "hf://org/model"}, "data": {"sources": [{"uri": "s3://kt-bucket/a.jsonl"}]},
        "storage": {"root": "s3://kt-bucket/root"}}


def config(**tracking_section):
    return config_from_dict({**BASE, "tracking": tracking_section})


def test_defaults_are_off_optional_and_registering():
    t = config_from_dict(BASE).tracking
    assert (t.mlflow_uri, t.experiment, t.registry, t.required) == (None, None, True, False)


@pytest.mark.parametrize("uri", ["mlflow:5000", "ftp://host/x", "file:///tmp/mlruns", "http://"])
def test_the_uri_must_be_http(uri):
    with pytest.raises(ConfigError, match=r"tracking\.mlflow_uri: expected an http:// or https:// URL"):
        config(mlflow_uri=uri)


def test_credentials_in_the_uri_are_refused_and_not_echoed():
    with pytest.raises(ConfigError, match=r"tracking\.mlflow_uri: expected a URL without credentials") as e:
        config(mlflow_uri="https://alice:s3cr3t-value@mlflow.example.com")
    assert "s3cr3t-value" not in str(e.value)


def test_unknown_keys_and_bad_types_name_the_key():
    with pytest.raises(ConfigError, match=r"tracking\.mlflow_url: unknown key"):
        config(mlflow_url="http://x")
    with pytest.raises(ConfigError, match=r"tracking\.required: expected a valid boolean"):
        config(required="sometimes")
    with pytest.raises(ConfigError, match=r"tracking\.experiment: expected String should have at least 1"):
        config(experiment="")


def test_report_to_mlflow_points_at_the_tracking_section():
    with pytest.raises(ConfigError, match=r"train\.report_to: 'mlflow' is done by the tracking section"):
        config_from_dict({**BASE, "train": {"report_to": ["mlflow"]}})


def test_the_uri_comes_from_the_config_else_the_environment(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(config()) is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")
    assert tracking.tracking_uri(config()) == "http://from-env:5000"
    assert tracking.tracking_uri(config(mlflow_uri="http://from-config:5000/")) == "http://from-config:5000"
    assert tracking.experiment_name(config()) == "kubetune-m"
    assert tracking.experiment_name(config(experiment="team-x")) == "team-x"


def test_turning_tracking_on_keeps_the_config_hash():
    assert config(mlflow_uri="http://x:5000", required=True).content_hash() == config_from_dict(BASE).content_hash()
    assert config_from_dict({**BASE, "train": {"lr": 0.1}}).content_hash() != config_from_dict(BASE).content_hash()


def test_flatten_names_every_leaf_by_its_dotted_path():
    flat = tracking.flatten({"train": {"lora": {"r": 16, "target_modules": ["q", "v"]}, "lr": 2e-4, "x": None},
                             "data": {"sources": [{"uri": "s3://kt-bucket/a", "weight": 1.0}]}, "empty": [], "map": {}})
    assert flat == {"train.lora.r": "16", "train.lora.target_modules.0": "q", "train.lora.target_modules.1": "v",
                    "train.lr": "0.0002", "train.x": "null", "data.sources.0.uri": "s3://kt-bucket/a",
                    "data.sources.0.weight": "1.0", "empty": "[]", "map": "{}"}
    assert len(tracking.flatten({"k": "x" * 10_000})["k"]) == tracking.MAX_PARAM_CHARS


def test_config_params_cover_every_section_and_hold_no_environment_secret(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-from-the-environment")
    cfg = config(mlflow_uri="http://mlflow:5000")
    params = tracking.config_params(cfg)
    assert {k.split(".")[0] for k in params} == set(type(cfg).model_fields)
    assert params["model.name"] == "m" and params["tracking.mlflow_uri"] == "http://mlflow:5000"
    assert not [k for k, v in params.items() if "pw-from-the-environment" in v]


def test_the_compiled_pipeline_gives_steps_the_mlflow_secret_only_when_tracking_is_configured():
    from kfp import compiler

    from pipelines.finetune import MLFLOW_SECRET_KEYS, build_pipeline

    def secret_env(cfg) -> dict:
        import tempfile

        import yaml

        with tempfile.NamedTemporaryFile(suffix=".yaml") as f:
            compiler.Compiler().compile(build_pipeline(cfg), f.name)
            docs = list(yaml.safe_load_all(open(f.name)))
        platform = next((d for d in docs if "platforms" in d), {})
        execs = platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
        return {name: [s for s in spec.get("secretAsEnv", []) if s.get("secretName") == cfg.tracking.secret_name]
                for name, spec in execs.items()}

    assert all(v == [] for v in secret_env(config_from_dict(BASE)).values())
    on = secret_env(config(mlflow_uri="http://mlflow.mlflow:5000", secret_name="team-mlflow"))
    assert len(on) == 6
    for entries in on.values():
        assert len(entries) == 1 and entries[0]["optional"] is True
        assert sorted(kv["envVar"] for kv in entries[0]["keyToEnv"]) == sorted(MLFLOW_SECRET_KEYS)
