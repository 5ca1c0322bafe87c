"""The merge step as a KFP component: the adapter merged into the base, verified, as safetensors."""

import json
from pathlib import Path

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Metrics, Output

from components.common import storage
from components.common.config import KubetuneConfig
from components.common.lifecycle import StepContext, StepOutcome
from components.common.steps import StepSpec

# The train image: this step needs torch and peft (the base image has neither), GPU or not.
SPEC = StepSpec(name="merge", image="train", cache_sections=("model", "merge"), uses_gpu=False,
                title="Merge the adapter")


def execute(cfg: KubetuneConfig, inputs: dict[str, Path], output_dir: Path, ctx: StepContext) -> StepOutcome:
    """The adapter (inputs["adapter"]) merged into model.base, verified, into output_dir."""
    from components.merge import step

    base_dir = storage.fetch_model(cfg.model.base, allow_pickle=cfg.model.allow_pickle)
    result = step.run(cfg, base_dir, inputs["adapter"], output_dir, base_uri=cfg.model.base,
                      adapter_uri=ctx.input_uris.get("adapter"))
    numbers = {k: float(v) for k, v in result.report.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    (output_dir / "report.md").write_text(
        f"# Merge: {cfg.model.name}\n\n```json\n{json.dumps(result.report, indent=2)}\n```\n")
    lineage = {"merge_mode": result.report["mode"]}
    if result.report["mode"] == "lora_merge":
        lineage.update(merge_dtype=result.report["dtype"],
                       max_abs_logit_diff=result.report["verify"]["max_abs_diff"])
    return StepOutcome(metrics=numbers, report="report.md", lineage=lineage)


def merge(config: str, run_id: str, job_id: str, adapter: Input[Artifact], model: Output[Artifact],
          metrics: Output[Metrics], report: Output[HTML]):
    """Merge the adapter into the base model and verify the logits."""
    from components.common.kfp_step import kfp_main
    from components.merge.component import SPEC, execute

    kfp_main(SPEC, execute, config=config, run_id=run_id, job_id=job_id, inputs={"adapter": adapter},
             output=model, metrics=metrics, html=report)


def build(cfg: KubetuneConfig):
    return dsl.component(merge, base_image=SPEC.base_image(cfg), install_kfp_package=False)
