"""ar-decoding's benchmarks (``ar bench NAME``): ``decoding`` (:mod:`ar_decoding.benchmarks.decoding`)."""
