"""One-step SR models on diffusers parts: presets, the pipeline, weight loading."""
from .build import WeightsError, build_pipeline, load_context
from .pipeline import OneStepSR
from .presets import PRESETS, Preset, get_preset

__all__ = ["OneStepSR", "PRESETS", "Preset", "WeightsError", "build_pipeline", "get_preset", "load_context"]
