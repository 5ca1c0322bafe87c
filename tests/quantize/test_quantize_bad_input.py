"""Bad input to the quantize step: each fails early with one clear message naming what was wrong."""

from __future__ import annotations

import json
import shutil

import pytest
from quantize_helpers import make_config, write_config_yaml

from components.quantize import convert, quant_types, step
from components.quantize.errors import (
    InsufficientDiskSpace,
    ModelInputError,
    UnknownQuantType,
    UnsupportedArchitecture,
    UnsupportedTokenizer,
)


@pytest.fixture
def no_conversion(monkeypatch):
    """Fail the test if the step gets as far as running the converter."""
    def refuse(*args, **kwargs):
        raise AssertionError("the converter ran although the input was bad")

    monkeypatch.setattr(convert, "convert", refuse)


def test_no_safetensors(model_copy, tmp_path, demo, no_conversion):
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(ModelInputError, match=r"no \*\.safetensors weights .*files: chat_template.jinja"):
        step.run(make_config(), model_copy, tmp_path / "out", eval_data=demo.chat)


def test_pickle_only_weights_are_refused(model_copy, tmp_path, demo, no_conversion):
    (model_copy / "model.safetensors").rename(model_copy / "pytorch_model.bin")
    with pytest.raises(ModelInputError, match=r"only pickle weights \(pytorch_model.bin\)"):
        step.run(make_config(), model_copy, tmp_path / "out", eval_data=demo.chat)


def test_missing_model_dir(tmp_path, demo, no_conversion):
    with pytest.raises(ModelInputError, match="model directory not found"):
        step.run(make_config(), tmp_path / "nope", tmp_path / "out", eval_data=demo.chat)


def test_generate_tokens_beyond_the_context(demo, tmp_path, no_conversion):
    with pytest.raises(ModelInputError, match=r"quantize.generate_tokens is 1020, which leaves no room for a prompt "
                                              r"in the model's context of 1024 tokens .*expected at most 1008"):
        step.run(make_config(generate_tokens=1020), demo.model_dir, tmp_path / "out", eval_data=demo.chat)


@pytest.mark.parametrize("bad", ["Q4_K_X", "q9_0", "fp8"])
def test_unknown_quant_type_lists_the_valid_ones(bad, demo, tmp_path, no_conversion):
    with pytest.raises(UnknownQuantType) as e:
        step.run(make_config(types=["Q8_0", bad]), demo.model_dir, tmp_path / "out", eval_data=demo.chat)
    msg = str(e.value)
    assert repr(bad) in msg
    listed = msg.split("valid types (those llama-quantize accepts): ")[1].split(", ")
    assert {"Q4_K_M", "Q8_0", "Q6_K", "Q5_K_M", "Q4_0", "F16", "BF16", "F32"} <= set(listed)
    assert not (tmp_path / "out").exists()


def test_imatrix_types_are_refused_up_front():
    with pytest.raises(UnknownQuantType, match="IQ2_XXS.*importance matrix"):
        quant_types.parse_types(["iq2_xxs"])


def test_type_names_are_case_insensitive_with_aliases():
    assert quant_types.parse_types(["q4_k", "Q4_K_M", "q8_0"]) == ["Q4_K_M", "Q8_0"]
    valid = quant_types.valid_types()
    assert "Q4_K_M" in valid and "IQ2_XXS" not in valid and "GUESSED" not in valid


def test_outtype_q4_k_m_is_not_a_converter_option():
    from components.common.config import ConfigError

    with pytest.raises(ConfigError, match="quantize.outtype: expected 'f16', 'bf16' or 'f32'"):
        make_config(outtype="q4_k_m")


def test_not_enough_disk_space(demo, tmp_path, monkeypatch, no_conversion):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(quant_types.shutil, "disk_usage", lambda p: usage._replace(free=5 * 2**20))
    expected = r"not enough disk space .*about [\d.]+ MiB needed .*5.0 MiB free"
    with pytest.raises(InsufficientDiskSpace, match=expected) as e:
        step.run(make_config(), demo.model_dir, tmp_path / "out", eval_data=demo.chat)
    n = quant_types.count_parameters(demo.model_dir)
    assert e.value.needed == quant_types.required_bytes(n, "f16", ["Q4_K_M", "Q8_0"])
    assert e.value.free == 5 * 2**20


def test_disk_check_function():
    quant_types.check_disk_space(needed=100, free=100, where="/x")
    with pytest.raises(InsufficientDiskSpace, match="/x: not enough disk space"):
        quant_types.check_disk_space(needed=101, free=100, where="/x")
    n = 8_000_000_000  # an 8B model: f16 (~16 GB) + Q4_K_M + Q8_0
    needed = quant_types.required_bytes(n, "f16", ["Q4_K_M", "Q8_0"])
    assert 30e9 < needed < 40e9


def test_unsupported_architecture_names_it(model_copy, tmp_path):
    config = json.loads((model_copy / "config.json").read_text())
    config["architectures"] = ["KubetuneToyForCausalLM"]
    (model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitecture) as e:
        convert.convert(model_copy, tmp_path / "x.gguf")
    assert e.value.architecture == "KubetuneToyForCausalLM"
    assert "architecture 'KubetuneToyForCausalLM' is not supported by llama.cpp's converter" in str(e.value)
    assert not (tmp_path / "x.gguf").exists()


def test_unrecognized_pre_tokenizer(model_copy, tmp_path):
    tok = json.loads((model_copy / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "Whitespace"}
    (model_copy / "tokenizer.json").write_text(json.dumps(tok))
    expected = (r"does not recognize this BPE pre-tokenizer \(chkhsh [0-9a-f]{64}.*Whitespace"
                r".*quantize.pre_tokenizer")
    with pytest.raises(UnsupportedTokenizer, match=expected):
        convert.convert(model_copy, tmp_path / "x.gguf")


def test_detect_pre_tokenizer():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    base = {"model": {"type": "BPE"}, "normalizer": None, "pre_tokenizer": byte_level}
    assert convert.detect_pre_tokenizer(base) == "gpt-2"
    split = {"type": "Split", "pattern": {"Regex": convert.GPT2_SPLIT_REGEX}, "behavior": "Isolated",
             "invert": False}
    seq = {"type": "Sequence", "pretokenizers": [split, {**byte_level, "use_regex": False}]}
    assert convert.detect_pre_tokenizer({**base, "pre_tokenizer": seq}) == "gpt-2"
    prefixed = {**byte_level, "add_prefix_space": True}
    assert convert.detect_pre_tokenizer({**base, "pre_tokenizer": prefixed}) is None
    assert convert.detect_pre_tokenizer({**base, "normalizer": {"type": "NFC"}}) is None
    assert convert.detect_pre_tokenizer({**base, "model": {"type": "Unigram"}}) is None
    llama3 = {**split, "pattern": {"Regex": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+"}}
    llama3_seq = {**seq, "pretokenizers": [llama3, seq["pretokenizers"][1]]}
    assert convert.detect_pre_tokenizer({**base, "pre_tokenizer": llama3_seq}) is None


def test_converter_not_found(monkeypatch, tmp_path, demo):
    from components.quantize.errors import ConverterNotFound

    monkeypatch.setenv(convert.ENV_VAR, str(tmp_path / "no-llama"))
    expected = "no-llama: not a llama.cpp converter directory .*convert_hf_to_gguf.py"
    with pytest.raises(ConverterNotFound, match=expected):
        convert.convert(demo.model_dir, tmp_path / "x.gguf")


def test_cli_reports_bad_input_in_one_line(demo, tmp_path, capsys, no_conversion):
    from pipelines.cli import main

    cfg = write_config_yaml(tmp_path / "cfg.yaml", types=["Q4_K_M", "Q7_K"])
    rc = main(["quantize", "--config", str(cfg), "--model", str(demo.model_dir),
               "--output", str(tmp_path / "out"), "--dataset", str(demo.chat)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("kubetune quantize: error: quantize.types: unknown quantization type 'Q7_K'")


def test_a_wrong_pre_tokenizer_is_caught_by_verification(demo, tmp_path):
    """Forcing llama.cpp's Llama-3 pre-tokenizer onto the demo's GPT-2-style BPE converts fine, but
    llama.cpp then splits text differently: the tokenizer and chat-template parity checks fail the step."""
    from components.quantize.errors import VerificationFailed

    cfg = make_config(types=["Q8_0"], pre_tokenizer="llama-bpe", hf_reference=False, eval_records=2,
                      generate_tokens=2)
    with pytest.raises(VerificationFailed, match="tokenizes .* text.* differently from the HF tokenizer"):
        step.run(cfg, demo.model_dir, tmp_path / "out", eval_data=demo.chat)
    report = json.loads((tmp_path / "out" / "quantize_report.json").read_text())
    assert report["passed"] is False and report["converter"]["pre_tokenizer_source"] == "config"
    assert not all(e["chat_template_parity"]["ok"] for e in report["files"])
