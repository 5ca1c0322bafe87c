"""The train step: `run(cfg, dataset_dir, output_dir, checkpoint_uri=..., run_id=...)` over local paths.

Order of work: cheap checks first (names, device, dataset schema, config-only model checks, resume
point), then the weights, then trl's SFTTrainer. components/train/README.md lists the outputs and
the exit codes.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from components.common import storage
from components.common.config import KubetuneConfig
from components.common.errors import KubetuneError
from components.train import checkpoints, data, model, report
from components.train.live_metrics import PushgatewayCallback, pushgateway_url

log = logging.getLogger(__name__)

# Files the Trainer writes next to the weights that are not part of the artifact (a pickle, a card).
_NOT_PUBLISHED = ("training_args.bin", "README.md")


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict
    mode: str
    global_step: int
    resumed_from_step: int | None
    checkpoints: list[str] = field(default_factory=list)


@dataclass
class Built:
    """A ready SFTTrainer and what went into it."""

    trainer: object
    data: data.TrainData
    runtime: model.Runtime
    tokenizer: object
    trainable: int
    total: int


def check_names(cfg: KubetuneConfig) -> None:
    """Optimizer / scheduler names, checked before any heavy work."""
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    t = cfg.train
    try:
        OptimizerNames(t.optim)
    except ValueError:
        raise KubetuneError(f"train.optim: {t.optim!r} is not a transformers optimizer; expected one of "
                            f"{', '.join(o.value for o in OptimizerNames)}") from None
    try:
        SchedulerType(t.lr_scheduler)
    except ValueError:
        raise KubetuneError(f"train.lr_scheduler: {t.lr_scheduler!r} is not a transformers scheduler; "
                            f"expected one of {', '.join(s.value for s in SchedulerType)}") from None
    if any(k in t.optim for k in ("bnb", "8bit", "32bit", "paged")):
        try:
            import bitsandbytes  # noqa: F401
        except Exception as e:
            raise KubetuneError(f"train.optim: {t.optim} is a bitsandbytes optimizer and bitsandbytes "
                                f"cannot be imported ({e}); install it or use adamw_torch") from None


def report_to(names: list[str]) -> list[str] | str:
    from transformers.integrations import get_available_reporting_integrations

    available = set(get_available_reporting_integrations())
    for n in sorted(set(names) - available):
        log.warning("train.report_to: %s is not installed here; not reporting to it", n)
    return [n for n in names if n in available] or "none"


def sft_config(cfg: KubetuneConfig, runtime: model.Runtime, work_dir: Path, td: data.TrainData, *,
               resuming: bool, run_id: str, progress: bool):
    from trl import SFTConfig

    t = cfg.train
    has_eval = td.test is not None
    return SFTConfig(
        output_dir=str(work_dir), run_name=run_id, seed=t.seed, data_seed=t.seed,
        per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, num_train_epochs=t.epochs,
        max_steps=t.max_steps, learning_rate=t.lr, weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm, warmup_steps=t.warmup_ratio, lr_scheduler_type=t.lr_scheduler,
        optim=t.optim, gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        # The prepare step already enforced max_seq_len; trl refuses a max_length with padding-free
        # batches that are not packed. On sdpa/eager, transformers turns the packed position_ids
        # into a block-diagonal mask (use_cache=False in training), so sequences stay separate.
        packing=t.packing, padding_free=t.padding_free,
        max_length=None if t.padding_free and not t.packing else cfg.prepare.max_seq_len,
        assistant_only_loss=td.mode == "assistant_only",
        completion_only_loss=True if td.mode in ("last_turn", "rendered") else None,
        eval_strategy="steps" if has_eval else "no", eval_steps=t.eval_steps,
        eval_on_start=has_eval and not resuming,
        save_strategy="steps", save_steps=t.save_steps, save_total_limit=2,
        logging_strategy="steps", logging_steps=t.logging_steps, logging_first_step=True,
        metric_for_best_model="eval_loss" if has_eval else None,
        greater_is_better=False if has_eval else None,
        include_num_input_tokens_seen="non_padding",
        use_cpu=runtime.use_cpu, bf16=runtime.bf16, fp16=runtime.fp16,
        report_to=report_to(t.report_to), disable_tqdm=not progress, dataloader_num_workers=0,
    )


def preflight(cfg: KubetuneConfig, dataset_dir: Path):
    """Everything checkable without the weights; returns (runtime, validated dataset)."""
    check_names(cfg)
    runtime = model.resolve_runtime(cfg)
    checked = data.validate(dataset_dir)
    if cfg.train.early_stopping_patience and not checked[2]:
        raise data.DatasetError(f"{dataset_dir}: train.early_stopping_patience needs the test split "
                                "(test.jsonl or test.parquet) to evaluate on, and there is none")
    model.preflight(cfg, runtime, model.fetch_model_config(cfg.model.base, cfg.model.trust_remote_code))
    return runtime, checked


def build_trainer(cfg: KubetuneConfig, dataset_dir: Path, work_dir: Path, *, run_id: str,
                  resuming: bool = False, callbacks: list | None = None, progress: bool = False,
                  checked=None, runtime: model.Runtime | None = None) -> Built:
    """Fetch the weights, load tokenizer and data, and build the SFTTrainer (no training)."""
    from trl import SFTTrainer

    if runtime is None or checked is None:
        runtime, checked = preflight(cfg, Path(dataset_dir))
    t = cfg.train
    model_dir = Path(storage.fetch_model(cfg.model.base, allow_pickle=cfg.model.allow_pickle))
    model.check_model_dir(cfg, model_dir)
    tokenizer = model.load_tokenizer(cfg, model_dir)
    td = data.build(Path(dataset_dir), t.loss, tokenizer, checked)
    log.info("dataset: %d train / %d test records, mode %s", td.num_train, td.num_test, td.mode)
    base = model.load_model(cfg, runtime, model_dir)
    args = sft_config(cfg, runtime, work_dir, td, resuming=resuming, run_id=run_id, progress=progress)
    cbs = list(callbacks or [])
    if url := pushgateway_url(t.pushgateway):
        cbs.append(PushgatewayCallback(url, run_id))
        log.info("pushing live metrics to %s (job kubetune_train, run_id %s)", url, run_id)
    if t.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        cbs.append(EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience))
    trainer = SFTTrainer(model=base, args=args, train_dataset=td.train, eval_dataset=td.test,
                         processing_class=tokenizer, peft_config=model.lora_config(cfg), callbacks=cbs)
    trainable, total = model.parameter_counts(trainer.model)
    log.info("%s: %s trainable of %s parameters (%.3f%%)", t.method, f"{trainable:,}", f"{total:,}",
             100 * trainable / total)
    return Built(trainer=trainer, data=td, runtime=runtime, tokenizer=tokenizer, trainable=trainable,
                 total=total)


def run(cfg: KubetuneConfig, dataset_dir: Path, output_dir: Path, *, checkpoint_uri: str | None, run_id: str,
        lineage: dict | None = None, work_dir: Path | None = None, progress: bool = True,
        callbacks: list | None = None) -> TrainResult:
    """Train on the prepared dataset in dataset_dir; write the adapter (or weights), tokenizer, metrics,
    log and loss curve to output_dir. Raises `checkpoints.Preempted` after a SIGTERM checkpoint.
    work_dir: the trainer's local scratch (its checkpoints); by default a temporary directory, removed
    afterwards whether training succeeded or not (S3 checkpoints are what a retry resumes from)."""
    if work_dir is not None:
        return _run(cfg, dataset_dir, output_dir, checkpoint_uri=checkpoint_uri, run_id=run_id, lineage=lineage,
                    work_dir=Path(work_dir), progress=progress, callbacks=callbacks)
    with tempfile.TemporaryDirectory(prefix="kubetune-train-") as scratch:
        return _run(cfg, dataset_dir, output_dir, checkpoint_uri=checkpoint_uri, run_id=run_id, lineage=lineage,
                    work_dir=Path(scratch), progress=progress, callbacks=callbacks)


def _run(cfg: KubetuneConfig, dataset_dir: Path, output_dir: Path, *, checkpoint_uri: str | None, run_id: str,
         lineage: dict | None, work_dir: Path, progress: bool, callbacks: list | None) -> TrainResult:
    t0 = time.monotonic()
    dataset_dir, output_dir = Path(dataset_dir), Path(output_dir)
    t = cfg.train
    lineage = {"config_hash": cfg.content_hash(), "base_model": cfg.model.base, "run_id": run_id,
               **(lineage or {})}
    runtime, checked = preflight(cfg, dataset_dir)
    resume = checkpoints.find_resume(checkpoint_uri, lineage["config_hash"])

    upload = checkpoints.UploadCheckpoints(checkpoint_uri, lineage)
    stop = checkpoints.StopOnSignal()
    throughput = report.Throughput()
    stop.install()
    try:
        built = build_trainer(cfg, dataset_dir, work_dir, run_id=run_id, resuming=resume is not None,
                              callbacks=[throughput, upload, stop, *(callbacks or [])], progress=progress,
                              checked=checked, runtime=runtime)
        trainer, td = built.trainer, built.data
        trainer.train(resume_from_checkpoint=str(resume.local_dir) if resume else None)
        state = trainer.state
        if stop.stopped_at is not None and state.global_step < state.max_steps:
            uploaded = upload.last_uploaded
            if checkpoint_uri and (uploaded is None or uploaded[0] != stop.stopped_at):
                raise KubetuneError(f"stopped by SIGTERM at step {stop.stopped_at}, but its checkpoint could "
                                    f"not be uploaded to {checkpoint_uri}; a retry resumes from an earlier "
                                    "one")
            raise checkpoints.Preempted(stop.stopped_at, uploaded[1] if uploaded else None)
        evals = [h for h in state.log_history if "eval_loss" in h]
        if td.test is not None and (not evals or evals[-1]["step"] != state.global_step):
            trainer.evaluate()  # the final eval loss, when the last step was not an eval step
    finally:
        stop.uninstall()

    output_dir.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(output_dir))  # adapter (or full weights) as safetensors + tokenizer + template
    for name in _NOT_PUBLISHED:
        (output_dir / name).unlink(missing_ok=True)
    if not any(output_dir.glob("*.safetensors")):
        raise KubetuneError(f"{output_dir}: the trainer wrote no *.safetensors weights")
    state = trainer.state
    extra = {"method": t.method, "mode": td.mode, "run_id": run_id, "global_step": state.global_step,
             "epoch": state.epoch, "resumed_from_step": resume.step if resume else None,
             "num_train_records": td.num_train, "num_test_records": td.num_test,
             "device": built.runtime.device,
             "dtype": built.runtime.dtype, "pad_token": built.tokenizer.pad_token, "notes": td.notes}
    metrics = report.summarize(state.log_history, throughput=throughput, trainable=built.trainable,
                               total=built.total, wall_seconds=time.monotonic() - t0, extra=extra)
    report.write_outputs(output_dir, state.log_history, metrics,
                         title=f"{cfg.model.name}: {t.method} ({run_id})")
    log.info("trained %d steps: eval loss %s -> %s, %.0f tokens/s", state.global_step,
             _fmt(metrics["initial_eval_loss"]), _fmt(metrics["final_eval_loss"]),
             metrics["tokens_per_second"] or 0)
    return TrainResult(output_dir=output_dir, metrics=metrics, mode=td.mode, global_step=state.global_step,
                       resumed_from_step=resume.step if resume else None,
                       checkpoints=[upload.last_uploaded[1]] if upload.last_uploaded else [])


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
