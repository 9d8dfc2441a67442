"""ar-video's recipes (``video-moving-digits``)."""
