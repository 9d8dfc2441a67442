"""ar-text's benchmarks (``ar bench NAME``): ``hf_strategies`` (:mod:`ar_text.benchmarks.hf_strategies`)
and ``stargraph_compare`` (:mod:`ar_text.benchmarks.stargraph_compare`)."""
