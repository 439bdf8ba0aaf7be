"""Calibration of the fake-quant model: the statistics pass and DQC (spec section 5)."""
from .stats import statistics_pass

__all__ = ["statistics_pass"]
