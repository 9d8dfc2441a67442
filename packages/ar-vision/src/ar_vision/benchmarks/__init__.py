"""ar-vision's benchmarks (``ar bench NAME``): ``vision`` (:mod:`ar_vision.benchmarks.vision`)."""
