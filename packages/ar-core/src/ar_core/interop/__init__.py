"""Converters between ar models and other libraries' models (``hf_llama``: Hugging Face Llama)."""
