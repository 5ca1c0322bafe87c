"""The prepare step: its SPEC, `execute` (shared by `kubetune prepare` and the pipeline), and the
KFP component, a thin @dsl.component around `components.common.kfp_step.kfp_main`.

`execute` fetches the configured data sources and the base model's tokenizer, then runs the step.
"""

from pathlib import Path

from kfp import dsl
from kfp.dsl import HTML, Artifact, Metrics, Output

from components.common import storage
from components.common.config import KubetuneConfig
from components.common.lifecycle import StepContext, StepOutcome
from components.common.steps import StepSpec

SPEC = StepSpec(name="prepare", image="base", cache_sections=("model", "data", "prepare"), uses_gpu=False,
                title="Prepare the dataset")


def execute(cfg: KubetuneConfig, inputs: dict[str, Path], output_dir: Path, ctx: StepContext) -> StepOutcome:
    """Fetch the sources (cfg.data.sources) and model.base's tokenizer, prepare into output_dir."""
    from components.prepare import step
    from components.prepare.sources import fetch_source, lineage

    files = [fetch_source(s.uri) for s in cfg.data.sources]
    tokenizer_dir = storage.fetch_model(cfg.model.base, allow_pickle=cfg.model.allow_pickle)
    result = step.run(cfg, files, output_dir, tokenizer_dir)  # it applies model.chat_template itself
    record = lineage(cfg, [step.source_name(s) for s in cfg.data.sources], files, cfg.model.base)
    record["records"] = {"train": result.num_train, "test": result.num_test}
    stages = result.stats["stages"]
    metrics = {"records_read": stages["read"], "records_valid": stages["valid"], "records_train": result.num_train,
               "records_test": result.num_test}
    return StepOutcome(metrics=metrics, report=result.report_path.name, lineage=record)


def no_new_data(cfg: KubetuneConfig, data_sha256: str) -> bool:
    """True when the newest release of this model was made from exactly this data and config."""
    from components.common.release import latest_release

    latest = latest_release(cfg.storage.root, cfg.model.name)
    return bool(latest) and latest["lineage"].get("data_sha256") == data_sha256 \
        and latest["lineage"].get("config_hash") == cfg.content_hash()


def prepare(config: str, run_id: str, job_id: str, scheduled: bool, dataset: Output[Artifact],
            metrics: Output[Metrics], report: Output[HTML]) -> bool:
    """Prepare the dataset; returns False when there is no new data since the latest release."""
    import logging

    from components.common.config import KubetuneConfig
    from components.common.kfp_step import kfp_main
    from components.prepare.component import SPEC, execute, no_new_data

    outcome = kfp_main(SPEC, execute, config=config, run_id=run_id, job_id=job_id, inputs={},
                       output=dataset, metrics=metrics, html=report)
    cfg = KubetuneConfig.model_validate_json(config)
    skip_enabled = cfg.publish.skip_if_no_new_data
    if skip_enabled is None:  # default: on for scheduled runs, off for runs started by hand
        skip_enabled = scheduled
    if skip_enabled and no_new_data(cfg, outcome.lineage["data_sha256"]):
        logging.getLogger("kubetune.prepare").warning(
            "no new data: the latest release of %s was trained on the same data (%s) with the same config; "
            "ending the run without training or publishing", cfg.model.name, outcome.lineage["data_sha256"][:12])
        return False
    return True


def build(cfg: KubetuneConfig):
    return dsl.component(prepare, base_image=SPEC.base_image(cfg), install_kfp_package=False)
