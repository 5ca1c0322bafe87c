"""The kubetune pipeline: prepare -> train -> eval -> If(gate) -> merge -> quantize -> publish.

`build_pipeline(cfg)` returns the @dsl.pipeline function for one config. The same function is
compiled for a cluster (`kubetune compile`), submitted (`kubetune submit`), scheduled, and run on a
laptop by the KFP local SubprocessRunner (`kubetune run-local`, `kubetune demo`).

Pipeline parameters: `config` (the whole config as JSON; never holds credentials), `run_id` (empty:
the KFP run's id), and `scheduled` (recurring runs set it; it turns on the "no new data" early end
unless `publish.skip_if_no_new_data` says otherwise).
"""


from kfp import dsl, kubernetes

from components.common.config import KubetuneConfig
from components.common.steps import STEP_NAMES

# Environment variables that the S3 Secret provides to every step (Secret key -> env var). Only
# the endpoint is optional-looking, but a Secret lacking a key fails the pod clearly at start.
S3_SECRET_KEYS = {
    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL_S3": "AWS_ENDPOINT_URL_S3",
}
# MLflow credentials (components/common/tracking.py), from the Secret tracking.secret_name when the
# config names a tracking server. Optional: a server without authentication needs no Secret.
MLFLOW_SECRET_KEYS = {name: name for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                                              "MLFLOW_TRACKING_TOKEN")}
CACHE_MOUNT = "/cache"
RETRY_BACKOFF = "60s"
RETRY_BACKOFF_FACTOR = 2.0
RETRY_BACKOFF_MAX = "3600s"


def _components(cfg: KubetuneConfig) -> dict:
    """Each step's KFP component for this config (imported here, so that `kubetune --help` and config
    validation don't import every step)."""
    from pipelines.steps import component_module

    return {name: component_module(name).build(cfg) for name in STEP_NAMES}


def configure_task(task: dsl.PipelineTask, cfg: KubetuneConfig, step: str) -> dsl.PipelineTask:
    """Retries, caching, GPUs, placement, credentials and the model cache, for one step.

    KFP's own cache is off: kubetune caches explicitly, keyed by the input manifests' content hashes
    (components/common/lifecycle.py), which also works in local mode and survives a new run id.
    """
    from pipelines.steps import spec

    options = spec(step).options(cfg)
    task.set_display_name(step)
    task.set_caching_options(enable_caching=False)
    if options.retries:
        task.set_retry(num_retries=options.retries, backoff_duration=RETRY_BACKOFF,
                       backoff_factor=RETRY_BACKOFF_FACTOR, backoff_max_duration=RETRY_BACKOFF_MAX)
    if options.use_gpu and cfg.cluster.gpu.count > 0:
        task.set_accelerator_type("nvidia.com/gpu")
        task.set_accelerator_limit(cfg.cluster.gpu.count)
        if cfg.cluster.gpu.accelerator_type:  # the GPU model, as NVIDIA's GPU feature discovery labels nodes
            kubernetes.add_node_selector(task, "nvidia.com/gpu.product", cfg.cluster.gpu.accelerator_type)
    if options.use_gpu:  # GPU node placement: selectors and taint tolerations
        for key, value in cfg.cluster.node_selector.items():
            kubernetes.add_node_selector(task, key, value)
        for tol in cfg.cluster.tolerations:
            kubernetes.add_toleration(task, key=tol.key, operator=tol.operator, value=tol.value, effect=tol.effect)
    kubernetes.use_secret_as_env(task, secret_name=cfg.cluster.s3_secret_name, secret_key_to_env=S3_SECRET_KEYS)
    if cfg.tracking.mlflow_uri:
        kubernetes.use_secret_as_env(task, secret_name=cfg.tracking.secret_name, secret_key_to_env=MLFLOW_SECRET_KEYS,
                                     optional=True)
    if cfg.cluster.cache_pvc:
        kubernetes.mount_pvc(task, pvc_name=cfg.cluster.cache_pvc, mount_path=CACHE_MOUNT)
        task.set_env_variable("KUBETUNE_CACHE", f"{CACHE_MOUNT}/kubetune")
        task.set_env_variable("HF_HOME", f"{CACHE_MOUNT}/huggingface")
    task.set_env_variable("KUBETUNE_PROGRESS", "1")
    return task


def build_pipeline(cfg: KubetuneConfig):
    ops = _components(cfg)
    config_json = cfg.model_dump_json()

    @dsl.pipeline(name=f"kubetune-{cfg.model.name}",
                  description=f"Fine-tune {cfg.model.base} ({cfg.train.method}) and publish a release of "
                              f"{cfg.model.name}")
    def finetune(config: str = config_json, run_id: str = "", scheduled: bool = False):
        job_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        common = {"config": config, "run_id": run_id, "job_id": job_id}
        prepare = configure_task(ops["prepare"](**common, scheduled=scheduled), cfg, "prepare")
        dataset = prepare.outputs["dataset"]
        with dsl.If(prepare.outputs["Output"] == True, name="new-data"):  # noqa: E712 (KFP condition)
            train = configure_task(ops["train"](**common, dataset=dataset), cfg, "train")
            adapter = train.outputs["model"]
            evaluate = configure_task(ops["eval"](**common, dataset=dataset, adapter=adapter), cfg, "eval")
            with dsl.If(evaluate.outputs["Output"] == True, name="gate-passed"):  # noqa: E712
                merge = configure_task(ops["merge"](**common, adapter=adapter), cfg, "merge")
                merged = merge.outputs["model"]
                quantize = configure_task(ops["quantize"](**common, model=merged, dataset=dataset), cfg,
                                          "quantize")
                configure_task(ops["publish"](**common, dataset=dataset, adapter=adapter,
                                              evaluation=evaluate.outputs["evaluation"], merged=merged,
                                              gguf=quantize.outputs["gguf"]), cfg, "publish")

    return finetune
