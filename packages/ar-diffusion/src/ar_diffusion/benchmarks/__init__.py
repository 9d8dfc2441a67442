"""Benchmarks of ar-diffusion (``ar bench diffusion``)."""
