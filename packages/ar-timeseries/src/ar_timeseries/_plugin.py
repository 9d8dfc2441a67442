"""ar-timeseries's plugin: registers its recipes and benchmarks (imported lazily)."""

from __future__ import annotations
