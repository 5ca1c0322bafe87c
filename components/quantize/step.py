"""The quantize step: a merged HF model in, verified GGUF files and Ollama Modelfiles out.

    check inputs (types, safetensors, disk space)  ->  convert_hf_to_gguf.py to f16/bf16/f32
        ->  llama_model_quantize to each type  ->  verify every file with llama.cpp
        ->  task metrics of every file's (and the merged model's) answers
        ->  Modelfiles  ->  quantize_report.json / report.md  ->  gate on perplexity

`run` works on local directories only; fetching and publishing (S3, manifests) is the caller's job.
Output files in `output_dir`: `<name>-<TYPE>.gguf` and `Modelfile.<TYPE>` for each type in
quantize.types (the unquantized file too when its type, e.g. F16, is listed), and the reports. A run
whose checks fail still writes the reports, then raises VerificationFailed or QualityGateFailed.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from components.common.config import KubetuneConfig
from components.common.tokenizer import load_tokenizer
from components.quantize import convert as converter
from components.quantize import native, ollama, quant_types, verify
from components.quantize.errors import (
    InsufficientDiskSpace,
    ModelInputError,
    QualityGateFailed,
    VerificationFailed,
)

log = logging.getLogger("kubetune.quantize")
REPORT_JSON, REPORT_MD = "quantize_report.json", "report.md"


@dataclass
class QuantizeResult:
    output_dir: Path
    files: dict[str, Path]  # type -> GGUF, for the published types
    modelfiles: dict[str, Path]
    report_path: Path
    report: dict


def run(cfg: KubetuneConfig, model_dir: str | Path, output_dir: str | Path, *, eval_data: str | Path,
        llama_cpp_dir: str | Path | None = None) -> QuantizeResult:
    """Convert, quantize and verify. `eval_data`: the prepared dataset directory (its test split) or
    a JSONL/Parquet file of records with prompt/completion, messages or text."""
    started = time.monotonic()
    q = cfg.quantize
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    types = quant_types.parse_types(q.types)  # unknown types fail before any work
    base_type = quant_types.OUTTYPE_NAMES[q.outtype]
    hf_config = converter.check_model_dir(model_dir)
    from components.common import hf_hub

    hf_hub.check_custom_code(model_dir, cfg.model.trust_remote_code, f"model {model_dir}", ModelInputError)
    output_dir.mkdir(parents=True, exist_ok=True)
    needed = quant_types.ensure_disk_space(model_dir, output_dir, q.outtype, types)
    tokenizer = load_tokenizer(cfg, model_dir, error=ModelInputError)
    context = hf_config.get("max_position_embeddings") or q.eval_max_tokens
    if context - q.generate_tokens < 16:
        raise ModelInputError(f"quantize.generate_tokens is {q.generate_tokens}, which leaves no room for a prompt "
                              f"in the model's context of {context} tokens (max_position_embeddings); expected "
                              f"at most {context - 16}")
    eval_set = verify.build_eval_set(tokenizer, Path(eval_data), max_records=q.eval_records,
                                     max_tokens=min(q.eval_max_tokens, context - q.generate_tokens),
                                     n_prompts=q.generate_records)

    work = output_dir / ".work"
    name = cfg.model.name
    base_path = (output_dir if base_type in types else work) / f"{name}-{base_type}.gguf"
    try:
        conv = converter.convert(model_dir, base_path, q.outtype, pre_tokenizer=q.pre_tokenizer,
                                 llama_cpp_dir=llama_cpp_dir)
        log.info("converted to %s in %.1f s (pre-tokenizer %s via %s)", base_path.name, conv.seconds,
                 conv.pre_tokenizer, conv.pre_tokenizer_source)
        paths, quantize_seconds = {base_type: base_path}, {base_type: 0.0}
        for t in types:
            if t != base_type:
                paths[t] = output_dir / f"{name}-{t}.gguf"
                quantize_seconds[t] = native.quantize(base_path, paths[t], t, nthread=q.threads)
                log.info("quantized %s in %.1f s", paths[t].name, quantize_seconds[t])
        report = _verify_all(cfg, model_dir, hf_config, tokenizer, eval_set, paths, quantize_seconds,
                             base_type)
    except Exception as e:
        _raise_if_disk_full(e, output_dir, needed)  # before the work files go: a full disk stays full
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["converter"] = {
        "llama_cpp_dir": str(conv.llama_cpp_dir), "script": converter.CONVERTER, "outtype": q.outtype,
        "seconds": round(conv.seconds, 2), "architecture": conv.architecture,
        "pre_tokenizer": conv.pre_tokenizer, "pre_tokenizer_source": conv.pre_tokenizer_source,
        "chkhsh": conv.chkhsh, "disk_bytes_needed": needed, "llama_cpp_python": _version("llama_cpp_python")}
    try:
        modelfiles = _write_modelfiles(report, paths, types, eval_set, output_dir)
        wrong, gate = problems(report)
        report.update(passed=not (wrong or gate), problems=wrong + gate,
                      seconds=round(time.monotonic() - started, 2))
        (output_dir / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
        (output_dir / REPORT_MD).write_text(markdown(report))
    except OSError as e:
        _raise_if_disk_full(e, output_dir, needed)
        raise
    where = f"report: {output_dir / REPORT_JSON}"
    if wrong:
        raise VerificationFailed(f"GGUF verification failed ({where}):\n  " + "\n  ".join(wrong))
    if gate:
        raise QualityGateFailed(f"quantization lost too much quality ({where}):\n  " + "\n  ".join(gate))
    return QuantizeResult(output_dir=output_dir, files={t: paths[t] for t in types}, modelfiles=modelfiles,
                          report_path=output_dir / REPORT_JSON, report=report)


# Free bytes below which a failure at the output directory counts as the disk having filled up.
DISK_FULL_MARGIN = 1 << 20


def _raise_if_disk_full(exc: BaseException, where: Path, needed: int) -> None:
    """Raise InsufficientDiskSpace (from exc) when exc came from the disk at `where` filling up during
    the work: ENOSPC anywhere in its chain, or (almost) no free space left there now. Without this a
    full disk shows as whatever broke first: a converter exiting with an empty log, a truncated status
    file, a quantizer's write error."""
    chain, e = [], exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    enospc = any(isinstance(c, OSError) and c.errno == errno.ENOSPC or "No space left on device" in str(c)
                 for c in chain)
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return
    if enospc or free < DISK_FULL_MARGIN:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise InsufficientDiskSpace(
            f"{where}: no space left on device while quantizing ({quant_types._gib(free)} free now; the "
            f"GGUF files need about {quant_types._gib(needed)}); the step stopped at "
            f"{type(exc).__name__}: {first}. Free some space or point the output (the staging directory: "
            "TMPDIR) at a larger disk", needed=needed, free=free) from exc


def _verify_all(cfg, model_dir, hf_config, tokenizer, eval_set, paths, quantize_seconds, base_type) -> dict:
    q = cfg.quantize
    n_gen = q.generate_tokens
    longest_prompt = max(len(verify._hf_ids(tokenizer, p, True)) for p in eval_set.prompts)
    n_ctx = max(max(map(len, eval_set.token_ids)), longest_prompt + n_gen + 8)
    ftype_of = quant_types.ftypes()
    entries, scores, texts = [], {}, {}
    arch = None
    for t, path in paths.items():
        info = native.read_info(path)
        arch = arch or info.architecture  # every file must agree with the unquantized one
        llm = native.load(path, n_ctx=n_ctx, logits_all=True, nthread=q.threads)
        try:
            checks = verify.metadata_checks(info, type_name=t, expected_ftype=ftype_of[t],
                                            tokenizer=tokenizer, hf_config=hf_config, architecture=arch)
            tok_parity = verify.tokenizer_parity(llm, tokenizer, eval_set.texts)
            tpl_parity = verify.template_parity(llm, info, tokenizer, eval_set.conversation)
            scores[t] = verify.score_llama(llm, eval_set)
            t0 = time.monotonic()
            texts[t] = verify.generate_llama(llm, info, eval_set.prompts, n_gen)
            gen_seconds = time.monotonic() - t0
        finally:
            llm.close()
        entries.append({
            "type": t, "file": path.name, "published": ".work" not in path.parts,
            "role": "reference" if t == base_type else "quantized", "size_bytes": info.size,
            "size_mib": round(info.size / 2**20, 2),
            "bits_per_weight": round(info.size * 8 / info.n_params, 2),
            "quantize_seconds": round(quantize_seconds[t], 2), "perplexity": round(scores[t].perplexity, 4),
            "eval_seconds": round(scores[t].seconds, 2), "generate_seconds": round(gen_seconds, 2),
            "metadata": {**info.summary(), "checks": checks}, "tokenizer_parity": tok_parity,
            "chat_template_parity": tpl_parity, "generations": [g.text for g in texts[t]]})
    hf = _hf_reference(cfg, model_dir, tokenizer, eval_set, n_gen) if q.hf_reference else None
    ref, ref_size = scores[base_type], next(e["size_bytes"] for e in entries if e["type"] == base_type)
    for e in entries:
        s = scores[e["type"]]
        e["ratio_to_f16"] = round(e["size_bytes"] / ref_size, 4)
        e["ppl_delta_pct"] = round(verify.ppl_delta_pct(s.perplexity, ref.perplexity), 4)
        e["top1_agreement"] = round(s.agreement(ref), 5)
        e["greedy_same_as_reference"] = _same(texts[e["type"]], texts[base_type])
        e["answers"] = [g.answer for g in texts[e["type"]]]  # what the task metrics scored
        e["generations_stopped"] = [g.stopped for g in texts[e["type"]]]
        if hf is not None:
            e["ppl_delta_vs_hf_pct"] = round(verify.ppl_delta_pct(s.perplexity, hf["scores"].perplexity), 4)
            e["top1_agreement_hf"] = round(s.agreement(hf["scores"]), 5)
            e["greedy_same_as_hf"] = _same(texts[e["type"]], hf["texts"])
    task_names = verify.task_metric_names(eval_set.references)
    task, baseline = _task_metrics(eval_set.references, task_names, texts, hf, base_type)
    for e in entries:
        e["task_metrics"] = task.get(e["type"])
    return {
        "model": {"dir": str(model_dir), "name": cfg.model.name,
                  "architectures": hf_config.get("architectures"), "gguf_architecture": arch,
                  "parameters": native.read_info(paths[base_type]).n_params},
        "eval": {"source": eval_set.source, "records": len(eval_set.token_ids),
                 "scored_tokens": eval_set.scored_tokens, "max_tokens_per_record": q.eval_max_tokens,
                 "n_ctx": n_ctx, "generate_tokens": n_gen,
                 "prompts": eval_set.prompts, "references": eval_set.references,
                 "task_metrics": {"names": list(task_names), "baseline": baseline,
                                  "records": len(eval_set.references)},
                 "perplexity": "exp(mean NLL over every predicted token)"},
        "reference": {"type": base_type, "hf": None if hf is None else {
            "perplexity": round(hf["scores"].perplexity, 4), "seconds": round(hf["scores"].seconds, 2),
            "generations": [g.text for g in hf["texts"]], "answers": [g.answer for g in hf["texts"]],
            "generations_stopped": [g.stopped for g in hf["texts"]], "dtype": hf["dtype"]}},
        "task_metrics": task,
        "thresholds": {"max_ppl_delta_pct": q.max_ppl_delta_pct},
        "files": entries,
    }


def _task_metrics(references, names, texts, hf, base_type) -> tuple[dict, str | None]:
    """({"merged": scores, TYPE: scores, ...}, the baseline's key): every model's answers scored against
    the references, and each file's `delta_points` (100 x the difference) against the merged model, or
    against the unquantized GGUF without hf_reference. Empty when no test record is a conversation."""
    if not references:
        return {}, None
    task = {}
    if hf is not None:
        task["merged"] = verify.task_scores(hf["texts"], references, names)
    for t, generations in texts.items():
        task[t] = verify.task_scores(generations, references, names)
    baseline = "merged" if hf is not None else base_type
    for key, scores in task.items():
        if key == baseline:
            continue
        for m, score in scores.items():
            ref = task[baseline][m]["value"]
            score["delta_points"] = None if score["value"] is None or ref is None else round(
                100 * (score["value"] - ref), 2)
    return task, baseline


def _hf_reference(cfg, model_dir, tokenizer, eval_set, n_gen) -> dict:
    """The merged model itself, through transformers, on the same token ids."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto",
                                                 trust_remote_code=cfg.model.trust_remote_code)
    model.eval()
    try:
        return {"scores": verify.score_hf(model, eval_set), "dtype": str(model.dtype).removeprefix("torch."),
                "texts": verify.generate_hf(model, tokenizer, eval_set.prompts, n_gen)}
    finally:
        del model


def _write_modelfiles(report, paths, types, eval_set, output_dir) -> dict[str, Path]:
    system = ollama.common_system_prompt(eval_set.prompts)
    out = {}
    for t in types:
        info = native.read_info(paths[t])
        mf = ollama.build_modelfile(
            paths[t].name, lambda msgs, gen, info=info: verify.render_gguf_template(info, msgs, gen),
            bos=info.token(info.bos_token_id), eos=info.token(info.eos_token_id),
            add_bos=bool(info.add_bos_token), system=system, num_ctx=info.context_length)
        out[t] = output_dir / f"Modelfile.{t}"
        out[t].write_text(mf.text)
        entry = next(e for e in report["files"] if e["type"] == t)
        entry["modelfile"] = {"file": out[t].name, "template_converted": mf.template_converted,
                              "stop": mf.stops, "system": mf.system, "notes": mf.notes}
    return out


def _same(a: list[verify.Generation], b: list[verify.Generation]) -> list[bool]:
    return [x.ids == y.ids for x, y in zip(a, b, strict=True)]


def problems(report: dict) -> tuple[list[str], list[str]]:
    """(verification problems, quality-gate problems) found in a report."""
    wrong, gate = [], []
    limit = report["thresholds"]["max_ppl_delta_pct"]
    for e in report["files"]:
        failed = [k for k, ok in e["metadata"]["checks"].items() if not ok]
        if failed:
            wrong.append(f"{e['file']}: metadata checks failed: {', '.join(failed)}")
        if not e["tokenizer_parity"]["ok"]:
            tp = e["tokenizer_parity"]
            wrong.append(f"{e['file']}: llama.cpp tokenizes {tp['mismatches']} text(s) differently from "
                         f"the HF tokenizer, e.g. {tp['first_mismatch']!r}")
        if not e["chat_template_parity"]["ok"]:
            wrong.append(f"{e['file']}: the embedded chat template renders to other token ids than the "
                         f"training template: {e['chat_template_parity']['cases']}")
        if e["role"] == "quantized" and e["ppl_delta_pct"] > limit:
            gate.append(f"{e['file']}: perplexity {e['perplexity']} is {e['ppl_delta_pct']:.2f}% above the "
                        f"unquantized file's (limit quantize.max_ppl_delta_pct = {limit}%)")
    return wrong, gate


def markdown(report: dict) -> str:
    hf = report["reference"]["hf"]
    lines = [f"# Quantize report: {report['model']['name']}", "",
             f"Evaluated on {report['eval']['records']} records ({report['eval']['scored_tokens']} scored "
             f"tokens) of `{report['eval']['source']}`."
             + (f" HF merged model perplexity: {hf['perplexity']}." if hf else ""),
             "", "| type | size MiB | ratio to f16 | bits/weight | perplexity | Δ ppl % | top-1 agreement | "
             "vs HF | template parity |", "|---|---|---|---|---|---|---|---|---|"]
    for e in report["files"]:
        lines.append(f"| {e['type']} | {e['size_mib']} | {e['ratio_to_f16']} | {e['bits_per_weight']} | "
                     f"{e['perplexity']} | {e['ppl_delta_pct']:+.3f} | {e['top1_agreement']:.4f} | "
                     f"{e.get('top1_agreement_hf', '-')} | {e['chat_template_parity']['ok']} |")
    lines += [""] + task_metrics_markdown(report)
    conv = report.get("converter", {})
    lines += ["", f"Conversion: {conv.get('seconds')} s with {conv.get('script')} (pre-tokenizer "
              f"{conv.get('pre_tokenizer')!r} via {conv.get('pre_tokenizer_source')}).", ""]
    return "\n".join(lines)


def task_metrics_markdown(report: dict) -> list[str]:
    """The task-metrics table: one row per model, each metric with its change in points against the baseline."""
    about, task = report["eval"]["task_metrics"], report["task_metrics"]
    if not task:
        return ["Task metrics: not computed (no test record is a conversation ending in an assistant turn)."]
    names = about["names"]
    lines = [f"Task metrics of greedy answers (at most {report['eval']['generate_tokens']} tokens) to the first "
             f"{about['records']} test conversations, against their last assistant turn; Δ in points against "
             f"`{about['baseline']}`:", "",
             "| model | " + " | ".join(f"{m} | Δ pts" for m in names) + " | cut at the cap |",
             "|---|" + "---|---|" * len(names) + "---|"]
    stopped = {e["type"]: e["generations_stopped"] for e in report["files"]}
    if report["reference"]["hf"]:
        stopped["merged"] = report["reference"]["hf"]["generations_stopped"]
    for key, scores in task.items():
        cells = []
        for m in names:
            s = scores[m]
            value = "n/a" if s["value"] is None else f"{s['value']:.3f} (n={s['n']})"
            delta = s.get("delta_points")
            cells += [value, "-" if delta is None else f"{delta:+.1f}"]
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {stopped[key].count(False)} |")
    return lines


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None
