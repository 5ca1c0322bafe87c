"""llama.cpp itself, through llama_cpp (the shared library llama-cpp-python builds): quantize a GGUF,
load one, and read its metadata back with the `gguf` package.

The quantizer is `llama_model_quantize`, the function behind the `llama-quantize` tool, with the
same file types. llama.cpp reports its errors on its log; `captured_log` records that log while a
call runs, so a failure is raised with llama.cpp's own words.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from components.quantize.errors import ConversionFailed, GgufFileError
from components.quantize.quant_types import ftypes

log = logging.getLogger("kubetune.quantize")
_log_lock = threading.Lock()


@contextlib.contextmanager
def captured_log(lines: list[str]):
    """Collect llama.cpp's log lines while the block runs (then restore llama_cpp's own handler)."""
    import llama_cpp
    from llama_cpp import _logger

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data) -> None:
        lines.append(text.decode("utf-8", errors="replace"))

    with _log_lock:
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
        try:
            yield
        finally:
            llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def threads(n: int | None = None) -> int:
    if n:
        return n
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def quantize(src: Path, dst: Path, type_name: str, *, nthread: int | None = None) -> float:
    """Quantize the GGUF `src` to `type_name` (a canonical name, see quant_types) at `dst`.
    Returns the seconds it took."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes()[type_name]
    params.nthread = threads(nthread)
    lines: list[str] = []
    started = time.monotonic()
    with captured_log(lines):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    seconds = time.monotonic() - started
    if rc != 0 or not dst.is_file():
        errors = [ln.strip() for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]
        detail = "; ".join(dict.fromkeys(e for e in errors if e)) or "".join(lines[-5:]).strip()
        dst.unlink(missing_ok=True)
        raise ConversionFailed(f"llama_model_quantize {src.name} -> {type_name} failed (code {rc}): {detail}")
    return seconds


def load(path: Path, *, n_ctx: int = 512, logits_all: bool = False, nthread: int | None = None):
    """A `llama_cpp.Llama` on the GGUF at `path` (CPU), or ConversionFailed with llama.cpp's error."""
    import llama_cpp

    lines: list[str] = []
    try:
        with captured_log(lines):
            return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                                   logits_all=logits_all, n_threads=threads(nthread), n_gpu_layers=0,
                                   seed=0, verbose=False)
    except (ValueError, RuntimeError) as e:
        errors = [ln.strip() for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]
        raise ConversionFailed(f"llama.cpp cannot load {path}: {e}: {'; '.join(errors)[:800]}") from e


@dataclass
class GgufInfo:
    """What a GGUF file says about itself (read with the `gguf` package, not with llama.cpp)."""

    path: Path
    size: int
    architecture: str
    file_type: int | None
    context_length: int | None
    chat_template: str | None
    pre_tokenizer: str | None
    add_bos_token: bool | None
    bos_token_id: int | None
    eos_token_id: int | None
    tokens: list[str]
    tensor_types: dict[str, int] = field(default_factory=dict)
    n_params: int = 0

    def token(self, token_id: int | None) -> str | None:
        return self.tokens[token_id] if token_id is not None and 0 <= token_id < len(self.tokens) else None

    def summary(self) -> dict:
        return {"architecture": self.architecture, "file_type": self.file_type,
                "context_length": self.context_length, "pre_tokenizer": self.pre_tokenizer,
                "add_bos_token": self.add_bos_token, "bos_token": self.token(self.bos_token_id),
                "eos_token": self.token(self.eos_token_id), "vocab_size": len(self.tokens),
                "chat_template_sha256": _sha(self.chat_template), "tensor_types": self.tensor_types}


def read_info(path: Path) -> GgufInfo:
    """The file's metadata; a damaged or forged header raises GgufFileError naming the file."""
    try:
        return _read_info(path)
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, MemoryError, UnicodeDecodeError) as e:
        raise GgufFileError(f"{path}: not a valid GGUF file ({type(e).__name__}: {str(e)[:300]}); expected a "
                            "GGUF written by llama.cpp's converter or quantizer") from None
    except OSError as e:
        raise GgufFileError(f"{path}: cannot read it ({e.strerror or e})") from None


def _read_info(path: Path) -> GgufInfo:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def value(key: str):
        f = reader.fields.get(key)
        return f.contents() if f is not None else None

    arch = value("general.architecture")
    types = Counter(t.tensor_type.name for t in reader.tensors)
    return GgufInfo(
        path=Path(path), size=Path(path).stat().st_size, architecture=arch,
        file_type=value("general.file_type"),
        context_length=value(f"{arch}.context_length"), chat_template=value("tokenizer.chat_template"),
        pre_tokenizer=value("tokenizer.ggml.pre"), add_bos_token=value("tokenizer.ggml.add_bos_token"),
        bos_token_id=value("tokenizer.ggml.bos_token_id"), eos_token_id=value("tokenizer.ggml.eos_token_id"),
        tokens=list(value("tokenizer.ggml.tokens") or []), tensor_types=dict(sorted(types.items())),
        n_params=int(sum(int(t.n_elements) for t in reader.tensors)))


def _sha(text: str | None) -> str | None:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest() if text is not None else None
