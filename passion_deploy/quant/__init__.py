"""PassionSR fake-quant: LBQ quantizers, LET conv/linear layers, quantized attention, wrapping."""
from .attention import QuantAttnProcessor
from .layers import QuantConv, QuantLayer, QuantLinear
from .quantizer import LBQuantizer, QuantSpec, fake_quantize, round_half_away
from .wrap import quantize_pipeline, set_observers, set_quant_state

__all__ = ["LBQuantizer", "QuantAttnProcessor", "QuantConv", "QuantLayer", "QuantLinear", "QuantSpec",
           "fake_quantize", "quantize_pipeline", "round_half_away", "set_observers", "set_quant_state"]
