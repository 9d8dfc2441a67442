"""ar-video's benchmarks (``ar bench video``)."""
