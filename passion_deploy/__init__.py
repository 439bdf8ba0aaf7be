"""passion-deploy: calibrate, compile and verify PassionSR-quantized one-step diffusion SR."""
__version__ = "0.1.0"
