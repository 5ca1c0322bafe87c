"""Reading a kubetune run back from a real MLflow server (tests/tracking)."""

from __future__ import annotations

import yaml

from components.common import storage, tracking
from components.common.config import load_config
from components.common.lifecycle import resolve_inputs, run_and_publish
from pipelines.steps import component_module


def pipeline_run(url: str, experiment: str, run_id: str):
    """The MLflow run of the kubetune run `run_id` (tag kubetune.run_id, kind pipeline), and its client."""
    client = tracking.client(url)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r} at {url}"
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`kubetune.run_id` = '{run_id}' and "
                                                                 "tags.`kubetune.kind` = 'pipeline'")
    assert len(runs) == 1, f"expected one pipeline run for {run_id}, found {len(runs)}"
    return client, runs[0]


def step_runs(client, run) -> dict:
    """The nested runs of a pipeline run, by step name."""
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    return {r.data.tags["kubetune.step"]: r for r in children}


def all_artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    """Every artifact file of the run (recursively), as paths."""
    found = []
    for entry in client.list_artifacts(run_id, path):
        found += all_artifacts(client, run_id, entry.path) if entry.is_dir else [entry.path]
    return found


def tiny_config(path, demo, root: str, mlflow_uri: str | None, **tracking_options):
    """The demo's task on its random base, as small as every step allows."""
    cfg = {"model": {"name": "tracked-tiny", "base": str(demo.model_dir), "dtype": "float32"},
           "data": {"sources": [{"uri": str(demo.chat), "name": "contracts"}]},
           "storage": {"root": root},
           "prepare": {"max_seq_len": 512, "seed": 7, "max_records": 60},
           "train": {"method": "full", "max_steps": 4, "per_device_batch_size": 2, "gradient_accumulation_steps": 1,
                     "optim": "adamw_torch", "gradient_checkpointing": False, "logging_steps": 1, "eval_steps": 100,
                     "save_steps": 100},
           "eval": {"max_examples": 2, "max_new_tokens": 8, "batch_size": 2,
                    "gate": {"min_primary_improvement": -1.0, "min_json_valid_rate": None}},
           "merge": {"dtype": "float32"},
           "quantize": {"types": ["Q8_0"], "eval_records": 2, "eval_max_tokens": 64, "generate_records": 1,
                        "generate_tokens": 8, "hf_reference": False, "max_ppl_delta_pct": 1000.0},
           "tracking": {"mlflow_uri": mlflow_uri, "experiment": "kubetune-unreachable", **tracking_options}}
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path)


# The pipeline's edges (pipelines/finetune.py): each step's inputs, by name, from earlier steps.
INPUTS = {"prepare": {}, "train": {"dataset": "prepare"}, "eval": {"dataset": "prepare", "adapter": "train"},
          "merge": {"adapter": "train"}, "quantize": {"model": "merge", "dataset": "prepare"},
          "publish": {"dataset": "prepare", "adapter": "train", "evaluation": "eval", "merged": "merge",
                      "gguf": "quantize"}}


def run_step(cfg, step: str, run_id: str):
    run_root = storage.join_uri(cfg.storage.root, "runs", run_id)
    module = component_module(step)
    inputs = resolve_inputs({name: storage.join_uri(run_root, source) for name, source in INPUTS[step].items()})
    return run_and_publish(module.SPEC, cfg, inputs, module.execute, run_id=run_id,
                           output_uri=storage.join_uri(run_root, step), progress=False)
