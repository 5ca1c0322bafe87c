"""`kubetune plan`: GPU memory of a training configuration, from the model's config.json alone.

Nothing is downloaded and no weights are allocated: the model is built on PyTorch's ``meta`` device
(transformers + peft), which gives exact parameter counts (base, quantized linear layers, LoRA)
for any architecture transformers knows. The memory model then mirrors what *this* train step does:

* weights: ``model.dtype`` (auto = bf16 on GPUs that support it, else fp32). QLoRA stores every
  linear layer except ``lm_head`` as 4-bit NF4/FP4 (0.5 byte/param) plus its block constants: one
  fp32 absmax per 64 weights (0.0625 B/param), or with double quantization an 8-bit absmax per 64
  plus an fp32 constant per 256 blocks (~0.0159 B/param). ``prepare_model_for_kbit_training``
  then upcasts every other parameter (embeddings, norms, ``lm_head``) to **fp32**, which for a
  128k-vocabulary model such as Llama 3 is ~4.2 GB and easy to forget.
* LoRA parameters: peft keeps them in fp32 on a bf16/fp16 base; for QLoRA trl casts them to bf16.
* gradients: one per trainable parameter, in its dtype.
* optimizer: AdamW keeps 2 states per trainable parameter (torch: in the parameter's dtype;
  bitsandbytes ``*_32bit``: fp32; ``*_8bit``: 1 byte each). ``paged_*`` states live in CUDA unified
  memory and can be evicted to host RAM under pressure, so they are counted but flagged.
* activations, per token and decoder layer, in the compute dtype (SDPA/flash attention, so no
  seq x seq score matrix; ``eager`` adds it): attention block 5h + 3h_kv (norm in/out, q/k/v, rotated
  q/k, attention output), MLP 2h + 4i (norm in/out, gate, up, act, product), and each LoRA target
  keeps one copy of its input (dropout output / dtype cast). Gradient checkpointing keeps only the
  layer inputs (h per token per layer) plus one layer's activations during recomputation. A
  backward transient of 2 x tokens x (h + i) and trl's chunked LM-head tile (<= 4096 tokens x 32768
  vocab, fp32, twice) are added in both cases.
* overhead: CUDA context and allocator fragmentation, 0.75 GiB + 8 %.

The byte figures are an estimate (the component sizes above, not a measurement; no GPU was at
hand to calibrate them); the parameter counts are exact.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from components.common.config import KubetuneConfig
from components.common.errors import KubetuneError

GiB = 1024**3


class PlanError(KubetuneError):
    """The model config cannot be planned (unknown architecture, unreadable file, bad option)."""


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_mib: int  # total as nvidia-smi reports it
    bf16: bool

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 1024 * 1024


GPUS: dict[str, Gpu] = {g.name: g for g in [
    Gpu("t4-16gb", 15360, False), Gpu("v100-16gb", 16384, False), Gpu("v100-32gb", 32768, False),
    Gpu("a10g-24gb", 23028, True), Gpu("l4", 23034, True), Gpu("rtx4090-24gb", 24564, True),
    Gpu("a40-48gb", 46068, True), Gpu("l40s-48gb", 46068, True), Gpu("a100-40gb", 40960, True),
    Gpu("a100-80gb", 81920, True), Gpu("h100-80gb", 81559, True), Gpu("h200-141gb", 143771, True),
]}

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
OVERHEAD_FIXED = int(0.75 * GiB)
OVERHEAD_FRACTION = 0.08
METHODS = ("lora", "qlora", "full")


@dataclass
class ModelCounts:
    """Exact parameter counts of one model (+ LoRA) built on the meta device."""

    architecture: str
    total_params: int
    quantizable_params: int  # linear weights a 4-bit load quantizes (all nn.Linear but lm_head)
    lora_params: int
    lora_in_features_per_layer: int  # sum of in_features of the LoRA targets of one decoder layer
    hidden_size: int
    intermediate_size: int
    kv_size: int
    num_layers: int
    num_heads: int
    vocab_size: int
    target_modules: list[str] = field(default_factory=list)

    @property
    def lora_percent(self) -> float:
        return 100.0 * self.lora_params / (self.total_params + self.lora_params)


@dataclass
class Estimate:
    method: str
    gradient_checkpointing: bool
    seq_len: int
    batch_size: int
    weights: int
    lora: int
    gradients: int
    optimizer: int
    activations: int
    overhead: int
    optimizer_paged: bool

    @property
    def total(self) -> int:
        return self.weights + self.lora + self.gradients + self.optimizer + self.activations + self.overhead

    def gpus_needed(self, gpu: Gpu) -> int:
        """GPUs of this type the step needs: >1 splits the layers over the pod's GPUs (device_map=auto),
        with 10 % headroom for an uneven split."""
        if self.total <= gpu.memory_bytes:
            return 1
        return max(2, math.ceil(self.total * 1.10 / gpu.memory_bytes))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total"] = self.total
        return d


def load_model_config(path: str | Path, trust_remote_code: bool = False):
    """A transformers config from a config.json file (or a directory holding one)."""
    from transformers import AutoConfig

    p = Path(path)
    file = p / "config.json" if p.is_dir() else p
    try:
        data = json.loads(file.read_text())
    except OSError as e:
        raise PlanError(f"{file}: cannot read the model config ({e.strerror}); expected a config.json") \
            from None
    except ValueError as e:
        raise PlanError(f"{file}: not valid JSON ({e}); expected a model's config.json") from None
    model_type = data.pop("model_type", None) if isinstance(data, dict) else None
    if not model_type:
        raise PlanError(f"{file}: no 'model_type' key; expected a transformers config.json "
                        "(e.g. {\"model_type\": \"llama\", \"hidden_size\": ...})")
    try:
        if trust_remote_code and "AutoConfig" in (data.get("auto_map") or {}):
            # The model's own config class, from the Python file next to config.json.
            return AutoConfig.from_pretrained(str(file.parent), trust_remote_code=True)
        return AutoConfig.for_model(model_type, **data)
    except (ValueError, OSError, ImportError) as e:
        hint = "" if trust_remote_code else " (custom architectures need model.trust_remote_code)"
        detail = str(e).split(". Should contain one of")[0]  # not the list of every known model type
        raise PlanError(f"{file}: model_type {model_type!r} is not known to transformers{hint}: {detail}") \
            from None


def meta_model(model_config, trust_remote_code: bool = False):
    """The causal-LM for a config, built on the meta device: shapes only, no memory."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model_config, trust_remote_code=trust_remote_code)


def linear_layer_names(model) -> dict[str, int]:
    """Suffix name -> count of the nn.Linear layers a LoRA target can name (lm_head included)."""
    import torch

    names: dict[str, int] = {}
    for full, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            leaf = full.rsplit(".", 1)[-1]
            names[leaf] = names.get(leaf, 0) + 1
    return names


def check_target_modules(model, targets: str | list[str], model_name: str = "the model") -> None:
    """Every explicit LoRA target must name a linear layer of the model (peft only fails when none
    matches, and silently ignores the rest)."""
    if targets == "all-linear":
        return
    linear = linear_layer_names(model)
    missing = [t for t in targets if t not in linear]
    arch = type(model).__name__
    if missing:
        known = ", ".join(n for n in linear if n != "lm_head")
        raise KubetuneError(f"train.lora.target_modules: {', '.join(map(repr, missing))} "
                            f"{'is' if len(missing) == 1 else 'are'} not a linear layer of {model_name} "
                            f"({arch}); expected names from: {known} (or 'all-linear')")
    if "lm_head" in targets:
        raise KubetuneError("train.lora.target_modules: 'lm_head' cannot be a LoRA target (trl computes the "
                            "loss from lm_head.weight directly, so an adapter there is never trained); "
                            "remove it")


def count(model_config, lora_r: int, targets: str | list[str],
          trust_remote_code: bool = False) -> ModelCounts:
    """Exact counts: base parameters, quantizable linear weights, and LoRA parameters for r/targets."""
    import torch
    from peft import LoraConfig, get_peft_model

    model = meta_model(model_config, trust_remote_code)
    check_target_modules(model, targets)
    total = sum(p.numel() for p in model.parameters())
    out_emb = model.get_output_embeddings()
    quantizable = sum(m.weight.numel() for m in model.modules()
                      if isinstance(m, torch.nn.Linear) and m is not out_emb)
    text = model_config.get_text_config()
    h = text.hidden_size
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or h // heads
    kv = (getattr(text, "num_key_value_heads", None) or heads) * head_dim
    inter = getattr(text, "intermediate_size", None) or 4 * h
    layers = text.num_hidden_layers
    peft_model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules=targets,
                                                  task_type="CAUSAL_LM"))
    lora, _ = peft_model.get_nb_trainable_parameters()
    # in_features of the targeted linears of the first decoder layer (for LoRA activation copies)
    per_layer_in, names = 0, set()
    for full, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "base_layer") and ".0." in f".{full}.":
            per_layer_in += module.base_layer.in_features
            names.add(full.rsplit(".", 1)[-1])
    return ModelCounts(architecture=type(model).__name__, total_params=total, quantizable_params=quantizable,
                       lora_params=lora, lora_in_features_per_layer=per_layer_in, hidden_size=h,
                       intermediate_size=inter, kv_size=kv, num_layers=layers, num_heads=heads,
                       vocab_size=text.vocab_size, target_modules=sorted(names))


def _optimizer_bytes_per_param(optim: str, param_bytes: int) -> tuple[float, bool]:
    o = optim.lower()
    paged = o.startswith("paged_")
    states = 1 if "lion" in o else 2  # Lion keeps one momentum, Adam two moments
    if "8bit" in o:
        return states * 1.0 + 0.02, paged  # uint8 states + per-block absmax
    if "32bit" in o:
        return states * 4.0, paged
    if o.startswith("sgd"):
        return 0.0, False
    if "adafactor" in o:
        return 0.1 * param_bytes, False  # factored second moments: rows + columns only
    return states * float(param_bytes), paged  # torch optimizers: states in the parameter's dtype


def estimate(counts: ModelCounts, *, method: str, seq_len: int, batch_size: int, gradient_checkpointing: bool,
             dtype: str, optim: str, lora_dropout: float = 0.05, double_quant: bool = True,
             attn_implementation: str = "sdpa") -> Estimate:
    if method not in METHODS:
        raise PlanError(f"method {method!r}: expected one of {', '.join(METHODS)}")
    wb = DTYPE_BYTES[dtype]
    compute = 2 if dtype in ("bfloat16", "float16") or method == "qlora" else 4
    n, q = counts.total_params, counts.quantizable_params
    if method == "qlora":
        per_q = 0.5 + (1 / 64 + 4 / (64 * 256) if double_quant else 4 / 64)
        # the rest (embeddings, norms, lm_head) is upcast to fp32 by prepare_model_for_kbit_training
        weights = int(q * per_q + (n - q) * 4)
    else:
        weights = n * wb
    if method == "full":
        trainable, tb = n, wb
        lora_bytes = 0
    else:
        trainable = counts.lora_params
        tb = 2 if method == "qlora" else 4
        lora_bytes = trainable * tb
    grads = trainable * tb
    opt_per, paged = _optimizer_bytes_per_param(optim, tb)
    optimizer = int(trainable * opt_per)

    tokens = seq_len * batch_size
    h, i, kv = counts.hidden_size, counts.intermediate_size, counts.kv_size
    per_token_layer = 5 * h + 3 * kv + 2 * h + 4 * i
    # each LoRA target keeps a copy of its input: the dropout output, or the cast to the fp32 adapter
    if method != "full" and (lora_dropout > 0 or (method == "lora" and dtype != "float32")):
        per_token_layer += counts.lora_in_features_per_layer
    layer_bytes = per_token_layer * tokens * compute
    if attn_implementation == "eager":
        layer_bytes += 2 * counts.num_heads * seq_len * tokens * compute
    if gradient_checkpointing:
        acts = counts.num_layers * tokens * h * compute + layer_bytes
    else:
        acts = counts.num_layers * layer_bytes
    acts += 2 * tokens * (h + i) * compute + 2 * tokens * h * compute
    acts += min(tokens, 4096) * min(counts.vocab_size, 32768) * 4 * 2
    subtotal = weights + lora_bytes + grads + optimizer + acts
    overhead = int(OVERHEAD_FIXED + OVERHEAD_FRACTION * subtotal)
    return Estimate(method=method, gradient_checkpointing=gradient_checkpointing, seq_len=seq_len,
                    batch_size=batch_size, weights=int(weights), lora=int(lora_bytes), gradients=int(grads),
                    optimizer=optimizer, activations=int(acts), overhead=overhead, optimizer_paged=paged)


def resolve_dtype(dtype: str, gpu: Gpu) -> str:
    """What the train step loads on this GPU: auto = bf16 where supported, else fp32."""
    if dtype == "auto":
        return "bfloat16" if gpu.bf16 else "float32"
    return dtype


@dataclass
class Plan:
    model: str
    gpu: Gpu
    counts: ModelCounts
    adapter_bytes_bf16: int
    configured: Estimate
    estimates: list[Estimate]
    recommendation: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "gpu": asdict(self.gpu), "counts": asdict(self.counts),
                "lora_percent": round(self.counts.lora_percent, 4),
                "adapter_bytes_bf16": self.adapter_bytes_bf16,
                "configured": self.configured.to_dict(), "estimates": [e.to_dict() for e in self.estimates],
                "recommendation": self.recommendation, "warnings": self.warnings}


def plan(cfg: KubetuneConfig, model_config_path: str | Path, gpu_name: str, *, seq_len: int | None = None,
         batch_size: int | None = None) -> Plan:
    gpu_key = gpu_name.lower().removeprefix("nvidia-")
    if gpu_key not in GPUS:
        raise PlanError(f"--gpu {gpu_name!r}: unknown GPU type; expected one of {', '.join(GPUS)}")
    gpu = GPUS[gpu_key]
    t = cfg.train
    seq_len = seq_len or cfg.prepare.max_seq_len
    batch_size = batch_size or t.per_device_batch_size
    if seq_len <= 0 or batch_size <= 0:
        raise PlanError(f"--seq-len {seq_len} / --batch {batch_size}: expected positive integers")
    model_config = load_model_config(model_config_path, cfg.model.trust_remote_code)
    counts = count(model_config, t.lora.r, t.lora.target_modules, cfg.model.trust_remote_code)
    dtype = resolve_dtype(cfg.model.dtype, gpu)
    common = dict(seq_len=seq_len, batch_size=batch_size, dtype=dtype, optim=t.optim,
                  lora_dropout=t.lora.dropout, double_quant=t.qlora.double_quant,
                  attn_implementation=cfg.model.attn_implementation)
    estimates = [estimate(counts, method=m, gradient_checkpointing=gc, **common)
                 for m in METHODS for gc in (False, True)]
    configured = next(e for e in estimates
                      if e.method == t.method and e.gradient_checkpointing == t.gradient_checkpointing)

    def best(method: str) -> Estimate:
        no_gc, gc = (e for e in estimates if e.method == method)
        return no_gc if no_gc.gpus_needed(gpu) == 1 else gc

    # The guide's order: LoRA on a 16-bit base if one GPU holds it, else QLoRA; full fine-tuning only
    # when configured (it needs ~16 bytes/param and rarely pays off for instruction tuning).
    fits = [best(m) for m in ("lora", "qlora") if best(m).gpus_needed(gpu) == 1]
    if t.method == "full" and best("full").gpus_needed(gpu) == 1:
        rec = best("full")
    elif t.method in ("lora", "qlora") and best(t.method).gpus_needed(gpu) == 1:
        rec = best(t.method)
    elif fits:
        rec = fits[0]
    else:
        rec = best("qlora")
    why = (f"{rec.method} fits one {gpu.name}" if rec.gpus_needed(gpu) == 1 else
           f"nothing fits one {gpu.name}; {rec.method} needs the fewest GPUs")
    recommendation = {"method": rec.method, "gradient_checkpointing": rec.gradient_checkpointing,
                      "gpu": gpu.name, "gpu_count": rec.gpus_needed(gpu), "estimate_bytes": rec.total,
                      "configured_gpu_count": configured.gpus_needed(gpu), "reason": why}
    warnings = []
    if not gpu.bf16 and "bfloat16" in (dtype, t.qlora.compute_dtype if t.method == "qlora" else None):
        warnings.append(f"{gpu.name} has no bf16: set model.dtype: float16 and train.qlora.compute_dtype: "
                        "float16 (same bytes, so the estimate holds)")
    return Plan(model=str(model_config_path), gpu=gpu, counts=counts,
                adapter_bytes_bf16=counts.lora_params * 2, configured=configured, estimates=estimates,
                recommendation=recommendation, warnings=warnings)


def _gb(n: int) -> str:
    return f"{n / GiB:6.1f}"


def render(p: Plan) -> str:
    c = p.counts
    lines = [
        f"model      {p.model} ({c.architecture}, {c.num_layers} layers, hidden {c.hidden_size}, "
        f"vocab {c.vocab_size})",
        f"params     {c.total_params:,} total, {c.quantizable_params:,} in quantizable linear layers",
        f"LoRA       {c.lora_params:,} trainable ({c.lora_percent:.2f}%) on {', '.join(c.target_modules)}; "
        f"adapter {p.adapter_bytes_bf16 / 1e6:.1f} MB ({p.adapter_bytes_bf16 / 1024**2:.1f} MiB) in bf16",
        f"GPU        {p.gpu.name}: {p.gpu.memory_mib / 1024:.1f} GiB, bf16 {'yes' if p.gpu.bf16 else 'no'}",
        f"batch      seq {p.configured.seq_len} x batch {p.configured.batch_size} per device (GiB below)",
        "",
        f"{'method':6} {'ckpt':4} {'weights':>7} {'lora':>6} {'grads':>6} {'optim':>6} {'activ':>6} "
        f"{'overhd':>6} {'total':>6}  fits  GPUs",
    ]
    for e in p.estimates:
        n = e.gpus_needed(p.gpu)
        mark = "*" if e is p.configured else " "
        lines.append(f"{e.method:6} {'on' if e.gradient_checkpointing else 'off':4} {_gb(e.weights):>7} "
                     f"{_gb(e.lora):>6} {_gb(e.gradients):>6} {_gb(e.optimizer):>6}"
                     f"{'p' if e.optimizer_paged else ' '}"
                     f"{_gb(e.activations):>6} {_gb(e.overhead):>6} {_gb(e.total):>6}  "
                     f"{'yes ' if n == 1 else 'no  '}  {n:>3} {mark}")
    r = p.recommendation
    lines += ["", "* = this config; p = paged optimizer states (evictable to host RAM under pressure)",
              f"recommend  method {r['method']}, gradient checkpointing "
              f"{'on' if r['gradient_checkpointing'] else 'off'}, "
              f"{r['gpu_count']} x {r['gpu']} (~{r['estimate_bytes'] / GiB:.1f} GiB): {r['reason']}"]
    lines += [f"warning    {w}" for w in p.warnings]
    if r["gpu_count"] > 1:
        lines.append("           (several GPUs in one pod: the train step splits the layers over them "
                     "with device_map=auto)")
    return "\n".join(lines)
