"""The quantize step as a KFP component, and `execute`, which the CLI shares.

Inputs: `model` (the merge step's merged model) and `dataset` (the prepare step's output; its test
split is what perplexity and agreement are measured on). Output: `gguf`, the manifest of the GGUF
files, Modelfiles and reports. Runs on the `gguf` image (cluster.images.gguf), whose llama.cpp
checkout is found through $KUBETUNE_LLAMA_CPP_DIR.
"""

from pathlib import Path

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Metrics, Output

from components.common.config import KubetuneConfig
from components.common.lifecycle import StepContext, StepOutcome
from components.common.steps import StepSpec

SPEC = StepSpec(name="quantize", image="gguf", cache_sections=("quantize",), uses_gpu=False,
                title="Quantize to GGUF")


def execute(cfg: KubetuneConfig, inputs: dict[str, Path], output_dir: Path, ctx: StepContext) -> StepOutcome:
    """Quantize inputs["model"] into output_dir, measuring on inputs["dataset"] (a prepared dataset
    directory or a JSONL/Parquet file). llama.cpp's converter is found through $KUBETUNE_LLAMA_CPP_DIR
    (the gguf image sets it; `kubetune quantize --llama-cpp-dir` too)."""
    from components.quantize import step

    result = step.run(cfg, inputs["model"], output_dir, eval_data=inputs["dataset"])
    return outcome_of(result.report)


def outcome_of(report: dict) -> StepOutcome:
    metrics: dict[str, float] = {"conversion_seconds": report["converter"]["seconds"]}
    gguf = {}
    for e in report["files"]:
        t = e["type"].lower()
        metrics.update({f"{t}_size_mib": e["size_mib"], f"{t}_perplexity": e["perplexity"],
                        f"{t}_ppl_delta_pct": e["ppl_delta_pct"], f"{t}_top1_agreement": e["top1_agreement"]})
        if e["published"]:
            gguf[e["type"]] = {"file": e["file"], "size_bytes": e["size_bytes"],
                               "ppl_delta_pct": e["ppl_delta_pct"],
                               "modelfile": e.get("modelfile", {}).get("file"), "task_metrics": e["task_metrics"]}
    if report["reference"]["hf"]:
        metrics["hf_perplexity"] = report["reference"]["hf"]["perplexity"]
    # Task metrics as KFP Metrics: merged_json_valid, q8_0_json_valid, q8_0_json_valid_delta_points, ...
    for key, scores in report["task_metrics"].items():
        for name, score in scores.items():
            if score["value"] is not None:
                metrics[f"{key.lower()}_{name}"] = score["value"]
            if score.get("delta_points") is not None:
                metrics[f"{key.lower()}_{name}_delta_points"] = score["delta_points"]
    return StepOutcome(metrics=metrics, report="report.md", flags={"passed": report["passed"]},
                       lineage={"gguf": gguf, "task_metrics": report["task_metrics"]})


def quantize(config: str, run_id: str, job_id: str, model: Input[Artifact], dataset: Input[Artifact],
             gguf: Output[Artifact], metrics: Output[Metrics], report: Output[HTML]):
    """GGUF files (llama.cpp), verified, with Ollama Modelfiles."""
    from components.common.kfp_step import kfp_main
    from components.quantize.component import SPEC, execute

    kfp_main(SPEC, execute, config=config, run_id=run_id, job_id=job_id,
             inputs={"model": model, "dataset": dataset}, output=gguf, metrics=metrics, html=report)


def build(cfg: KubetuneConfig):
    return dsl.component(quantize, base_image=SPEC.base_image(cfg), install_kfp_package=False)
