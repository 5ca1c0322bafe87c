"""The one configuration schema shared by the CLI, the pipeline and the tests.

A config is a YAML file with the sections below. Unknown keys are errors, and every error names
the YAML path (and line, when it came from a file) and what was expected, so that a typo such as
``train.lora.rank`` fails at load time instead of silently training with a default.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.common.errors import KubetuneError
from components.common.steps import StepName


class ConfigError(KubetuneError, ValueError):
    """A config that does not match the schema. The message names the file, path and line."""


class Section(BaseModel):
    # extra="forbid": unknown keys are errors. validate_assignment so tests that tweak a loaded
    # config (cfg.train.lr = -1) still go through validation.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


DType = Literal["auto", "float32", "float16", "bfloat16"]
DataFormat = Literal["auto", "alpaca", "chat", "prompt_completion", "text"]
Policy = Literal["fail", "skip"]

# model.name and publish.version name the release directory <root>/releases/<model.name>/<version>/, and
# charts/vllm puts them into Kubernetes label values, so both are one path segment (no '/', never '..') of at
# most 63 characters: a Kubernetes name for the model (lowercase, no '_'), a label value for the version.
MODEL_NAME_PATTERN = r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$"
VERSION_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"
_PATTERN_WORDS = {
    MODEL_NAME_PATTERN: "a Kubernetes name: 1-63 lowercase letters, digits, '-' or '.', starting and ending "
                        "with a letter or digit (no '/', '_' or uppercase; it names releases/<model.name>/)",
    VERSION_PATTERN: "a release version: 1-63 letters, digits, '.', '_' or '-', starting and ending with a "
                     "letter or digit (one path segment, no '/': it names releases/<model.name>/<version>/)",
}


def _not_latest(value: str | None) -> str | None:
    # charts/vllm refuses a release URI with 'latest' in it: releases are pinned by immutable versions.
    if value is not None and "latest" in value.lower():
        raise ValueError("a name without 'latest' (charts/vllm refuses release URIs containing it: a release is "
                         "pinned by an immutable version)")
    return value


# ----------------------------------------------------------------------------------------------
# model / data / prepare
# ----------------------------------------------------------------------------------------------
class ModelConfig(Section):
    name: str = Field(description="Model name used for releases and serving, e.g. 'contracts-llama'.",
                      pattern=MODEL_NAME_PATTERN)
    base: str = Field(description="Base model: a local path, file://, s3:// (a prefix with a manifest) "
                                  "or hf://org/name[@revision].")
    trust_remote_code: bool = Field(False, description="Run Python code shipped with the model. Off by "
                                                       "default: it executes arbitrary code.")
    allow_pickle: bool = Field(False, description="Allow .bin/.pt (pickle) weights. Off by default: "
                                                  "only safetensors are loaded.")
    dtype: DType = Field("auto", description="Weights dtype for training/merge; auto = bf16 on GPUs "
                                             "that support it, else float32.")
    chat_template: str | None = Field(None, description="Override the tokenizer's chat template: a path "
                                                        "to a .jinja file. Default: the model's own.")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"

    _name_not_latest = field_validator("name")(_not_latest)


class DataSource(Section):
    uri: str = Field(description="JSONL, JSON or Parquet file (local, file://, s3://, hf://) or an "
                                 "s3:// prefix, meaning every matching object under it.")
    name: str | None = Field(None, description="Source tag kept on every record; default: file stem.")
    weight: float = Field(1.0, gt=0, description="Mixing weight; weights are normalised to fractions "
                                                 "of the final mix.")
    format: DataFormat = "auto"


class DataConfig(Section):
    sources: list[DataSource] = Field(min_length=1)
    general_eval: str | None = Field(None, description="Optional JSONL of {prompt, reference} used by "
                                                       "eval to measure regression on general text.")


class ProblemPolicy(Section):
    """What to do with each kind of bad record: fail the step, or skip it and count it."""

    malformed_json: Policy = "fail"
    invalid_utf8: Policy = "fail"
    wrong_type: Policy = "skip"
    missing_field: Policy = "skip"
    unknown_role: Policy = "skip"
    empty_output: Policy = "skip"
    # A conversation the base model's chat template rejects (e.g. roles that do not alternate, which
    # Mistral-style templates raise on) is a problem with that record, not with the whole run.
    template_error: Policy = "skip"
    # A system message after a user or assistant turn: dedup compares conversations without system
    # messages, and many chat templates reject (or silently misplace) one mid-conversation.
    misplaced_system: Policy = "skip"


class PrepareConfig(Section):
    max_seq_len: int = Field(2048, gt=0, description="Token limit of prompt + completion.")
    length_policy: Literal["drop", "truncate"] = "drop"
    test_ratio: float = Field(0.1, gt=0, lt=1)
    seed: int = 42
    near_dup_threshold: float = Field(0.85, gt=0, le=1, description="MinHash Jaccard threshold; 1 "
                                                                    "disables near-duplicate removal.")
    minhash_num_perm: int = Field(128, ge=16)
    decontaminate: bool = True
    output_format: Literal["jsonl", "parquet"] = "jsonl"
    max_records: int | None = Field(None, gt=0, description="Cap on records after mixing.")
    policy: ProblemPolicy = ProblemPolicy()


# ----------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------
class LoraConfig(Section):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: Literal["all-linear"] | list[str] = "all-linear"


class QLoraConfig(Section):
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


class TrainConfig(Section):
    method: Literal["lora", "qlora", "full"] = "qlora"
    lora: LoraConfig = LoraConfig()
    qlora: QLoraConfig = QLoraConfig()
    loss: Literal["completion_only", "full_sequence"] = "completion_only"
    epochs: float = Field(3, gt=0)
    max_steps: int = Field(-1, description="Overrides epochs when > 0.")
    per_device_batch_size: int = Field(4, gt=0)
    gradient_accumulation_steps: int = Field(4, gt=0)
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.001, ge=0)
    max_grad_norm: float = Field(0.3, gt=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    lr_scheduler: str = "cosine"
    optim: str = Field("paged_adamw_32bit", description="Any transformers optimizer name.")
    gradient_checkpointing: bool = True
    packing: bool = False
    padding_free: bool = False
    eval_steps: int = Field(50, gt=0)
    save_steps: int = Field(100, gt=0)
    logging_steps: int = Field(10, gt=0)
    early_stopping_patience: int | None = Field(None, gt=0, description="Evals without eval-loss "
                                                                         "improvement before stopping.")
    seed: int = 42
    report_to: list[str] = Field(default_factory=list, description="wandb, mlflow, tensorboard...")
    pushgateway: str | None = Field(None, description="Prometheus Pushgateway URL; the env var "
                                                      "PROMETHEUS_PUSHGATEWAY is used when unset.")


# ----------------------------------------------------------------------------------------------
# eval / merge / quantize / publish / serve
# ----------------------------------------------------------------------------------------------
Metric = Literal["perplexity", "rouge_l", "exact_match", "json_valid", "json_field_f1", "label_accuracy",
                 "fact_recall"]


class GateConfig(Section):
    primary_metric: Metric = "json_field_f1"
    min_primary_improvement: float = Field(0.0, description="tuned - base must be at least this.")
    max_general_ppl_regression_pct: float | None = Field(None, ge=0, description="Max % rise of "
                                                                                 "general-set perplexity.")
    min_json_valid_rate: float | None = Field(None, ge=0, le=1)


class EvalConfig(Section):
    metrics: Literal["auto"] | list[Metric] = Field(
        "auto", description="The metrics to compute, or auto: perplexity, rouge_l and exact_match, plus "
                            "json_valid and json_field_f1 when most test references are JSON documents, else "
                            "fact_recall; and whatever eval.gate checks.")
    max_new_tokens: int = Field(256, gt=0)
    batch_size: int = Field(8, gt=0)
    max_examples: int | None = Field(None, gt=0)
    num_samples_in_report: int = Field(10, ge=0)
    lm_eval_tasks: list[str] = Field(default_factory=list)
    gate: GateConfig = GateConfig()


class MergeConfig(Section):
    dtype: Literal["float32", "float16", "bfloat16"] = "bfloat16"
    max_shard_size: str = "5GB"
    verify_prompts: int = Field(4, gt=0)
    verify_tolerance: float | None = Field(None, gt=0, description="Max |logit difference| between the merged "
                                                                   "model and adapter-on-base; default: by "
                                                                   "dtype, relative to the largest logit.")


class QuantizeConfig(Section):
    types: list[str] = Field(default_factory=lambda: ["Q4_K_M", "Q8_0"], min_length=1)
    outtype: Literal["f16", "bf16", "f32"] = "f16"
    max_ppl_delta_pct: float = Field(5.0, gt=0, description="Fail when a quantized file's perplexity "
                                                            "exceeds the f16 one by more than this.")
    eval_records: int = Field(32, gt=0, description="Test-split records scored for perplexity and top-1 "
                                                    "agreement (the first N, so every run uses the same).")
    eval_max_tokens: int = Field(512, ge=16, description="Tokens per scored record at most (cut beyond).")
    generate_records: int = Field(3, gt=0, description="Test-split conversations (the first N) whose last "
                                                       "answer every model generates greedily, scored with the "
                                                       "task metrics against the reference.")
    generate_tokens: int = Field(256, gt=0, description="Greedy tokens generated per prompt at most: room for "
                                                        "a whole answer, which the task metrics score.")
    hf_reference: bool = Field(True, description="Also score the merged model itself with transformers on "
                                                 "the same tokens (needs the RAM to load it on CPU).")
    pre_tokenizer: str | None = Field(None, description="llama.cpp pre-tokenizer name (e.g. llama-bpe) for "
                                                        "a BPE tokenizer that neither llama.cpp's converter "
                                                        "nor kubetune recognizes. Default: detected.")
    threads: int | None = Field(None, gt=0, description="CPU threads for llama.cpp; default: all.")


class PublishConfig(Section):
    version: str | None = Field(None, description="Release version; default: UTC time + run id.",
                                pattern=VERSION_PATTERN)
    skip_if_no_new_data: bool | None = Field(None, description="End early when the data hash equals "
                                                               "the latest release's. Default: on for "
                                                               "scheduled runs.")

    _version_not_latest = field_validator("version")(_not_latest)


class ServeConfig(Section):
    served_model_name: str | None = None
    max_model_len: int = Field(4096, gt=0)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(1, gt=0)
    extra_args: list[str] = Field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# storage / cluster
# ----------------------------------------------------------------------------------------------
class StorageConfig(Section):
    root: str = Field(description="Where runs and releases live: s3://bucket/prefix, file:// or a path. "
                                  "Runs go to <root>/runs/<run-id>/<step>/, releases to "
                                  "<root>/releases/<model>/<version>/.")

    @field_validator("root")
    @classmethod
    def _valid_uri(cls, value: str) -> str:
        # Checked here, not at publish time hours later: the release goes under this root.
        from components.common.storage_errors import StorageError
        from components.common.uris import local_path, split_s3

        try:
            split_s3(value) if value.startswith("s3://") else local_path(value)
        except StorageError as e:
            raise ValueError(f"s3://BUCKET/PREFIX, file:///PATH or a local path ({str(e).split(': ', 1)[1]})") \
                from None
        return value


class Toleration(Section):
    key: str
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class Images(Section):
    base: str = ""
    train: str = ""
    gguf: str = ""


class GpuRequest(Section):
    count: Annotated[int, Field(ge=0)] = 1
    accelerator_type: str | None = Field(None, description="e.g. nvidia-a100-80gb (node label value).")


class StepOptions(Section):
    use_gpu: bool = False
    caching: bool = True
    retries: int = Field(2, ge=0)


class ClusterConfig(Section):
    images: Images = Images()
    gpu: GpuRequest = GpuRequest()
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    s3_secret_name: str = Field("kubetune-s3", description="Secret with AWS_ACCESS_KEY_ID, "
                                                           "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3.")
    cache_pvc: str | None = None
    steps: dict[StepName, StepOptions] = Field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# tracking (components/common/tracking.py)
# ----------------------------------------------------------------------------------------------
class TrackingConfig(Section):
    mlflow_uri: str | None = Field(None, description="MLflow tracking server (http:// or https://). Unset: "
                                                     "the env var MLFLOW_TRACKING_URI; neither: not tracked. "
                                                     "Never credentials: they come from MLFLOW_TRACKING_USERNAME/"
                                                     "PASSWORD or MLFLOW_TRACKING_TOKEN (tracking.secret_name).")
    experiment: str | None = Field(None, min_length=1, description="MLflow experiment; default: "
                                                                   "kubetune-<model.name>.")
    registry: bool = Field(True, description="publish registers each release in the MLflow Model Registry as "
                                             "a version of the model <model.name>; promote moves its alias.")
    required: bool = Field(False, description="Fail at the first step when the server cannot be reached. "
                                              "Default: warn once, run untracked, and record that in the release.")
    secret_name: str = Field("kubetune-mlflow", description="Kubernetes Secret whose MLFLOW_TRACKING_* keys "
                                                            "(username, password or token) every step gets as env "
                                                            "when tracking.mlflow_uri is set; optional.")
    kfp_ui_url: str | None = Field(None, description="The KFP UI (e.g. https://kfp.example.com), for the "
                                                     "run-URL tag of each MLflow run.")

    @field_validator("mlflow_uri", "kfp_ui_url")
    @classmethod
    def _plain_http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an http:// or https:// URL")
        if parts.username or parts.password:  # a config is logged as params and compiled into pipelines
            raise ValueError("a URL without credentials; give them as MLFLOW_TRACKING_USERNAME/PASSWORD or "
                             "MLFLOW_TRACKING_TOKEN in the environment (tracking.secret_name in a cluster)")
        return value.rstrip("/")


# ----------------------------------------------------------------------------------------------
class KubetuneConfig(Section):
    model: ModelConfig
    data: DataConfig
    storage: StorageConfig
    prepare: PrepareConfig = PrepareConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    merge: MergeConfig = MergeConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    publish: PublishConfig = PublishConfig()
    serve: ServeConfig = ServeConfig()
    cluster: ClusterConfig = ClusterConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _lora_targets_not_empty(self) -> KubetuneConfig:
        targets = self.train.lora.target_modules
        if isinstance(targets, list) and not targets:
            raise ValueError("train.lora.target_modules: expected 'all-linear' or a non-empty list")
        if self.train.method == "full" and self.model.dtype == "float16":  # checked here, before any step ran
            raise ValueError("model.dtype: float16 with train.method full: the AMP grad scaler cannot unscale "
                             "fp16 weights' gradients; expected bfloat16 or float32 (or auto)")
        if "mlflow" in self.train.report_to:  # transformers' MLflowCallback would open a second, unlinked run
            raise ValueError("train.report_to: 'mlflow' is done by the tracking section (tracking.mlflow_uri), "
                             "which logs the training curve into the pipeline run's MLflow run; remove it")
        return self

    def step_options(self, name: str, *, uses_gpu: bool) -> StepOptions:
        """`cluster.steps.<name>`, or the defaults for a step (a GPU when `uses_gpu`); call it through the
        step's spec (`StepSpec.options`), which knows whether the step uses a GPU."""
        return self.cluster.steps.get(name) or StepOptions(use_gpu=uses_gpu)  # type: ignore[call-overload]

    def content_hash(self) -> str:
        """Stable hash of the config, recorded in manifests for lineage and caching. Where a run is
        tracked does not change what it produces, so `tracking` is left out: turning tracking on keeps
        the hash (and the hashes of configs written before the section existed)."""
        blob = json.dumps(self.model_dump(mode="json", exclude={"tracking"}), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


# ----------------------------------------------------------------------------------------------
# Loading with errors that point at the YAML
# ----------------------------------------------------------------------------------------------
def _yaml_lines(text: str) -> dict[tuple, int]:
    """Map each YAML path (tuple of keys/indices) to its 1-based line number."""
    lines: dict[tuple, int] = {}

    def walk(node: yaml.Node, path: tuple) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                walk(value_node, path + (key_node.value,))
                lines[path + (key_node.value,)] = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, path + (i,))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def _expected(err: dict[str, Any]) -> str:
    """What pydantic expected, in words ('greater than 0', "'lora', 'qlora' or 'full'", ...)."""
    if err["type"] == "string_pattern_mismatch":
        pattern = err["ctx"]["pattern"]
        return _PATTERN_WORDS.get(pattern, f"a string matching {pattern}")
    return err["msg"].removeprefix("Input should be ").removeprefix("Value error, ")


def _shown(value: Any) -> str:
    if isinstance(value, str) and "@" in value and urlsplit(value).password:  # never echo a URL's password
        parts = urlsplit(value)
        value = parts._replace(netloc=f"***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")).geturl()
    return json.dumps(value) if isinstance(value, str | int | float | bool | None) else type(value).__name__


def _is_pydantic_loc_label(part: Any) -> bool:
    return isinstance(part, str) and (part in ("str", "[key]")
                                      or part.startswith(("list[", "literal[", "function-")))


def format_validation_error(exc: ValidationError, source: str, lines: dict[tuple, int] | None = None) -> str:
    # Group by YAML path: a union field (e.g. target_modules: 'all-linear' | list) yields one error
    # per alternative, which reads better as one line "expected A or B".
    grouped: dict[tuple, list[dict[str, Any]]] = {}
    for err in exc.errors():
        # pydantic puts union-member and validator names into loc; they are not YAML keys.
        path = tuple(p for p in err["loc"] if not _is_pydantic_loc_label(p))
        grouped.setdefault(path, []).append(err)
    problems = []
    for path, errs in grouped.items():
        dotted = ".".join(str(p) for p in path) or "<top level>"
        line = None
        for n in range(len(path), -1, -1):
            if lines and path[:n] in lines:
                line = lines[path[:n]]
                break
        where = f"{source}:{line}" if line else source
        kinds = {e["type"] for e in errs}
        if kinds == {"extra_forbidden"}:
            what = "unknown key (not in the schema; check the spelling)"
        elif kinds == {"missing"}:
            what = "required field is missing"
        else:
            expected = " or ".join(dict.fromkeys(_expected(e) for e in errs))
            what = f"expected {expected} (got {_shown(errs[0].get('input'))})"
        problems.append(f"  {where}: {dotted}: {what}")
    return f"invalid config {source}:\n" + "\n".join(problems)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> KubetuneConfig:
    """Load and validate a YAML config. Raises ConfigError with YAML paths and line numbers."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        data = yaml.safe_load(text)
        lines = _yaml_lines(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, data, storage, ...), "
                          f"got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return config_from_dict(data, source=str(path), lines=lines)


def config_from_dict(data: dict[str, Any], source: str = "<config>",
                     lines: dict[tuple, int] | None = None) -> KubetuneConfig:
    try:
        return KubetuneConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, lines)) from None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` command-line overrides (values parsed as YAML), for load_config."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item}: expected KEY=VALUE with a dotted config path, e.g. train.max_steps=50")
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item}: the value is not valid YAML ({e})") from None
    return overrides


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {key} is not a section")
    node[leaf] = value


def json_schema() -> dict[str, Any]:
    return KubetuneConfig.model_json_schema()
