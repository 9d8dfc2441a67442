"""Benchmarks of ar-timeseries: ``timeseries`` (:mod:`ar_timeseries.benchmarks.timeseries`)."""
