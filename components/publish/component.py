"""The publish step as a KFP component: the run's outputs in, an immutable release out."""

import json
from pathlib import Path

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Metrics, Output

from components.common.config import KubetuneConfig
from components.common.lifecycle import StepContext, StepOutcome
from components.common.steps import StepSpec

# Never cached: every run that passes the gate publishes a new, immutable release.
SPEC = StepSpec(name="publish", image="base", cache_sections=(), uses_gpu=False, title="Publish the release")

LINEAGE_KEYS = ("data_files", "data_sha256", "base_model", "tokenizer", "records", "train_method", "train_steps")


def execute(cfg: KubetuneConfig, inputs: dict[str, Path], output_dir: Path, ctx: StepContext) -> StepOutcome:
    from components.common import tracking
    from components.publish import step

    lineage = {key: ctx.lineage[key] for key in LINEAGE_KEYS if key in ctx.lineage}
    tracker = ctx.tracker or tracking.Tracker(cfg, SPEC.name, run_id=ctx.run_id)
    # Whether every step of this run was tracked in MLflow, and where: release.json's lineage.tracking.
    lineage["tracking"] = tracking.summary(ctx.lineage, tracker)
    release = step.run(cfg, merged=inputs["merged"], adapter=inputs["adapter"],
                       gguf=inputs["gguf"], eval_dir=inputs["evaluation"], lineage=lineage, run_id=ctx.run_id)
    (output_dir / "release.json").write_text(json.dumps(release.release, indent=2))
    release_sha256 = next(f.sha256 for f in release.manifest.files if f.path == "release.json")
    registered = tracker.register_release(release.release, release_sha256)
    (output_dir / "report.md").write_text(
        f"# Release {release.version}\n\n`{release.uri}`\n\nGate passed: {release.release['gate'].get('passed')}\n\n"
        f"Tracked in MLflow: {lineage['tracking']['tracked']}; registered version: "
        f"{f'{cfg.model.name} {registered}' if registered else 'none'}\n")
    return StepOutcome(report="report.md", flags={"release_uri": release.uri, "version": release.version,
                                                  "registered_version": registered or ""})


def publish(config: str, run_id: str, job_id: str, dataset: Input[Artifact], adapter: Input[Artifact],
            evaluation: Input[Artifact], merged: Input[Artifact], gguf: Input[Artifact], release: Output[Artifact],
            metrics: Output[Metrics], report: Output[HTML]) -> str:
    """Publish the release; returns its URI."""
    from components.common.kfp_step import kfp_main
    from components.publish.component import SPEC, execute

    outcome = kfp_main(SPEC, execute, config=config, run_id=run_id, job_id=job_id,
                       inputs={"dataset": dataset, "adapter": adapter, "evaluation": evaluation, "merged": merged,
                               "gguf": gguf}, output=release, metrics=metrics, html=report)
    return str(outcome.flags["release_uri"])


def build(cfg: KubetuneConfig):
    return dsl.component(publish, base_image=SPEC.base_image(cfg), install_kfp_package=False)
