"""Integrations: transparent loading for unmodified safetensors users (``transparent``) and vLLM (``vllm``)."""
