"""Quantization types, and the disk space a conversion needs.

The valid types are exactly those llama.cpp's quantizer accepts: the names of llama_cpp's
``LLAMA_FTYPE_*`` constants (``LLAMA_FTYPE_MOSTLY_Q4_K_M`` -> ``Q4_K_M``), plus the aliases that
``llama-quantize`` accepts (``Q4_K`` = ``Q4_K_M``, ...). Names are case-insensitive.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from pathlib import Path

from components.quantize.errors import InsufficientDiskSpace, ModelInputError, UnknownQuantType

ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
# Types whose quantization llama.cpp refuses without an importance matrix ("the result will be
# garbage, so bailing out"); kubetune computes no imatrix, so they are refused before converting.
NEEDS_IMATRIX = {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S"}
# Upper-bound bits per weight of each file type, for the disk-space check (small models keep the
# embeddings and output layer at higher precision, hence the margins).
BITS_PER_WEIGHT = {"F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8.5, "Q6_K": 6.6, "Q5_K_M": 6.0, "Q5_K_S": 6.0,
                   "Q5_0": 6.0, "Q5_1": 6.5, "Q4_K_M": 6.0, "Q4_K_S": 5.5, "Q4_0": 5.5, "Q4_1": 6.0}
OUTTYPE_NAMES = {"f16": "F16", "bf16": "BF16", "f32": "F32"}
HEADROOM = 1.10
OVERHEAD_BYTES = 64 * 1024 * 1024  # metadata, vocabulary, alignment


def ftypes() -> dict[str, int]:
    """Every type name llama.cpp's quantizer accepts -> its llama_ftype value (aliases included)."""
    import llama_cpp

    names: dict[str, int] = {}
    for attr in dir(llama_cpp):
        for prefix in ("LLAMA_FTYPE_MOSTLY_", "LLAMA_FTYPE_ALL_"):
            if attr.startswith(prefix):
                names[attr.removeprefix(prefix)] = int(getattr(llama_cpp, attr))
    names.pop("GUESSED", None)
    for alias, target in ALIASES.items():
        if target in names:
            names[alias] = names[target]
    return names


def valid_types() -> list[str]:
    return sorted(n for n in ftypes() if n not in NEEDS_IMATRIX)


def canonical(name: str) -> str:
    """'q4_k' -> 'Q4_K_M'. Raises UnknownQuantType listing the valid names."""
    upper = str(name).strip().upper()
    known = ftypes()
    if upper in NEEDS_IMATRIX:
        raise UnknownQuantType(f"quantize.types: {name!r} ({upper}) needs an importance matrix (imatrix), "
                               f"which kubetune does not compute; valid types: {', '.join(valid_types())}")
    if upper not in known:
        raise UnknownQuantType(f"quantize.types: unknown quantization type {name!r}; valid types (those "
                               f"llama-quantize accepts): {', '.join(valid_types())}")
    return ALIASES.get(upper, upper)


def parse_types(names: list[str]) -> list[str]:
    """Canonical names, in order, without duplicates (Q4_K and Q4_K_M are one type)."""
    out: list[str] = []
    for name in names:
        c = canonical(name)
        if c not in out:
            out.append(c)
    return out


# ---- model size ---------------------------------------------------------------------------------
def safetensors_files(model_dir: Path) -> list[Path]:
    return sorted(Path(model_dir).glob("*.safetensors"))


def count_parameters(model_dir: Path) -> int:
    """Number of weights in the model's safetensors files, from their headers (no tensor is read)."""
    total = 0
    files = safetensors_files(model_dir)
    if not files:
        raise ModelInputError(f"{model_dir}: no *.safetensors weights")
    for path in files:
        try:
            with open(path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                if length > 100_000_000:
                    raise ValueError(f"header length {length}")
                header = json.loads(f.read(length))
        except (OSError, ValueError, struct.error) as e:
            raise ModelInputError(f"{path}: not a readable safetensors file ({e}); expected the weights "
                                  "saved by save_pretrained(safe_serialization=True)") from e
        total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return total


def estimate_bytes(n_params: int, type_name: str) -> int:
    bpw = BITS_PER_WEIGHT.get(type_name, 8.5)
    return int(n_params * bpw / 8 * HEADROOM) + OVERHEAD_BYTES


def required_bytes(n_params: int, outtype: str, types: list[str]) -> int:
    """Bytes the step writes: the unquantized GGUF plus every quantized file."""
    base = OUTTYPE_NAMES[outtype]
    return estimate_bytes(n_params, base) + sum(estimate_bytes(n_params, t) for t in types if t != base)


def check_disk_space(needed: int, free: int, where: Path | str) -> None:
    """Raise InsufficientDiskSpace when `free` bytes at `where` are fewer than `needed`."""
    if free < needed:
        raise InsufficientDiskSpace(
            f"{where}: not enough disk space for the GGUF files: about {_gib(needed)} needed (the "
            f"unquantized GGUF plus each quantized file), {_gib(free)} free; free some space or point "
            "the output elsewhere", needed=needed, free=free)


def ensure_disk_space(model_dir: Path, out_dir: Path, outtype: str, types: list[str]) -> int:
    """Check, before converting, that out_dir's filesystem has room. Returns the bytes needed."""
    needed = required_bytes(count_parameters(model_dir), outtype, types)
    probe = Path(out_dir)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    check_disk_space(needed, shutil.disk_usage(probe).free, os.fspath(out_dir))
    return needed


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
