"""The merge step: `run(cfg, base_dir, adapter_dir, output_dir)` over local directories.

1. Load the base in `merge.dtype`, never 4-bit: a QLoRA adapter was trained against NF4 weights, but
   merging into quantized weights would round the update away, so the original base is reloaded in
   bf16/fp16/fp32 (a pre-quantized base checkpoint is refused).
2. Attach the adapter and record the logits of adapter-on-base for `merge.verify_prompts` inputs.
3. `merge_and_unload`, save sharded safetensors (`merge.max_shard_size`) with the tokenizer, chat
   template and generation config.
4. Reload the saved model from disk and compare its logits with step 2's. The check fails when the
   largest absolute difference exceeds `tolerance(dtype) * max(1, largest |logit|)`; the figures go to
   `merge_report.json`.

Train outputs with full weights (`train.method: full`) have nothing to merge: their model files are
copied through unchanged and the report says so.

Tolerances, relative to the largest logit (so they do not depend on a model's logit scale):

* float32: 1e-5. Both paths compute in fp32 and differ only in rounding order (Wx + s·B(Ax) against
  (W + s·BA)x), about 1e-7 relative in practice; a real merge error (a lost scaling factor, a skipped
  module) moves logits by 1e-2 or more.
* bfloat16: 2^-5. Merged weights are rounded once to bf16 (unit roundoff 2^-8) and the logits
  themselves are bf16, whose spacing is 2^-7 of the value: four ulps at the largest logit.
* float16: 2^-7: the same reasoning with fp16's 2^-10 spacing (eight ulps).

`merge.verify_tolerance` replaces the dtype's default (deep bf16 models may need a looser bound).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from components.common.config import KubetuneConfig
from components.common.errors import KubetuneError
from components.common.tokenizer import load_first_tokenizer

log = logging.getLogger(__name__)

TOLERANCE = {"float32": 1e-5, "bfloat16": 2.0 ** -5, "float16": 2.0 ** -7}
# What a full-weights train output contributes to a model directory (copy-through).
MODEL_PATTERNS = ("config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                  "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                  "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth")
# Inputs for the logits check: rendered with the chat template when there is one.
VERIFY_TEXTS = (
    "Extract the parties and the effective date from this contract excerpt.",
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Summarize: the lender agrees to lend the borrower 10,000 EUR from 1 March 2024.",
    "Translate 'good morning' into German.",
    "List three prime numbers.",
    "{\"parties\": [{\"name\": \"Acme Ltd\", \"role\": \"Seller\"}]}",
    "Explain what a merge of LoRA weights does.",
)
MAX_VERIFY_TOKENS = 128


class MergeError(KubetuneError):
    """The adapter cannot be merged into the base, or the merged model does not match."""


@dataclass
class MergeResult:
    output_dir: Path
    report: dict


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MergeError(f"{path}: cannot read it ({e})") from None


def _tokenizer(cfg: KubetuneConfig, adapter_dir: Path, base_dir: Path):
    # The merged model must ship with the tokenizer and chat template the adapter was trained with.
    return load_first_tokenizer(cfg, [("the adapter", adapter_dir), ("the base model", base_dir)], MergeError)


def _check_base(cfg: KubetuneConfig, base_dir: Path, base_desc: str) -> None:
    from components.common import hf_hub

    if not (base_dir / "config.json").is_file():
        raise MergeError(f"base model {base_desc}: no config.json in {base_dir}; expected a transformers model "
                         "directory")
    hf_hub.check_custom_code(base_dir, cfg.model.trust_remote_code, f"base model {base_desc}", MergeError)
    hf_hub.check_safetensors(base_dir, MergeError)
    quant = _json(base_dir / "config.json").get("quantization_config")
    if quant:
        raise MergeError(f"base model {base_desc} is a pre-quantized checkpoint ({quant.get('quant_method', '?')}"
                         f"{', 4-bit' if quant.get('load_in_4bit') else ''}); merging into quantized weights "
                         "rounds the adapter's update away. Pass the original bf16/fp16 base model (--base); "
                         "a QLoRA adapter merges into it")
    if not any(base_dir.glob("*.safetensors")):
        pickles = [p.name for pat in PICKLE_PATTERNS for p in base_dir.glob(pat)]
        if not pickles:
            raise MergeError(f"base model {base_desc}: no *.safetensors weights in {base_dir}")
        if not cfg.model.allow_pickle:
            raise MergeError(f"base model {base_desc}: only pickle weights ({', '.join(pickles)}); loading them "
                             "can run arbitrary code, so only safetensors are loaded unless model.allow_pickle")


def _mismatch(adapter_dir: Path, base_desc: str, model_config, exc: BaseException) -> MergeError:
    lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln or "not found" in ln]
    detail = lines[0] if lines else f"{type(exc).__name__}: {str(exc)[:300]}"
    more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
    expected = _json(adapter_dir / "adapter_config.json").get("base_model_name_or_path") or "an unrecorded base"
    shape = ", ".join(f"{k} {getattr(model_config, k)}" for k in ("model_type", "hidden_size", "intermediate_size",
                      "num_hidden_layers") if getattr(model_config, k, None) is not None)
    return MergeError(f"adapter {adapter_dir} does not fit the base model {base_desc} ({shape}): {detail}{more}. "
                      f"The adapter was trained on {expected} (adapter_config.json base_model_name_or_path); "
                      "pass that model as the base (--base / model.base)")


def _load(cfg: KubetuneConfig, model_dir: Path, dtype):
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, trust_remote_code=cfg.model.trust_remote_code,
            use_safetensors=None if cfg.model.allow_pickle else True).eval()
    except (OSError, ValueError, SafetensorError) as e:
        raise MergeError(f"{model_dir}: cannot load the model ({e})") from None


def verify_inputs(tokenizer, n: int) -> list[list[int]]:
    texts = [VERIFY_TEXTS[i % len(VERIFY_TEXTS)] for i in range(n)]
    out = []
    for text in texts:
        if tokenizer.chat_template:
            rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                     add_generation_prompt=True)
            ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(text)["input_ids"]
        out.append(ids[:MAX_VERIFY_TOKENS])
    return out


def logits(model, inputs: list[list[int]]) -> list:
    """Full-sequence logits for each input, one at a time (no padding to reason about)."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        return [model(input_ids=torch.tensor([ids], device=device)).logits[0].cpu() for ids in inputs]


def compare(ref: list, got: list, dtype: str, tolerance: float | None = None) -> dict:
    """Max/mean absolute logit difference and the pass/fail verdict against the dtype's tolerance."""
    import torch

    diffs = [(a.float() - b.float()).abs() for a, b in zip(ref, got, strict=True)]
    max_abs = max(float(d.max()) for d in diffs)
    mean_abs = float(sum(d.sum() for d in diffs) / sum(d.numel() for d in diffs))
    scale = max(1.0, max(float(a.float().abs().max()) for a in ref))
    allowed = tolerance if tolerance is not None else TOLERANCE[dtype] * scale
    agree = sum(int((a.float().argmax(-1) == b.float().argmax(-1)).sum()) for a, b in zip(ref, got, strict=True))
    tokens = sum(a.shape[0] for a in ref)
    ok = bool(torch.isfinite(torch.tensor(max_abs)) and max_abs <= allowed)
    return {"prompts": len(ref), "tokens": tokens, "max_abs_diff": max_abs, "mean_abs_diff": mean_abs,
            "max_abs_logit": scale, "tolerance": allowed,
            "tolerance_rule": "merge.verify_tolerance" if tolerance is not None
            else f"{TOLERANCE[dtype]:g} x max(1, max |logit|) for {dtype}",
            "argmax_agreement": agree / tokens, "passed": ok}


def _merge(peft_model):
    return peft_model.merge_and_unload()


def _copy_through(cfg: KubetuneConfig, tuned_dir: Path, output_dir: Path, base_desc: str, tuned_desc: str,
                  t0: float) -> MergeResult:
    log.warning("nothing to merge: %s holds full weights (train.method full), not a LoRA adapter; copying "
                "the model files through unchanged", tuned_desc)
    if not any(tuned_dir.glob("*.safetensors")):
        raise MergeError(f"{tuned_desc}: full-weights output without *.safetensors; only safetensors are shipped")
    output_dir.mkdir(parents=True, exist_ok=True)
    copied = sorted({p for pat in MODEL_PATTERNS for p in tuned_dir.glob(pat) if p.is_file()})
    for p in copied:
        shutil.copy2(p, output_dir / p.name)
    report = {"mode": "copy_through", "reason": "the train output holds full weights (train.method full); "
              "there is no adapter to merge", "base": base_desc, "adapter": tuned_desc,
              "files": [p.name for p in copied], "seconds": round(time.monotonic() - t0, 2)}
    (output_dir / "merge_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return MergeResult(output_dir=output_dir, report=report)


def run(cfg: KubetuneConfig, base_dir: Path, adapter_dir: Path, output_dir: Path, *, base_uri: str | None = None,
        adapter_uri: str | None = None) -> MergeResult:
    """Merge the adapter into the base, save it to output_dir, verify the logits (see the module doc)."""
    import gc

    import torch

    t0 = time.monotonic()
    base_dir, adapter_dir, output_dir = Path(base_dir), Path(adapter_dir), Path(output_dir)
    base_desc, adapter_desc = base_uri or str(base_dir), adapter_uri or str(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        if (adapter_dir / "config.json").is_file():
            return _copy_through(cfg, adapter_dir, output_dir, base_desc, adapter_desc, t0)
        raise MergeError(f"{adapter_desc}: neither adapter_config.json (a LoRA adapter) nor config.json (full "
                         "weights); expected the train step's output")
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise MergeError(f"adapter {adapter_desc}: no adapter_model.safetensors (only safetensors adapters are "
                         "merged)")
    _check_base(cfg, base_dir, base_desc)
    from components.common import hf_hub

    hf_hub.check_custom_code(adapter_dir, cfg.model.trust_remote_code, f"adapter {adapter_desc}", MergeError)
    hf_hub.check_safetensors(adapter_dir, MergeError)
    tokenizer = _tokenizer(cfg, adapter_dir, base_dir)
    dtype_name = cfg.merge.dtype
    dtype = getattr(torch, dtype_name)
    adapter_cfg = _json(adapter_dir / "adapter_config.json")
    if cfg.train.method == "qlora":
        log.info("QLoRA adapter: the base is loaded unquantized in %s to merge into", dtype_name)

    from peft import PeftModel

    base = _load(cfg, base_dir, dtype)
    try:
        model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=False).eval()
    except (RuntimeError, ValueError, KeyError) as e:
        if "size mismatch" in str(e) or "not found in the base model" in str(e) or "Target modules" in str(e):
            raise _mismatch(adapter_dir, base_desc, base.config, e) from None
        raise MergeError(f"adapter {adapter_desc}: cannot load it onto {base_desc} ({type(e).__name__}: {e})") \
            from None
    inputs = verify_inputs(tokenizer, cfg.merge.verify_prompts)
    reference = logits(model, inputs)
    merged = _merge(model)
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        merged.save_pretrained(output_dir, max_shard_size=cfg.merge.max_shard_size)
    except ValueError as e:
        raise MergeError(f"merge.max_shard_size {cfg.merge.max_shard_size!r}: {e} (expected e.g. '5GB')") from None
    tokenizer.save_pretrained(output_dir)
    del merged, model, base
    gc.collect()

    reloaded = _load(cfg, output_dir, dtype)
    check = compare(reference, logits(reloaded, inputs), dtype_name, cfg.merge.verify_tolerance)
    del reloaded
    gc.collect()
    shards = sorted(p.name for p in output_dir.glob("*.safetensors"))
    report = {
        "mode": "lora_merge", "base": base_desc, "adapter": adapter_desc, "dtype": dtype_name,
        "adapter_base_model": adapter_cfg.get("base_model_name_or_path"),
        "lora": {k: adapter_cfg.get(k) for k in ("r", "lora_alpha", "target_modules", "use_dora", "use_rslora")},
        "train_method": cfg.train.method, "verify": check, "max_abs_logit_diff": check["max_abs_diff"],
        "max_shard_size": cfg.merge.max_shard_size,
        "shards": shards, "total_bytes": sum((output_dir / s).stat().st_size for s in shards),
        "seconds": round(time.monotonic() - t0, 2),
    }
    (output_dir / "merge_report.json").write_text(json.dumps(report, indent=2, default=list) + "\n",
                                                  encoding="utf-8")
    log.info("merged %s into %s (%s, %d shard(s)); logits max |diff| %.3g (tolerance %.3g, argmax agreement "
             "%.4f)", adapter_desc, base_desc, dtype_name, len(shards), check["max_abs_diff"], check["tolerance"],
             check["argmax_agreement"])
    if not check["passed"]:
        raise MergeError(f"merged model does not match adapter-on-base: max |logit difference| "
                         f"{check['max_abs_diff']:.4g} over {check['tokens']} tokens exceeds the {dtype_name} "
                         f"tolerance {check['tolerance']:.4g} ({check['tolerance_rule']}); see "
                         f"{output_dir / 'merge_report.json'}")
    return MergeResult(output_dir=output_dir, report=report)
