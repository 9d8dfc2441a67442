"""ar-timeseries: long-term forecasting with frozen language models (AutoTimes, Time-LLM),
the Time-Series-Library protocol (:mod:`ar_timeseries.data`) and the baselines forecasters
compare with (:mod:`ar_timeseries.baselines`); recipe ``timeseries-ett``, benchmark
``timeseries``."""

__version__ = "0.1.0"
