"""The quantize step on the demo base model: the files, what they say about themselves (read back
with the `gguf` package), llama.cpp loading and generating, the report, and chat-template parity.

The session fixture `quantized` converts and quantizes once (Q4_K_M, Q8_0, and F16 kept).
"""

from __future__ import annotations

import math
from collections import Counter

import pytest

LLAMA_FTYPE = {"F16": 1, "Q8_0": 7, "Q4_K_M": 15}


def _reader(path):
    from gguf import GGUFReader

    return GGUFReader(str(path))


def _field(reader, key):
    f = reader.fields.get(key)
    return f.contents() if f is not None else None


def test_writes_one_gguf_and_modelfile_per_type(quantized):
    names = sorted(p.name for p in quantized.out.iterdir())
    assert names == sorted(["Modelfile.F16", "Modelfile.Q4_K_M", "Modelfile.Q8_0", "quantize_report.json",
                            "report.md", "tiny-demo-F16.gguf", "tiny-demo-Q4_K_M.gguf",
                            "tiny-demo-Q8_0.gguf"])
    assert set(quantized.result.files) == {"Q4_K_M", "Q8_0", "F16"}
    assert quantized.report["passed"] is True and quantized.report["problems"] == []


@pytest.mark.parametrize("type_name", ["Q4_K_M", "Q8_0", "F16"])
def test_metadata_read_back_with_gguf(quantized, hf_tokenizer, type_name):
    reader = _reader(quantized.out / f"tiny-demo-{type_name}.gguf")
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "general.file_type") == LLAMA_FTYPE[type_name]
    assert _field(reader, "llama.context_length") == 1024  # the demo's max_position_embeddings
    assert _field(reader, "tokenizer.chat_template") == hf_tokenizer.chat_template
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"  # registered by kubetune's converter wrapper
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == len(hf_tokenizer)
    assert tokens[_field(reader, "tokenizer.ggml.eos_token_id")] == "<|im_end|>"
    assert tokens[_field(reader, "tokenizer.ggml.bos_token_id")] == "<|begin_of_text|>"
    assert _field(reader, "tokenizer.ggml.add_bos_token") is True


def test_tensor_types_show_real_k_quants(quantized):
    types = {t: Counter(x.tensor_type.name for x in _reader(quantized.out / f"tiny-demo-{t}.gguf").tensors)
             for t in ("Q4_K_M", "Q8_0", "F16")}
    # Q4_K_M: most matrices Q4_K, the sensitive ones Q6_K; no fallback to Q5_0/Q8_0 (rows of 256).
    assert types["Q4_K_M"]["Q4_K"] >= 15 and types["Q4_K_M"]["Q6_K"] >= 1
    assert set(types["Q4_K_M"]) == {"Q4_K", "Q6_K", "F32"}
    assert set(types["Q8_0"]) == {"Q8_0", "F32"} and types["Q8_0"]["Q8_0"] == 23
    assert set(types["F16"]) == {"F16", "F32"}
    # Only the 1-D norm weights stay F32: 2 per layer (3 layers) + the final norm.
    assert all(c["F32"] == 7 for c in types.values())


def test_llama_cpp_loads_and_generates(quantized):
    import llama_cpp

    prompt = quantized.report["eval"]["prompts"][0]
    for t in ("Q4_K_M", "Q8_0"):
        llm = llama_cpp.Llama(model_path=str(quantized.out / f"tiny-demo-{t}.gguf"), n_ctx=512, verbose=False)
        out = llm.create_chat_completion(messages=prompt, temperature=0.0, max_tokens=16)
        text = out["choices"][0]["message"]["content"]
        assert text and out["usage"]["completion_tokens"] > 0, t
        llm.close()


def test_f16_gguf_greedy_equals_hf_greedy(quantized, hf_tokenizer):
    """The GGUF, loaded by llama.cpp and prompted through its embedded chat template, continues a
    chat prompt exactly as the HF model does through its own template (greedy decoding): the same
    token ids, and the same text from llama-cpp-python's chat completion API."""
    import llama_cpp
    import torch
    from transformers import AutoModelForCausalLM

    prompt = quantized.report["eval"]["prompts"][0]
    ids = hf_tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(quantized.demo.model_dir)
    with torch.inference_mode():
        gen = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                             eos_token_id=hf_tokenizer.eos_token_id, pad_token_id=hf_tokenizer.pad_token_id)
    expected = gen[0, len(ids):].tolist()
    eos = hf_tokenizer.eos_token_id
    expected = expected[: expected.index(eos)] if eos in expected else expected
    assert len(expected) >= 5  # a real continuation, not an immediate end of turn

    llm = llama_cpp.Llama(model_path=str(quantized.out / "tiny-demo-F16.gguf"), n_ctx=512, verbose=False)
    got = []
    for tok in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
        if tok == eos or len(got) == 24:
            break
        got.append(tok)
    assert got == expected
    chat = llm.create_chat_completion(messages=prompt, temperature=0.0, max_tokens=24)
    llm.close()
    assert chat["choices"][0]["message"]["content"] == hf_tokenizer.decode(expected, skip_special_tokens=True)
    assert quantized.entry("F16")["greedy_same_as_hf"][0] is True


def test_report_sizes_ratios_and_quality(quantized):
    files = {e["type"]: e for e in quantized.report["files"]}
    f16 = files["F16"]
    for t, e in files.items():
        path = quantized.out / e["file"]
        assert e["size_bytes"] == path.stat().st_size
        assert e["ratio_to_f16"] == pytest.approx(e["size_bytes"] / f16["size_bytes"], abs=1e-4)
        assert e["published"] is True
        assert math.isfinite(e["perplexity"]) and e["perplexity"] > 1
        assert e["ppl_delta_pct"] == pytest.approx((e["perplexity"] / f16["perplexity"] - 1) * 100, abs=0.01)
        assert e["metadata"]["checks"] and all(e["metadata"]["checks"].values()), (t, e["metadata"]["checks"])
    assert 0.45 < files["Q8_0"]["ratio_to_f16"] < 0.65
    assert files["Q4_K_M"]["ratio_to_f16"] < files["Q8_0"]["ratio_to_f16"]
    # The bar: Q8_0 loses under 1% perplexity; Q4_K_M's loss is stated (and larger).
    assert abs(files["Q8_0"]["ppl_delta_pct"]) < 1.0
    assert files["Q4_K_M"]["ppl_delta_pct"] > files["Q8_0"]["ppl_delta_pct"]
    assert files["Q8_0"]["top1_agreement"] > 0.9
    assert files["Q8_0"]["top1_agreement"] >= files["Q4_K_M"]["top1_agreement"] > 0.5
    assert f16["top1_agreement"] == 1.0 and f16["ppl_delta_pct"] == 0.0
    # The unquantized GGUF matches the merged HF model measured by transformers on the same tokens.
    hf = quantized.report["reference"]["hf"]
    assert abs(f16["ppl_delta_vs_hf_pct"]) < 0.5 and f16["top1_agreement_hf"] > 0.97
    assert f16["perplexity"] == pytest.approx(hf["perplexity"], rel=5e-3)
    ev = quantized.report["eval"]
    assert ev["records"] == 8 and ev["scored_tokens"] > 1000
    conv = quantized.report["converter"]
    assert conv["pre_tokenizer"] == "gpt-2" and conv["pre_tokenizer_source"] == "tokenizer.json"
    assert conv["seconds"] > 0 and len(conv["chkhsh"]) == 64
    md = (quantized.out / "report.md").read_text()
    assert "| Q4_K_M |" in md and "| Q8_0 |" in md


def test_disk_estimate_covers_the_real_sizes(quantized):
    from components.quantize import quant_types

    n = quant_types.count_parameters(quantized.demo.model_dir)
    assert n == quantized.report["model"]["parameters"]
    for e in quantized.report["files"]:
        assert quant_types.estimate_bytes(n, e["type"]) >= e["size_bytes"], e["type"]


def _jinja_render(template: str, messages, bos: str, eos: str, generation_prompt: bool) -> str:
    """The template rendered by plain jinja2, configured as llama.cpp's and transformers' chat code
    configure it (trim_blocks, lstrip_blocks; {% generation %} is a no-op)."""
    import jinja2
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            parser.stream.skip(1)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, loader=jinja2.BaseLoader(),
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    return env.from_string(template).render(messages=messages, bos_token=bos, eos_token=eos,
                                            add_generation_prompt=generation_prompt)


@pytest.mark.parametrize("generation_prompt", [False, True])
def test_chat_template_parity(quantized, hf_tokenizer, generation_prompt):
    """The template embedded in the GGUF, tokenized by llama.cpp, gives the training token ids."""
    import llama_cpp

    path = quantized.out / "tiny-demo-Q4_K_M.gguf"
    reader = _reader(path)
    template = _field(reader, "tokenizer.chat_template")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    bos, eos = (tokens[_field(reader, f"tokenizer.ggml.{k}_token_id")] for k in ("bos", "eos"))
    conversation = [{"role": "system", "content": "Extract JSON."},
                    {"role": "user", "content": "Acme Corp. and Beta LLC, effective 3 March 2024.\n\n  x"},
                    {"role": "assistant", "content": '{"parties": ["Acme Corp.", "Beta LLC"]}'},
                    {"role": "user", "content": "Again, with  two spaces and a tab\there."}]
    if not generation_prompt:
        conversation.append({"role": "assistant", "content": "{}"})
    text = _jinja_render(template, conversation, bos, eos, generation_prompt)
    vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    got = vocab.tokenize(text.encode(), add_bos=False, special=True)
    expected = hf_tokenizer.apply_chat_template(conversation, add_generation_prompt=generation_prompt,
                                                return_dict=True)["input_ids"]
    assert got == list(expected)
    assert got[0] == hf_tokenizer.bos_token_id and got.count(hf_tokenizer.bos_token_id) == 1
    for e in quantized.report["files"]:
        parity = e["chat_template_parity"]
        assert parity["ok"] and parity["template_equal"], e["type"]
        assert e["tokenizer_parity"]["ok"] and e["tokenizer_parity"]["stress_text_equal"], e["type"]


def test_gate_and_verification_problems_from_the_report(quantized):
    import copy

    from components.quantize import step

    report = copy.deepcopy(quantized.report)
    assert step.problems(report) == ([], [])
    report["thresholds"]["max_ppl_delta_pct"] = -100.0  # every quantized file "exceeds" it
    wrong, gate = step.problems(report)
    assert not wrong and len(gate) == 2  # both quantized files; never the unquantized reference
    assert all("quantize.max_ppl_delta_pct" in g for g in gate) and any("Q4_K_M" in g for g in gate)
    report["files"][0]["metadata"]["checks"]["chat_template_embedded"] = False
    wrong, _ = step.problems(report)
    assert wrong == [f"{report['files'][0]['file']}: metadata checks failed: chat_template_embedded"]


def test_tokenizer_parity_reads_special_tokens_written_in_text(quantized, hf_tokenizer):
    """A prepared completion ends with "<|im_end|>": HF reads it as one special token, so must llama.cpp."""
    import llama_cpp

    from components.quantize import verify

    llm = llama_cpp.Llama(model_path=str(quantized.result.files["Q8_0"]), vocab_only=True, verbose=False)
    text = '{"parties":[],"effective_date":"2024-05-02"}<|im_end|>'
    assert hf_tokenizer.convert_tokens_to_ids("<|im_end|>") in hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    parity = verify.tokenizer_parity(llm, hf_tokenizer, ["plain stress text", text])
    assert parity["ok"] and parity["mismatches"] == 0, parity
