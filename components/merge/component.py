"""The merge step as a KFP component: the adapter merged into the base, verified, as safetensors."""

import json
import time
from pathlib import Path

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Metrics, Output

from components.common import storage
from components.common.config import KubetuneConfig
from components.common.kfp_step import StepContext, StepOutcome


def execute(cfg: KubetuneConfig, inputs: dict[str, Path], output_dir: Path, ctx: StepContext | None = None) \
        -> StepOutcome:
    from components.merge import step

    started = time.monotonic()
    base_dir = storage.fetch_model(cfg.model.base, allow_pickle=cfg.model.allow_pickle)
    result = step.run(cfg, base_dir, inputs["adapter"], output_dir, base_uri=cfg.model.base)
    numbers = {k: float(v) for k, v in result.report.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    (output_dir / "report.md").write_text(
        f"# Merge: {cfg.model.name}\n\n```json\n{json.dumps(result.report, indent=2)}\n```\n")
    return StepOutcome(metrics=numbers, report="report.md", seconds=round(time.monotonic() - started, 3))


def merge(config: str, run_id: str, job_id: str, adapter: Input[Artifact], model: Output[Artifact],
          metrics: Output[Metrics], report: Output[HTML]):
    """Merge the adapter into the base model and verify the logits."""
    from components.common.kfp_step import kfp_main
    from components.merge.component import execute

    kfp_main("merge", execute, config=config, run_id=run_id, job_id=job_id, inputs={"adapter": adapter},
             output=model, metrics=metrics, html=report)


def build(cfg: KubetuneConfig):
    # The train image: this step needs torch and peft (the base image has neither), GPU or not.
    image = cfg.cluster.images.train or "python:3.11-slim"
    return dsl.component(merge, base_image=image, install_kfp_package=False)
