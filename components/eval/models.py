"""Loading what eval compares: the base model, and the tuned model (a LoRA adapter on it, or full weights).

* The tuned directory is a PEFT adapter (`adapter_config.json`) or, for `train.method: full`, a whole
  model (`config.json` + safetensors).
* With an adapter only one model is in memory: the base view is the same model under
  `disable_adapter()`. Full weights are loaded one model at a time.
* A QLoRA adapter is evaluated on the base in `model.dtype`, not 4-bit: what the merge step ships.
* Only safetensors are loaded unless `model.allow_pickle`; `trust_remote_code` comes from the config.
* An adapter trained on another base fails with a message naming the base it expects.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from components.common.config import KubetuneConfig
from components.common.errors import KubetuneError
from components.common.tokenizer import load_first_tokenizer

log = logging.getLogger(__name__)



class ModelLoadError(KubetuneError):
    """The base, the adapter or the tokenizer cannot be loaded, or they do not fit together."""


def tuned_kind(tuned_dir: Path) -> str:
    """'lora' (adapter_config.json) or 'full' (config.json and weights)."""
    if (tuned_dir / "adapter_config.json").is_file():
        return "lora"
    if (tuned_dir / "config.json").is_file():
        return "full"
    raise ModelLoadError(f"{tuned_dir}: neither adapter_config.json (a LoRA adapter) nor config.json (full "
                         "weights); expected the train step's output")


def runtime(cfg: KubetuneConfig):
    """(device, torch dtype) for eval: model.dtype, with auto = bf16 on a GPU that has it, else fp32."""
    import torch

    cuda = torch.cuda.is_available()
    name = cfg.model.dtype
    if name == "auto":
        name = "bfloat16" if cuda and torch.cuda.is_bf16_supported() else "float32"
    return ("cuda" if cuda else "cpu"), getattr(torch, name)


def load_tokenizer(cfg: KubetuneConfig, tuned_dir: Path, base_dir: Path):
    """The tuned output's tokenizer (it carries the chat template trained with), else the base's."""
    return load_first_tokenizer(cfg, [("the tuned model", tuned_dir), ("the base model", base_dir)], ModelLoadError)


def _check_weights(model_dir: Path, allow_pickle: bool, what: str) -> None:
    if any(model_dir.glob("*.safetensors")):
        return
    pickles = [p.name for p in model_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
    if pickles and not allow_pickle:
        raise ModelLoadError(f"{what} {model_dir}: only pickle weights ({', '.join(sorted(pickles))}); loading "
                             "them can run arbitrary code, so only safetensors are loaded unless "
                             "model.allow_pickle is true")
    if not pickles:
        raise ModelLoadError(f"{what} {model_dir}: no weights (expected *.safetensors)")


def load_causal_lm(cfg: KubetuneConfig, model_dir: Path, what: str, device: str, dtype):
    from transformers import AutoModelForCausalLM

    _check_weights(model_dir, cfg.model.allow_pickle, what)
    quant = json.loads((model_dir / "config.json").read_text()).get("quantization_config") \
        if (model_dir / "config.json").is_file() else None
    if quant:
        log.warning("%s %s is a pre-quantized checkpoint (%s); evaluating it as it is", what, model_dir,
                    quant.get("quant_method", "?"))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, trust_remote_code=cfg.model.trust_remote_code,
            use_safetensors=None if cfg.model.allow_pickle else True)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{what} {model_dir}: cannot load the model ({e})") from None
    return model.to(device).eval()


def adapter_base(adapter_dir: Path) -> str:
    try:
        return json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path") \
            or "an unrecorded base"
    except (OSError, ValueError):
        return "an unknown base (adapter_config.json unreadable)"


def mismatch_error(adapter_dir: Path, base_desc: str, base_config, exc: BaseException) -> ModelLoadError:
    """A clear message for an adapter whose shapes or module names do not fit the base."""
    lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln or "not found" in ln]
    detail = lines[0] if lines else f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
    shape = ", ".join(f"{k} {getattr(base_config, k)}" for k in ("model_type", "hidden_size",
                      "intermediate_size", "num_hidden_layers") if getattr(base_config, k, None) is not None)
    return ModelLoadError(
        f"adapter {adapter_dir} does not fit the base model {base_desc} ({shape}): {detail}{more}. The "
        f"adapter was trained on {adapter_base(adapter_dir)} (adapter_config.json base_model_name_or_path); "
        "pass that model as the base (--base / model.base)")


def attach_adapter(cfg: KubetuneConfig, model, adapter_dir: Path, base_desc: str):
    """PeftModel.from_pretrained with bad-input errors translated (shape/module mismatch, pickles)."""
    from peft import PeftModel

    if not (adapter_dir / "adapter_model.safetensors").is_file():
        _check_weights(adapter_dir, cfg.model.allow_pickle, "adapter")
    try:
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as e:
        if "size mismatch" in str(e) or "not found in the base model" in str(e) or "Target modules" in str(e):
            raise mismatch_error(adapter_dir, base_desc, model.config, e) from None
        raise ModelLoadError(f"adapter {adapter_dir}: cannot load it onto {base_desc} "
                             f"({type(e).__name__}: {e})") from None


@contextlib.contextmanager
def model_views(cfg: KubetuneConfig, base_dir: Path, tuned_dir: Path, base_desc: str | None = None
                ) -> Iterator[dict]:
    """A dict with 'base' and 'tuned' context managers, each giving a ready model (see module doc)."""
    import gc

    device, dtype = runtime(cfg)
    base_desc = base_desc or str(base_dir)
    kind = tuned_kind(tuned_dir)
    if kind == "lora":
        base = load_causal_lm(cfg, base_dir, "base model", device, dtype)
        peft_model = attach_adapter(cfg, base, tuned_dir, base_desc).eval()

        @contextlib.contextmanager
        def base_view():
            with peft_model.disable_adapter():
                yield peft_model

        @contextlib.contextmanager
        def tuned_view():
            yield peft_model

        try:
            yield {"kind": kind, "device": device, "dtype": str(dtype).removeprefix("torch."),
                   "base": base_view, "tuned": tuned_view}
        finally:
            del peft_model, base
            gc.collect()
        return

    @contextlib.contextmanager
    def one(model_dir: Path, what: str):
        model = load_causal_lm(cfg, model_dir, what, device, dtype)
        try:
            yield model
        finally:
            del model
            gc.collect()

    log.info("%s holds full weights (train.method full): comparing them with the base", tuned_dir)
    yield {"kind": kind, "device": device, "dtype": str(dtype).removeprefix("torch."),
           "base": lambda: one(base_dir, "base model"), "tuned": lambda: one(tuned_dir, "tuned model")}
