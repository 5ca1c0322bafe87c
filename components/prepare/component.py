"""The prepare step as a KFP component, and `execute`, which the CLI shares.

`execute` fetches the configured data sources and the base model's tokenizer, then runs the step.
The component is a thin @dsl.component around the shared wrapper `components.common.kfp_step`.
"""

import time
from pathlib import Path

from kfp import dsl
from kfp.dsl import HTML, Artifact, Metrics, Output

from components.common import storage
from components.common.config import KubetuneConfig
from components.common.kfp_step import StepContext, StepOutcome


def execute(cfg: KubetuneConfig, inputs: dict[str, Path], output_dir: Path, ctx: StepContext | None = None,
            tokenizer_uri: str | None = None) -> StepOutcome:
    """Fetch the sources (cfg.data.sources) and the tokenizer, prepare into output_dir."""
    from components.prepare import step
    from components.prepare.sources import fetch_source, lineage

    files = [fetch_source(s.uri) for s in cfg.data.sources]
    tokenizer_uri = tokenizer_uri or cfg.model.base
    tokenizer_dir = storage.fetch_model(tokenizer_uri, allow_pickle=cfg.model.allow_pickle)
    template = storage.fetch_file(cfg.model.chat_template).read_text(encoding="utf-8") \
        if cfg.model.chat_template else None
    started = time.monotonic()
    result = step.run(cfg, files, output_dir, tokenizer_dir, chat_template=template)
    record = lineage(cfg, [step.source_name(s) for s in cfg.data.sources], files, tokenizer_uri)
    record["records"] = {"train": result.num_train, "test": result.num_test}
    stages = result.stats["stages"]
    metrics = {"records_read": stages["read"], "records_valid": stages["valid"], "records_train": result.num_train,
               "records_test": result.num_test}
    return StepOutcome(metrics=metrics, report=result.report_path.name, lineage=record,
                       seconds=round(time.monotonic() - started, 3))


def no_new_data(cfg: KubetuneConfig, data_sha256: str) -> bool:
    """True when the newest release of this model was made from exactly this data and config."""
    from components.publish.step import latest_release

    latest = latest_release(cfg.storage.root, cfg.model.name)
    return bool(latest) and latest["lineage"].get("data_sha256") == data_sha256 \
        and latest["lineage"].get("config_hash") == cfg.content_hash()


def prepare(config: str, run_id: str, job_id: str, scheduled: bool, dataset: Output[Artifact],
            metrics: Output[Metrics], report: Output[HTML]) -> bool:
    """Prepare the dataset; returns False when there is no new data since the latest release."""
    import logging

    from components.common.config import KubetuneConfig
    from components.common.kfp_step import kfp_main
    from components.prepare.component import execute, no_new_data

    outcome = kfp_main("prepare", execute, config=config, run_id=run_id, job_id=job_id, inputs={},
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
    return dsl.component(prepare, base_image=cfg.cluster.images.base or "python:3.11-slim",
                         install_kfp_package=False)
