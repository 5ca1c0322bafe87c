"""The eval step as a KFP component: base vs tuned on the test split, and the gate.

The component returns the gate verdict as its output parameter, so the pipeline can branch on it
with dsl.If; `gate.json` in its output says why.
"""

from pathlib import Path

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Metrics, Output

from components.common import storage
from components.common.config import KubetuneConfig
from components.common.lifecycle import StepContext, StepOutcome
from components.common.steps import StepSpec

# The train image: this step needs torch and peft (the base image has neither), GPU or not.
SPEC = StepSpec(name="eval", image="train", cache_sections=("model", "eval", "data"), uses_gpu=False,
                title="Evaluate base vs tuned")


def execute(cfg: KubetuneConfig, inputs: dict[str, Path], output_dir: Path, ctx: StepContext) -> StepOutcome:
    """Base (model.base) vs tuned (inputs["adapter"]) on inputs["dataset"]'s test split, and the gate."""
    from components.eval import step

    base_dir = storage.fetch_model(cfg.model.base, allow_pickle=cfg.model.allow_pickle)
    result = step.run(cfg, base_dir, inputs["adapter"], inputs["dataset"], output_dir, base_uri=cfg.model.base,
                      tuned_uri=ctx.input_uris.get("adapter"), dataset_uri=ctx.input_uris.get("dataset"),
                      progress=ctx.progress)
    return StepOutcome(metrics=step.flat_metrics(result.results), report="report.md",
                       flags={"gate_passed": result.passed},
                       lineage={"base_model": cfg.model.base, "gate_passed": result.passed})


def evaluate(config: str, run_id: str, job_id: str, dataset: Input[Artifact], adapter: Input[Artifact],
             evaluation: Output[Artifact], metrics: Output[Metrics], report: Output[HTML]) -> bool:
    """Compare base and tuned; returns whether the gate passed."""
    from components.common.kfp_step import kfp_main
    from components.eval.component import SPEC, execute

    outcome = kfp_main(SPEC, execute, config=config, run_id=run_id, job_id=job_id,
                       inputs={"dataset": dataset, "adapter": adapter}, output=evaluation, metrics=metrics,
                       html=report)
    return bool(outcome.flags["gate_passed"])


def build(cfg: KubetuneConfig):
    return dsl.component(evaluate, base_image=SPEC.base_image(cfg), install_kfp_package=False)
