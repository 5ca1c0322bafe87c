"""The quantize step: the merged model to GGUF files (llama.cpp's converter and quantizer), each
verified (loads, metadata, perplexity, top-1 agreement, chat-template parity) and given an Ollama
Modelfile. See README.md; `step.run` is the entry point.

Nothing here imports llama_cpp, gguf or torch at import time.
"""
