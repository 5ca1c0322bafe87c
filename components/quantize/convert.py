"""HF safetensors -> GGUF with llama.cpp's own converter, run in a child process.

Where the converter comes from (`find_llama_cpp`): ``$KUBETUNE_LLAMA_CPP_DIR`` (the images/gguf
image sets it to its pinned llama.cpp checkout), else ``<venv>/llama.cpp`` (``make
install-llama-cpp-tools`` extracts it there from the llama-cpp-python sdist that the venv builds).
The directory must hold ``convert_hf_to_gguf.py``, ``conversion/`` and ``gguf-py/``.

The child (``python -m components.quantize.convert``) imports the vendored script as a module,
patches two things on its ``TextModel`` class, then calls the script's own ``main()``:

* **Pre-tokenizer registration.** llama.cpp identifies a BPE pre-tokenizer by hashing the token ids
  of a fixed text (``chkhsh``); a locally trained tokenizer has a vocabulary of its own, so its hash
  is unknown and the script raises "BPE pre-tokenizer was not recognized". The patched lookup asks
  the original first; when that fails it registers the tokenizer's hash as the pre-tokenizer that
  its ``tokenizer.json`` declares: a byte-level BPE whose pre-tokenizer is ``ByteLevel`` with the
  GPT-2 split regex (and no normalizer) is llama.cpp's ``gpt-2``. ``quantize.pre_tokenizer`` in the
  config names one explicitly for anything else. The verify step then proves the registration:
  llama.cpp must tokenize the evaluation texts to exactly the HF tokenizer's ids.
* **sentencepiece only when needed.** The Llama converter imports sentencepiece before it checks
  whether ``tokenizer.model`` exists, so a BPE-only model would need the package for nothing; the
  patch checks for the file first (the script's own next step), and imports as before otherwise.

Nothing in the vendored tree is edited. The child writes a JSON status file (architecture,
pre-tokenizer and how it was chosen, or the error kind) that the parent turns into clear errors.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

from components.quantize.errors import (
    ConversionFailed,
    ConverterNotFound,
    ModelInputError,
    UnsupportedArchitecture,
    UnsupportedTokenizer,
)

log = logging.getLogger("kubetune.quantize")

ENV_VAR = "KUBETUNE_LLAMA_CPP_DIR"
CONVERTER = "convert_hf_to_gguf.py"
REQUIRED = (CONVERTER, "conversion/__init__.py", "gguf-py/gguf/__init__.py")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# The split regex of GPT-2's byte-level BPE, as tokenizers' ByteLevel(use_regex=True) applies it.
GPT2_SPLIT_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
EXIT_UNSUPPORTED_ARCH, EXIT_UNSUPPORTED_TOKENIZER = 3, 4


@dataclass
class Conversion:
    path: Path
    seconds: float
    architecture: str
    pre_tokenizer: str | None  # tokenizer.ggml.pre; None for non-BPE vocabularies
    pre_tokenizer_source: str | None  # "llama.cpp" (upstream hash), "tokenizer.json" or "config"
    chkhsh: str | None
    llama_cpp_dir: Path


# ---- finding llama.cpp ----------------------------------------------------------------------------
def candidate_dirs() -> list[Path]:
    """$KUBETUNE_LLAMA_CPP_DIR alone when it is set (a wrong one is an error, not skipped); else the
    venv's llama.cpp/ and the checkout's .venv/llama.cpp/."""
    if os.environ.get(ENV_VAR):
        return [Path(os.environ[ENV_VAR]).expanduser()]
    return list(dict.fromkeys([Path(sys.prefix) / "llama.cpp",
                               Path(__file__).resolve().parents[2] / ".venv" / "llama.cpp"]))


def find_llama_cpp(explicit: str | os.PathLike | None = None) -> Path:
    """The llama.cpp directory holding the converter (see the module docstring for the order)."""
    dirs = [Path(explicit).expanduser()] if explicit else candidate_dirs()
    for d in dirs:
        if all((d / rel).is_file() for rel in REQUIRED):
            return d.resolve()
    if explicit or os.environ.get(ENV_VAR):
        d = dirs[0]
        missing = [rel for rel in REQUIRED if not (d / rel).is_file()]
        raise ConverterNotFound(f"{d}: not a llama.cpp converter directory (missing {', '.join(missing)}); "
                                f"expected a llama.cpp checkout with {CONVERTER}, conversion/ and gguf-py/")
    raise ConverterNotFound(f"llama.cpp's {CONVERTER} not found in {', '.join(map(str, dirs))}; run `make "
                            f"install-llama-cpp-tools` or set {ENV_VAR} to a llama.cpp checkout")


# ---- input checks ---------------------------------------------------------------------------------
def check_model_dir(model_dir: Path) -> dict:
    """The model's config.json, after checking that the directory can be converted at all."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelInputError(f"{model_dir}: model directory not found")
    names = sorted(p.name for p in model_dir.iterdir())
    if not any(n.endswith(".safetensors") for n in names):
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        found = f"only pickle weights ({', '.join(pickles)}), which kubetune never loads" if pickles else \
            f"files: {', '.join(names) or 'none'}"
        raise ModelInputError(f"{model_dir}: no *.safetensors weights ({found}); expected a merged model "
                              "saved with save_pretrained(safe_serialization=True)")
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelInputError(f"{model_dir}: no config.json; expected a Hugging Face model "
                              "directory") from None
    except ValueError as e:
        raise ModelInputError(f"{model_dir}/config.json: not valid JSON ({e})") from None
    if not config.get("architectures"):
        raise ModelInputError(f"{model_dir}/config.json: no 'architectures' entry; expected e.g. "
                              "[\"LlamaForCausalLM\"]")
    from components.common import hf_hub

    hf_hub.check_safetensors(model_dir, ModelInputError)  # a damaged or forged file, named, before the converter
    return config


def detect_pre_tokenizer(tokenizer_json: dict) -> str | None:
    """llama.cpp's name for the pre-tokenizer a tokenizer.json declares, when kubetune can tell:
    'gpt-2' for a byte-level BPE with GPT-2's split regex and no normalizer; otherwise None."""
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE" or tokenizer_json.get("normalizer") is not None:
        return None
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if len(steps) == 1:
        step = steps[0]
        if (step.get("type") == "ByteLevel" and step.get("use_regex", True)
                and not step.get("add_prefix_space")):
            return "gpt-2"
    if len(steps) == 2:
        split, byte_level = steps
        if (split.get("type") == "Split" and (split.get("pattern") or {}).get("Regex") == GPT2_SPLIT_REGEX
                and split.get("behavior") == "Isolated" and not split.get("invert")
                and byte_level.get("type") == "ByteLevel" and not byte_level.get("use_regex", True)
                and not byte_level.get("add_prefix_space")):
            return "gpt-2"
    return None


# ---- the parent side --------------------------------------------------------------------------------
def convert(model_dir: Path, out_file: Path, outtype: str = "f16", *, pre_tokenizer: str | None = None,
            llama_cpp_dir: str | os.PathLike | None = None, timeout: float | None = None) -> Conversion:
    """Run convert_hf_to_gguf.py (patched as described above) to write `out_file`."""
    model_dir, out_file = Path(model_dir), Path(out_file)
    check_model_dir(model_dir)
    lcpp = find_llama_cpp(llama_cpp_dir)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kubetune-convert-") as tmp:
        status_path, log_path = Path(tmp) / "status.json", Path(tmp) / "convert.log"
        cmd = [sys.executable, "-m", "components.quantize.convert", str(lcpp), str(status_path),
               pre_tokenizer or "", "--", str(model_dir), "--outfile", str(out_file), "--outtype", outtype]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).resolve().parents[2]), *filter(None, [os.environ.get("PYTHONPATH")])]))
        env.pop("NO_LOCAL_GGUF", None)  # the converter must use its own gguf-py, not PyPI's
        log.info("converting %s to %s (%s) with %s/%s", model_dir, out_file.name, outtype, lcpp, CONVERTER)
        started = time.monotonic()
        with open(log_path, "w") as logf:
            try:
                proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, timeout=timeout,
                                      check=False)
            except subprocess.TimeoutExpired:
                raise ConversionFailed(f"{CONVERTER} on {model_dir} did not finish within "
                                       f"{timeout} s") from None
        seconds = time.monotonic() - started
        output = log_path.read_text(errors="replace")
        status = json.loads(status_path.read_text()) if status_path.is_file() else {}
    tail = "\n".join(output.strip().splitlines()[-15:])
    kind = status.get("kind")
    if kind == "unsupported_architecture":
        arch = status["architecture"]
        raise UnsupportedArchitecture(
            f"{model_dir}: architecture {arch!r} is not supported by llama.cpp's converter "
            f"({lcpp}/{CONVERTER}: {status.get('message')}); GGUF export needs an architecture that "
            "llama.cpp implements, e.g. LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM",
            architecture=arch)
    if kind == "unsupported_tokenizer":
        raise UnsupportedTokenizer(
            f"{model_dir}: llama.cpp's converter does not recognize this BPE pre-tokenizer (chkhsh "
            f"{status.get('chkhsh')}; tokenizer.json pre_tokenizer: {status.get('pre_tokenizer_json')}) "
            "and it is not GPT-2 byte-level BPE; set quantize.pre_tokenizer to the llama.cpp name of an "
            "equivalent pre-tokenizer (e.g. llama-bpe, qwen2) if you know it is one")
    if proc.returncode != 0 or not status.get("ok") or not out_file.is_file():
        message = status.get("message") or f"exit code {proc.returncode}"
        raise ConversionFailed(f"{CONVERTER} failed on {model_dir}: {message}\n"
                               f"--- converter output (last lines) ---\n{tail}")
    return Conversion(path=out_file, seconds=seconds, architecture=status["architecture"],
                      pre_tokenizer=status.get("pre_tokenizer"),
                      pre_tokenizer_source=status.get("pre_source"), chkhsh=status.get("chkhsh"),
                      llama_cpp_dir=lcpp)


# ---- the child side ---------------------------------------------------------------------------------
def _chktxt(original) -> str | None:
    """The fixed text whose token ids llama.cpp hashes, read from the vendored function's source."""
    try:
        for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(original)))):
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "chktxt":
                return ast.literal_eval(node.value)
    except (OSError, SyntaxError, ValueError):
        pass
    return None


def _patch(text_model, status: dict, forced: str | None) -> None:
    original_pre = text_model.get_vocab_base_pre
    chktxt = _chktxt(original_pre)

    def get_vocab_base_pre(self, tokenizer) -> str:
        chkhsh = sha256(str(tokenizer.encode(chktxt)).encode()).hexdigest() if chktxt else None
        status["chkhsh"] = chkhsh
        if forced:
            status.update(pre_tokenizer=forced, pre_source="config")
            return forced
        try:
            res = original_pre(self, tokenizer)
            status.update(pre_tokenizer=res, pre_source="llama.cpp")
            return res
        except NotImplementedError:
            path = Path(self.dir_model) / "tokenizer.json"
            tok_json = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
            res = detect_pre_tokenizer(tok_json)
            if res is None:
                status.update(kind="unsupported_tokenizer",
                              pre_tokenizer_json=json.dumps(tok_json.get("pre_tokenizer"))[:300])
                raise
            logging.getLogger("kubetune.quantize").info(
                "registered BPE pre-tokenizer hash %s as %r (tokenizer.json: byte-level BPE with the GPT-2 "
                "split regex, no normalizer)", chkhsh, res)
            status.update(pre_tokenizer=res, pre_source="tokenizer.json")
            return res

    original_sp = text_model._create_vocab_sentencepiece

    def _create_vocab_sentencepiece(self):
        if not (Path(self.dir_model) / "tokenizer.model").is_file():
            raise FileNotFoundError(f"File not found: {Path(self.dir_model) / 'tokenizer.model'}")
        return original_sp(self)

    text_model.get_vocab_base_pre = get_vocab_base_pre
    text_model._create_vocab_sentencepiece = _create_vocab_sentencepiece


def _child(argv: list[str]) -> int:
    llama_dir, status_path, forced, sep, *conv_args = argv
    assert sep == "--", argv
    status: dict = {"ok": False}

    def write_status() -> None:
        Path(status_path).write_text(json.dumps(status))

    sys.path[:0] = [llama_dir, str(Path(llama_dir) / "gguf-py")]
    try:
        spec = importlib.util.spec_from_file_location("convert_hf_to_gguf", Path(llama_dir) / CONVERTER)
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        import conversion
        from conversion.base import TextModel

        _patch(TextModel, status, forced or None)
        hparams = conversion.ModelBase.load_hparams(Path(conv_args[0]), False)
        arch = conversion.get_model_architecture(hparams, conversion.ModelType.TEXT)
        status["architecture"] = arch
        try:
            conversion.get_model_class(arch)
        except NotImplementedError as e:
            status.update(kind="unsupported_architecture", message=str(e))
            write_status()
            return EXIT_UNSUPPORTED_ARCH
        sys.argv = [CONVERTER, *conv_args]
        script.main()
    except SystemExit as e:
        status.setdefault("message", f"the converter exited with {e.code}")
        write_status()
        return e.code if isinstance(e.code, int) and e.code else 1
    except BaseException as e:
        status.setdefault("kind", "error")
        status["message"] = f"{type(e).__name__}: {e}"
        write_status()
        if status["kind"] == "unsupported_tokenizer":
            return EXIT_UNSUPPORTED_TOKENIZER
        raise
    status.update(ok=True)
    write_status()
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
