"""Loading the base model and tokenizer for training: device, dtype, attention, 4-bit, LoRA, pad token.

Everything that can be checked from the model's config.json alone (LoRA targets, flash-attention,
bitsandbytes, dtype on this device) is checked by `preflight` before any weights are fetched.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.common.config import KubetuneConfig
from components.common.errors import KubetuneError

log = logging.getLogger(__name__)

# Existing special tokens that can pad, in order of preference (Llama 3 reserves the first one).
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "[PAD]", "<|padding|>",
                  "<|reserved_special_token_0|>", "<unk>")


class TrainSetupError(KubetuneError):
    """The model, device or LoRA settings cannot train as configured."""


@dataclass(frozen=True)
class Runtime:
    device: str  # "cuda" | "cpu"
    dtype: str  # weights dtype: float32 | bfloat16 | float16
    bf16: bool  # mixed-precision flags for the Trainer
    fp16: bool
    attn_implementation: str
    gpu_count: int

    @property
    def use_cpu(self) -> bool:
        return self.device == "cpu"

    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


def resolve_runtime(cfg: KubetuneConfig) -> Runtime:
    """Device, dtype, mixed precision and attention implementation for this machine (no weights)."""
    import torch

    cuda = torch.cuda.is_available()
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    dtype = cfg.model.dtype
    if dtype == "auto":
        dtype = "bfloat16" if bf16_ok else "float32"
    if cuda and dtype == "bfloat16" and not bf16_ok:
        raise TrainSetupError(f"model.dtype: bfloat16 is not supported by {torch.cuda.get_device_name(0)}; "
                              "expected float16 or float32 (or auto) on this GPU")
    t = cfg.train
    if t.method == "qlora" and cuda and t.qlora.compute_dtype == "bfloat16" and not bf16_ok:
        raise TrainSetupError(f"train.qlora.compute_dtype: bfloat16 is not supported by "
                              f"{torch.cuda.get_device_name(0)}; expected float16 on this GPU")
    if t.method == "full" and dtype == "float16":
        raise TrainSetupError("model.dtype: float16 with train.method full: the AMP grad scaler cannot "
                              "unscale fp16 weights' gradients; expected bfloat16 or float32")
    if not cuda and dtype != "float32":
        log.warning("model.dtype %s on CPU: CPUs have little fast %s matmul; float32 is usually faster here",
                    dtype, dtype)
    attn = cfg.model.attn_implementation
    if attn == "flash_attention_2":
        if not cuda:
            raise TrainSetupError("model.attn_implementation: flash_attention_2 needs a CUDA GPU and none is "
                                  "visible; expected sdpa (the default) or eager on CPU")
        if importlib.util.find_spec("flash_attn") is None:
            raise TrainSetupError("model.attn_implementation: flash_attention_2 needs the flash-attn "
                                  "package, which is not installed here; install flash-attn or use sdpa")
    bf16 = bool(bf16_ok and dtype != "float16")
    fp16 = bool(cuda and not bf16 and (dtype == "float16" or t.qlora.compute_dtype == "float16"))
    return Runtime(device="cuda" if cuda else "cpu", dtype=dtype, bf16=bf16, fp16=fp16,
                   attn_implementation=attn, gpu_count=torch.cuda.device_count() if cuda else 0)


def check_bitsandbytes(cfg: KubetuneConfig, device: str) -> None:
    """QLoRA needs bitsandbytes that can quantize on this device: try a real 4-bit round trip."""
    try:
        import bitsandbytes as bnb
        from bitsandbytes.functional import dequantize_4bit, quantize_4bit
    except Exception as e:  # ImportError, or a broken native library raising at import
        raise TrainSetupError(f"train.method qlora needs bitsandbytes, which cannot be imported here "
                              f"({type(e).__name__}: {e}); install bitsandbytes>=0.50 (the train extra) or "
                              "use train.method lora") from None
    import torch

    q = cfg.train.qlora
    try:
        x = torch.randn(64, 64, device=device, dtype=torch.float32)
        packed, state = quantize_4bit(x, quant_type=q.quant_type, compress_statistics=q.double_quant)
        err = (dequantize_4bit(packed, state) - x).abs().max().item()
    except Exception as e:
        raise TrainSetupError(f"train.method qlora: bitsandbytes {bnb.__version__} cannot run 4-bit "
                              f"{q.quant_type} on {device} ({type(e).__name__}: {e}); use train.method lora, "
                              "or a device/bitsandbytes build with 4-bit support") from None
    if not err < 1.0:
        raise TrainSetupError(f"train.method qlora: bitsandbytes {bnb.__version__} 4-bit round trip on "
                              f"{device} is wrong (max error {err:.3g}); its kernels do not work here")


# ---- config-only checks -------------------------------------------------------------------------
def fetch_model_config(base: str, trust_remote_code: bool = False) -> Path:
    """Only the config.json of a model (local, file://, s3:// or hf://), for checks before the weights;
    with trust_remote_code also the Python files its auto_map names (next to it), which a custom
    architecture's config needs."""
    from components.common import hf_hub, storage

    if storage.is_s3(base):
        dest = Path(tempfile.mkdtemp(prefix="kubetune-config-")) / "config.json"
        storage.download_file(storage.join_uri(base, "config.json"), dest)
        if trust_remote_code:
            for name in hf_hub.auto_map_modules(hf_hub.custom_code(dest.parent).get("config.json", {})):
                storage.download_file(storage.join_uri(base, name), dest.parent / name)
        return dest
    if storage.is_hf(base):
        from huggingface_hub import hf_hub_download

        repo, _, revision = base[len("hf://"):].partition("@")
        try:
            path = Path(hf_hub_download(repo, "config.json", revision=revision or None))
            if trust_remote_code:
                for name in hf_hub.auto_map_modules(hf_hub.custom_code(path.parent).get("config.json", {})):
                    hf_hub_download(repo, name, revision=revision or None)
            return path
        except Exception as e:
            raise TrainSetupError(f"model.base {base}: cannot download config.json from the Hugging Face Hub "
                                  f"({type(e).__name__}: {e})") from None
    path = storage.local_path(base) / "config.json"
    if not path.is_file():
        raise TrainSetupError(f"model.base {base}: no config.json at {path}; expected a transformers model "
                              "directory (config.json, tokenizer, *.safetensors)")
    return path


def preflight(cfg: KubetuneConfig, runtime: Runtime, model_config_path: Path) -> None:
    """Checks that need only config.json: LoRA targets exist, bitsandbytes runs (qlora)."""
    from components.common import hf_hub
    from components.train import plan

    hf_hub.check_custom_code(Path(model_config_path).parent, cfg.model.trust_remote_code,
                             f"model.base {cfg.model.base}", TrainSetupError)
    model_config = plan.load_model_config(model_config_path, cfg.model.trust_remote_code)
    if cfg.train.method != "full":
        meta = plan.meta_model(model_config, cfg.model.trust_remote_code)
        plan.check_target_modules(meta, cfg.train.lora.target_modules, cfg.model.base)
    if cfg.train.method == "qlora":
        check_quantizable(cfg, model_config)
        check_bitsandbytes(cfg, runtime.device)


def check_quantizable(cfg: KubetuneConfig, model_config) -> None:
    """QLoRA quantizes a 16/32-bit base to 4 bits on load; a base that config.json says is already
    quantized another way (GPTQ, AWQ, FP8...) cannot be (transformers raises a bare ValueError)."""
    quant = getattr(model_config, "quantization_config", None)
    if quant is None:
        return
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    method = str(getattr(method, "value", method) or "unknown")
    if method != "bitsandbytes":
        raise TrainSetupError(f"train.method qlora: model.base {cfg.model.base} is already quantized with "
                              f"{method} (quantization_config in its config.json), so bitsandbytes cannot "
                              "quantize it to 4 bits; expected an unquantized (16/32-bit) base model for qlora")


def check_model_dir(cfg: KubetuneConfig, model_dir: Path) -> None:
    """Before anything in the fetched base model is loaded: no shipped code unless model.trust_remote_code
    (config.json and tokenizer_config.json), and well-formed safetensors headers (a forged or damaged
    file fails here, naming it, instead of deep inside safetensors)."""
    from components.common import hf_hub

    hf_hub.check_custom_code(model_dir, cfg.model.trust_remote_code, f"model.base {cfg.model.base}",
                             TrainSetupError)
    hf_hub.check_safetensors(model_dir, TrainSetupError)


# ---- tokenizer ------------------------------------------------------------------------------------
def load_tokenizer(cfg: KubetuneConfig, model_dir: Path):
    """The base model's tokenizer (model.chat_template applied), padding on the right, a distinct pad."""
    from components.common.tokenizer import load_tokenizer as load

    tok = load(cfg, model_dir, error=TrainSetupError)
    tok.padding_side = "right"
    choose_pad_token(tok)
    return tok


def choose_pad_token(tok) -> str | None:
    """Make the pad token distinct from eos when the vocabulary allows it; returns the pad token.

    trl builds the labels before padding and pads them with -100 by position, so a pad equal to eos
    does not mask the real eos tokens; but a distinct pad keeps generation configs and attention
    masks unambiguous, so one is picked from existing special tokens (no new embedding rows).
    """
    eos_id = tok.eos_token_id
    if tok.pad_token is not None and tok.pad_token_id != eos_id:
        log.info("pad token: %r (id %d), the tokenizer's own", tok.pad_token, tok.pad_token_id)
        return tok.pad_token
    vocab = tok.get_vocab()
    for cand in PAD_CANDIDATES:
        if cand in vocab and vocab[cand] not in (eos_id, tok.bos_token_id):
            was = "missing" if tok.pad_token is None else f"equal to eos {tok.eos_token!r}"
            tok.pad_token = cand
            log.info("pad token: %r (id %d), an existing special token, because the tokenizer's pad was %s",
                     cand, vocab[cand], was)
            return cand
    if tok.eos_token is None:
        raise TrainSetupError("the tokenizer has neither a pad nor an eos token; expected at least an eos")
    tok.pad_token = tok.eos_token
    log.warning("PAD TOKEN = EOS (%r): the tokenizer has no pad token and none of %s exists in its "
                "vocabulary. Training is still correct: trl builds the labels before padding and pads "
                "them with -100 by position, so every real %r stays in the labels and the model "
                "learns to stop; only the padded positions are ignored. Add a pad token to the base "
                "model to silence this.",
                tok.eos_token, ", ".join(PAD_CANDIDATES), tok.eos_token)
    return tok.eos_token


# ---- model ----------------------------------------------------------------------------------------
def load_model(cfg: KubetuneConfig, runtime: Runtime, model_dir: Path):
    """The base model on its device: 16/32-bit for lora/full, 4-bit + prepare_model_for_kbit_training for
    qlora. LoRA itself is added by the trainer from `lora_config`."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = dict(dtype=runtime.torch_dtype(), attn_implementation=runtime.attn_implementation,
                  trust_remote_code=cfg.model.trust_remote_code,
                  use_safetensors=None if cfg.model.allow_pickle else True)
    if runtime.gpu_count > 1:
        kwargs["device_map"] = "auto"  # one process; the layers are split over the pod's GPUs
        log.info("%d GPUs visible: splitting the model's layers over them (device_map=auto)",
                 runtime.gpu_count)
    if cfg.train.method == "qlora":
        from transformers import BitsAndBytesConfig

        q = cfg.train.qlora
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=q.quant_type, bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype))
        kwargs.setdefault("device_map", {"": 0} if runtime.device == "cuda" else "cpu")
    from safetensors import SafetensorError

    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    except (OSError, SafetensorError) as e:
        hint = "" if cfg.model.allow_pickle else " (only safetensors are loaded unless model.allow_pickle)"
        raise TrainSetupError(f"model.base {cfg.model.base}: cannot load weights from {model_dir}{hint}: "
                              f"{e}") from None
    if cfg.train.method == "qlora":
        from peft import prepare_model_for_kbit_training

        if runtime.device == "cpu":
            keep_trainable_4bit_layout(model)
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.train.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def keep_trainable_4bit_layout(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for inference on AVX512-BF16 CPUs.

    bitsandbytes 0.50 converts a Linear4bit's weight to a CPU-only packed layout on the first forward
    in eval mode (our evaluation on start) and never converts it back; that layout runs through
    `gemv_4bit`, which has no autograd kernel, so the training steps after an evaluation would
    backpropagate through it silently wrong (torch warns "an autograd kernel was not registered").
    """
    n = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def lora_config(cfg: KubetuneConfig):
    if cfg.train.method == "full":
        return None
    from peft import LoraConfig

    lc = cfg.train.lora
    targets = lc.target_modules if lc.target_modules == "all-linear" else list(lc.target_modules)
    return LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM")


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters; for a peft model peft's count (4-bit weights at their logical size)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return tuple(int(n) for n in model.get_nb_trainable_parameters())
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
