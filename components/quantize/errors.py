"""The quantize step's errors: each message says what was wrong, where, and what was expected."""

from __future__ import annotations

from components.common.errors import KubetuneError


class QuantizeError(KubetuneError):
    """The quantize step failed."""


class ModelInputError(QuantizeError):
    """The model directory cannot be converted (no safetensors, no config.json, ...)."""


class UnsupportedArchitecture(QuantizeError):
    """llama.cpp's converter has no support for the model's architecture."""

    def __init__(self, message: str, architecture: str):
        super().__init__(message)
        self.architecture = architecture


class UnsupportedTokenizer(QuantizeError):
    """The converter does not recognize the tokenizer's pre-tokenizer, and kubetune cannot map it."""


class UnknownQuantType(QuantizeError, ValueError):
    """A quantize.types entry that llama.cpp's quantizer does not accept."""


class InsufficientDiskSpace(QuantizeError):
    """Not enough free space for the f16 GGUF and the quantized files."""

    def __init__(self, message: str, needed: int, free: int):
        super().__init__(message)
        self.needed, self.free = needed, free


class ConverterNotFound(QuantizeError):
    """No llama.cpp converter (convert_hf_to_gguf.py) where kubetune looks for it."""


class ConversionFailed(QuantizeError):
    """convert_hf_to_gguf.py or llama_model_quantize failed; the message carries its error."""


class GgufFileError(ConversionFailed):
    """A GGUF file whose header cannot be read (damaged, truncated or forged); the message names it."""


class VerificationFailed(QuantizeError):
    """A GGUF file was written but is wrong: metadata, chat template or tokenizer do not match."""


class QualityGateFailed(QuantizeError):
    """A quantized file lost more perplexity than quantize.max_ppl_delta_pct allows."""
