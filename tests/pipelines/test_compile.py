"""Compiling the pipeline: parse the YAML back into KFP's PipelineSpec and PlatformSpec protos and
check the DAG, GPU requests, credentials, placement, retries and the gate condition."""

from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from components.common.config import load_config
from pipelines.cli import main
from pipelines.compile import compile_pipeline

CONFIGS = Path(__file__).resolve().parents[2] / "pipelines" / "configs"


def compiled(tmp_path, name="llama3.1-8b-qlora.yaml", **kwargs):
    out = tmp_path / "pipeline.yaml"
    compile_pipeline(load_config(CONFIGS / name), out, kubernetes_dir=tmp_path / "k8s", **kwargs)
    docs = list(yaml.safe_load_all(out.read_text()))
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())  # rejects unknown fields
    platform = json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())
    return spec, platform, out


def all_tasks(spec):
    """task name -> (task spec, the DAG it is in), across the root and the If-condition sub-DAGs."""
    tasks = {}
    for dag_name, dag in [("root", spec.root.dag)] + [(k, c.dag) for k, c in spec.components.items()
                                                        if c.HasField("dag")]:
        for name, task in dag.tasks.items():
            tasks[name] = (task, dag_name)
    return tasks


def test_dag_order_and_gate(tmp_path):
    spec, _, _ = compiled(tmp_path)
    tasks = all_tasks(spec)
    for step in ("prepare", "train", "evaluate", "merge", "quantize", "publish"):
        assert step in tasks
    deps = {name: set(task.dependent_tasks) for name, (task, _) in tasks.items()}
    assert "evaluate" in deps["condition-2"] and {"evaluate", "train"} <= deps["condition-2"]
    assert deps["evaluate"] >= {"train"} and deps["train"] == set()  # prepare's output enters via the If
    assert "prepare" in deps["condition-1"]
    assert deps["quantize"] >= {"merge"} and deps["publish"] >= {"quantize", "merge"}
    # merge, quantize and publish live inside the gate's If; the gate reads eval's bool output
    gate_task, _ = tasks["condition-2"]
    assert "pipelinechannel--evaluate-Output" in gate_task.trigger_policy.condition
    assert "== true" in gate_task.trigger_policy.condition
    assert tasks["merge"][1] == tasks["publish"][1] == "comp-condition-2"
    assert tasks["train"][1] == "comp-condition-1"  # after the "new data" check


def test_gpu_placement_credentials_and_retries(tmp_path):
    spec, platform, _ = compiled(tmp_path)
    executors = json_format.MessageToDict(platform)["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    deployment = json_format.MessageToDict(spec.deployment_spec)["executors"]
    train_exec = deployment["exec-train"]["container"]
    assert train_exec["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert train_exec["resources"]["accelerator"]["resourceCount"] == "1"
    assert train_exec["image"] == "ghcr.io/kubetune/kubetune-train:0.1.0"
    assert "accelerator" not in deployment["exec-prepare"]["container"].get("resources", {})
    train_k8s = executors["exec-train"]
    assert train_k8s["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true",
                                                   "nvidia.com/gpu.product": "nvidia-l4"}
    assert train_k8s["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "nodeSelector" not in executors["exec-prepare"]
    for name, executor in executors.items():
        secret = executor["secretAsEnv"][0]
        assert secret["secretName"] == "kubetune-s3", name
        assert {m["envVar"] for m in secret["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                             "AWS_ENDPOINT_URL_S3"}
        assert executor["pvcMount"][0]["mountPath"] == "/cache"
    tasks = all_tasks(spec)
    for name, (task, _) in tasks.items():
        if not name.startswith("condition"):
            assert task.retry_policy.max_retry_count >= 2, name
            assert task.retry_policy.backoff_duration.seconds == 60
    assert tasks["train"][0].retry_policy.max_retry_count == 3
    assert not tasks["train"][0].caching_options.enable_cache  # kubetune's own cache, keyed by manifests


def test_no_secret_in_compiled_pipeline(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value-123")
    _, _, out = compiled(tmp_path)
    text = out.read_text() + "".join(p.read_text() for p in (tmp_path / "k8s").iterdir())
    assert "very-secret-value-123" not in text


def test_kubernetes_manifests(tmp_path):
    compiled(tmp_path)
    docs = list(yaml.safe_load_all((tmp_path / "k8s" / "pipeline-k8s.yaml").read_text()))
    assert [(d["apiVersion"], d["kind"]) for d in docs] == [("pipelines.kubeflow.org/v2beta1", "Pipeline"),
                                                            ("pipelines.kubeflow.org/v2beta1", "PipelineVersion")]
    assert docs[1]["spec"]["pipelineName"] == docs[0]["metadata"]["name"] == "kubetune-contracts-llama31-8b"


@pytest.mark.parametrize("name", ["llama3.1-8b-qlora.yaml", "mistral-7b-lora.yaml"])
def test_example_configs_compile(tmp_path, name):
    spec, _, _ = compiled(tmp_path, name)
    assert spec.pipeline_info.name.startswith("kubetune-")


def test_cpu_only_step_config(tmp_path):
    spec, platform, _ = compiled(tmp_path, "mistral-7b-lora.yaml")
    executors = json_format.MessageToDict(platform)["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert "nodeSelector" in executors["exec-train"]  # accelerator_type -> gpu.product selector
    assert "pvcMount" not in executors["exec-train"]  # no cache_pvc in this config


def test_empty_images_refused_for_a_cluster(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    assert main(["compile", "--config", str(CONFIGS / "tiny-cpu-demo.yaml"), "--output", str(out)]) == 2
    assert "cluster.images.base: empty; expected an image reference" in capsys.readouterr().err
    assert not out.exists()
    assert main(["compile", "--config", str(CONFIGS / "tiny-cpu-demo.yaml"), "--output", str(out), "--local"]) == 0
    assert out.exists()
