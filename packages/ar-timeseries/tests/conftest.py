"""Tests run single-threaded: tiny models gain nothing from OpenMP, and on a shared 2-core
machine its spin-waits make timings erratic."""

import torch

torch.set_num_threads(1)
