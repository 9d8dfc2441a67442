"""ar-kernels's benchmarks (``ar bench NAME``): ``flex_vs_sdpa`` (:mod:`ar_kernels.benchmarks.flex_vs_sdpa`)."""
