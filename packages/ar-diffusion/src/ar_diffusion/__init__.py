"""ar-diffusion: masked (MDLM) and block (BD3-LM) diffusion language models built on
ar-core's Transformer, masks, KV cache and strategies."""

__version__ = "0.1.0"
