"""The train step as a KFP component: dataset manifest in, adapter (or full weights) manifest out.

Checkpoints go to `<root>/runs/<run-id>/train/checkpoints/`; a KFP retry of the same run (same run
id) resumes from the newest complete one, which is what makes preemption cheap.
"""

from pathlib import Path

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Metrics, Output

from components.common import storage
from components.common.config import KubetuneConfig
from components.common.lifecycle import StepContext, StepOutcome
from components.common.steps import StepSpec

SPEC = StepSpec(name="train", image="train", cache_sections=("model", "train"), uses_gpu=True,
                title="Fine-tune")

# train_metrics.json entries shown as KFP Metrics (numbers only).
METRICS = ("final_train_loss", "best_train_loss", "initial_eval_loss", "final_eval_loss", "best_eval_loss",
           "tokens_per_second", "tokens_seen", "trainable_params", "trainable_percent", "wall_seconds",
           "peak_memory_bytes")


def execute(cfg: KubetuneConfig, inputs: dict[str, Path], output_dir: Path, ctx: StepContext) -> StepOutcome:
    from components.train import step
    from components.train.live_metrics import TrackingCallback

    curve = [TrackingCallback(ctx.tracker)] if ctx.tracker is not None and ctx.tracker.active else []
    result = step.run(cfg, inputs["dataset"], output_dir, run_id=ctx.run_id,
                      checkpoint_uri=storage.join_uri(ctx.output_uri, "checkpoints"), work_dir=ctx.work_dir,
                      progress=ctx.progress, callbacks=curve)
    metrics = {k: result.metrics[k] for k in METRICS if isinstance(result.metrics.get(k), int | float)}
    (output_dir / "report.md").write_text(markdown_report(cfg, result.metrics))
    return StepOutcome(metrics=metrics, report="report.md",
                       lineage={"train_method": cfg.train.method, "train_steps": result.global_step})


def markdown_report(cfg: KubetuneConfig, metrics: dict) -> str:
    rows = "\n".join(f"| {k} | {metrics[k]:.4g} |" if isinstance(metrics.get(k), float) else f"| {k} | {metrics[k]} |"
                     for k in METRICS if metrics.get(k) is not None)
    return (f"# Training: {cfg.model.name} ({cfg.train.method})\n\n![loss curve](loss_curve.png)\n\n"
            f"| metric | value |\n|---|---|\n{rows}\n")


def train(config: str, run_id: str, job_id: str, dataset: Input[Artifact], model: Output[Artifact],
          metrics: Output[Metrics], report: Output[HTML]):
    """Fine-tune with LoRA, QLoRA or full fine-tuning; resumes from the run's newest checkpoint."""
    from components.common.kfp_step import kfp_main
    from components.train.component import SPEC, execute

    kfp_main(SPEC, execute, config=config, run_id=run_id, job_id=job_id, inputs={"dataset": dataset},
             output=model, metrics=metrics, html=report)


def build(cfg: KubetuneConfig):
    return dsl.component(train, base_image=SPEC.base_image(cfg), install_kfp_package=False)
