"""Ollama Modelfiles: the chat template converted to Go-template syntax renders conversations exactly
as the Jinja template does (minus the BOS that the runner adds), with the right stop tokens."""

from __future__ import annotations

import pytest
from quantize_gotemplate import go_available, modelfile_template, render_go, render_subset

from components.quantize import ollama

CONVERSATIONS = [
    [{"role": "system", "content": "You extract JSON."}, {"role": "user", "content": "Acme and Beta.\n\nGo"}],
    [{"role": "user", "content": "first"}, {"role": "assistant", "content": '{"a": 1}'},
     {"role": "user", "content": "second {{ not a template }}"}],
]


def _hf_render(tokenizer, template=None):
    def render(messages, generation_prompt):
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=generation_prompt)
    return render


def test_demo_modelfile(quantized, hf_tokenizer):
    text = (quantized.out / "Modelfile.Q4_K_M").read_text()
    assert "FROM ./tiny-demo-Q4_K_M.gguf" in text.splitlines()
    assert (quantized.out / "tiny-demo-Q4_K_M.gguf").is_file()
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|im_start|>"' in text
    template = modelfile_template(text)
    assert template == ("{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
                        "{{ end }}<|im_start|>assistant\n")
    # Every demo conversation has the same system prompt; Ollama sends it when the user gives none.
    assert 'SYSTEM """You extract' in text
    entry = quantized.entry("Q4_K_M")["modelfile"]
    assert entry["template_converted"] and entry["stop"] == ["<|im_end|>", "<|im_start|>"]
    for convo in CONVERSATIONS:
        expected = hf_tokenizer.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
        assert expected.startswith(hf_tokenizer.bos_token)
        assert render_subset(template, convo) == expected[len(hf_tokenizer.bos_token):]


@pytest.mark.skipif(not go_available(), reason="no Go toolchain on PATH (apt-get install golang-go)")
def test_demo_template_with_real_go(quantized, hf_tokenizer, tmp_path):
    template = modelfile_template((quantized.out / "Modelfile.Q8_0").read_text())
    for i, convo in enumerate(CONVERSATIONS):
        expected = hf_tokenizer.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
        assert render_go(template, convo, tmp_path / f"go{i}") == expected[len(hf_tokenizer.bos_token):]


LLAMA3 = ("{{- bos_token }}{% for m in messages %}"
          "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim"
          " + '<|eot_id|>' }}"
          "{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
PER_ROLE = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ '### System: ' + m['content'] + '\n' }}"
            "{% elif m['role'] == 'user' %}{{ '### User: ' + m['content'] + '\n' }}"
            "{% else %}{{ '### Answer: ' + m['content'] + '</s>\n' }}{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}{{ '### Answer:' }}{% endif %}")
MISTRAL = ("{{ bos_token }}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('roles must alternate') }}{% endif %}{% if m['role'] == 'user' %}"
           "{{ '[INST] ' + m['content'] + ' [/INST]' }}{% else %}{{ m['content'] + eos_token }}{% endif %}"
           "{% endfor %}")


def test_per_role_template_converts(hf_tokenizer):
    render = _hf_render(hf_tokenizer, PER_ROLE)
    mf = ollama.build_modelfile("m.gguf", render, bos=None, eos="</s>", add_bos=False)
    assert mf.template_converted
    assert '{{ if eq .Role "system" }}### System: ' in mf.template
    assert "</s>" in mf.stops
    for convo in CONVERSATIONS:
        assert render_subset(mf.template, convo) == render(convo, True)


def test_llama3_style_template_converts_without_bos(hf_tokenizer):
    render = _hf_render(hf_tokenizer, LLAMA3)
    mf = ollama.build_modelfile("m.gguf", render, bos="<|begin_of_text|>", eos="<|eot_id|>", add_bos=True)
    assert mf.template_converted and "<|begin_of_text|>" not in mf.template
    assert "{{ .Role }}" in mf.template and mf.stops == ["<|eot_id|>", "<|start_header_id|>"]
    for convo in CONVERSATIONS:
        assert "<|begin_of_text|>" + render_subset(mf.template, convo) == render(convo, True)


def test_template_that_does_not_fit_falls_back(hf_tokenizer):
    """A template that raises on a lone system message (or merges roles) is not guessed at: the
    Modelfile leaves TEMPLATE out, so Ollama uses the GGUF's own tokenizer.chat_template."""
    render = _hf_render(hf_tokenizer, MISTRAL)
    mf = ollama.build_modelfile("m.gguf", render, bos="<s>", eos="</s>", add_bos=True)
    assert not mf.template_converted and mf.template is None
    assert "TEMPLATE" not in mf.text and 'PARAMETER stop "</s>"' in mf.text and "FROM ./m.gguf" in mf.text
    assert mf.notes


def test_common_system_prompt():
    a = [{"role": "system", "content": "S"}, {"role": "user", "content": "u"}]
    b = [{"role": "system", "content": "S"}, {"role": "user", "content": "v"}]
    assert ollama.common_system_prompt([a, b]) == "S"
    assert ollama.common_system_prompt([a, b[1:]]) is None
