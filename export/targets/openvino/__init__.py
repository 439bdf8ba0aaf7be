"""The openvino target: the deploy IR as OpenVINO IR (`<component>.xml` + `.bin`, int8 weights kept),
run by OpenVINO's CPU plugin (runtime.OpenVinoSR), always with an explicit inference precision.

Four ways to run it on a CPU (`--ov-mode`), measured on this project's CPUs:

    int8     the CPU int8 graph (int8_graph.py), built for what OpenVINO's CPU plugin runs natively:
             u8 activations with PassionSR's own zero points, int8 weights whose per-channel shift
             term comes from one channel sum of the input (no all-ones output channel, no Split
             of a GEMM output), token halves as one GEMM with per-row grids. Every quantized
             conv/linear becomes an int8 primitive; attention cores are int8 MatMuls on
             zero-point-free operands, which the plugin fuses into one MHA kernel
             (int8_graph.lower_qattention).
    int8_qdq the rule-checked Q/DQ graph the trt target writes (export/qdq: one graph, two
             engines), the former int8 mode, kept for comparison: int8 kernels, but
             symmetric shifts, compensation maps and all-ones channels split off by reference
             kernels around them. Both int8 modes are exact on CPUs with VNNI (spec
             section 6: tiny-w8a8 UNet 57.7, encoder 68.4, decoder 55.6 dB vs the Q/DQ graph).
             Without VNNI the kernels add u8 x i8 products in pairs in int16 with saturation
             (vpmaddubsw): a single Q/DQ conv with 8-bit weight codes is off by up to 5.6e4
             codes, one with codes inside [-64, 63] is exact, and Gemm (jit_gemm_i8) differs
             even then; --verify of tiny-w8a8 gives 34.0 / 12.4 / 11.0 dB vs fake-quant (UNet /
             encoder / decoder; tiny-w6a6, 8-bit first and last layers: 47.3 / 17.0 / 39.0) on
             an AVX2 EPYC. The int8 graph with oneDNN capped to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2 on
             an AVX-512 VNNI EPYC), tiny-w6a6: every 6-bit layer passes --verify's per-layer gate
             (all 119 UNet layers, 14 int8 attention cores among them), the 8-bit post_quant_conv
             (50 dB) and quant_conv (4 dB) fail. Both refused on such CPUs.
    int8_narrow  for CPUs without VNNI (narrow_graph.py): per layer, the int8 graph's lowering
             for a conv whose integer operands cannot saturate those pair sums
             (narrow_graph.cannot_saturate: 2 * u8 max * |s8| max <= 32767, from the layer's
             actual activation operand and weight codes, so 6-bit convs), the dequant graph's
             (f32) elsewhere: PassionSR's 8-bit first and last layers, and the linears and
             attention cores, whose int8 kernels without VNNI are slower than f32 ones (sd21
             W6A6 UNet: 1.29x faster with them f32; narrow_graph's docstring). Compiled with the
             low-precision transformations on; the f32 layers stay f32 Conv/MatMul kernels on f32
             inputs (they hold no Q/DQ pair; ovcore.check_compiled refuses a compiled model where
             they do not). Exact on every x86 CPU. Measured with ONEDNN_MAX_CPU_ISA=AVX2 (AVX-512
             VNNI EPYC, OpenVINO 2026.4.1, `passion-export --target openvino --verify`, auto):
             tiny-w6a6 with every layer that cannot saturate int8 (linears and attention
             included): UNet 47.28, encoder 62.23, decoder 48.39 dB vs fake-quant, 167/167
             layers pass; tiny-w8a8 (no layer narrow enough) 58.64 / 70.91 / 56.72 dB, 167/167
             layers pass, every layer f32.
    dequant  the fake-quant function itself (fq_graph.py): each activation rounded to its grid
             by Div -> Round -> Clip -> Mul in f32, one f32 Conv/MatMul per layer on the
             int8-stored weights (decompressed by the plugin), the low-precision transformations
             off (the CPU plugin's LP_TRANSFORMS_MODE=NO). No integer shifts or split convs: a
             float engine needs none of the Q/DQ graph's int8 constraints. Exact on every x86 CPU,
             at f32 speed.

`auto` (the default) takes int8 where the CPU has VNNI (faster than int8_qdq where measured, see
resolve_mode) and int8_narrow elsewhere, and says which; the export's summary names the layers
int8_narrow runs in f32. VNNI is judged as oneDNN will use it (artifact.onednn_has_vnni: the CPU's
flags, unless ONEDNN_MAX_CPU_ISA caps oneDNN below its VNNI ISAs, which makes OpenVINO's kernels
those of a CPU without VNNI).
The manifest records the mode, the precision, what it is exact on and the CPU it was exported on
(oneDNN's cap included); the runtime refuses an int8 or int8_qdq artifact on a CPU without VNNI,
by name, as the onnx target refuses --isa vnni, and runs int8_narrow and dequant ones anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ... import artifact
from ...ir.trace import ExportError
from .. import ComponentModel, CpuRuntimeTarget, ExportReport, ServeSpec

MODES = ("int8", "int8_qdq", "int8_narrow", "dequant")
INT8_MODES = ("int8", "int8_qdq")  # the modes that run OpenVINO's int8 kernels on every layer (exact only with VNNI)
NARROW = "int8_narrow"  # int8 kernels only where they cannot saturate (narrow_graph.py): exact on every x86 CPU
AUTO_INT8 = "int8"  # what auto takes where the CPU has VNNI (resolve_mode says why)
AUTO_NO_VNNI = NARROW  # and where it has none
PRECISIONS = ("f32", "bf16")
INSTALL_HINT = "pip install 'passion-deploy[openvino]'"
MISSING = f"the openvino target needs OpenVINO, which is not installed here: {INSTALL_HINT}"
# why int8 is refused without VNNI, in the words both the exporter and the runtime use
SATURATES = ("OpenVINO's int8 kernels add 8-bit products in pairs in int16 with saturation on a CPU without VNNI "
             "(measured: wrong by up to 5.6e4 codes on one conv)")


# how the summary and the runtime name each mode's kernels, and the report its quantized ops
KERNELS = {"int8": "int8 kernels (the CPU int8 graph)", "int8_qdq": "int8 kernels (the trt target's Q/DQ graph)",
           NARROW: "int8 convs where the operands cannot saturate, f32 fake-quant elsewhere (the int8_narrow graph)"}
OPS = {"int8": "int8", "int8_qdq": "Q/DQ", NARROW: "int8 or fake-quantized", "dequant": "fake-quantized"}
EXACT_ON = {"int8": "CPUs with VNNI", "int8_qdq": "CPUs with VNNI",
            NARROW: "every x86 CPU (int8 kernels only on convs whose operands cannot saturate int16 pair sums)",
            "dequant": "every x86 CPU"}


def openvino_missing() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return True
    return False


def resolve_mode(mode: str) -> tuple[str, str]:
    """(mode, why): auto picks int8 where the CPU has VNNI and int8_narrow elsewhere; an explicit
    int8 or int8_qdq on a CPU without VNNI is refused, since --verify could only measure its
    saturation here. VNNI as oneDNN will use it (artifact.onednn_has_vnni: the CPU's flags, capped
    by ONEDNN_MAX_CPU_ISA where that is set)."""
    vnni = artifact.onednn_has_vnni()
    if mode == "auto":
        # the CPU int8 graph: it passes --verify's per-layer gate and, with its attention cores fused
        # by the plugin, beats the Q/DQ graph (tiny-w8a8 on a 2-core AVX-512 VNNI EPYC, alternating in
        # one process: UNet 1.48x, decoder 1.55x, encoder 1.18x its speed; README, issue 23)
        # without VNNI: int8 kernels on the convs that cannot saturate (6-bit codes), f32 on the other
        # layers (tiny-w6a6 under ONEDNN_MAX_CPU_ISA=AVX2: every layer passes the per-layer gate; narrow_graph)
        return (AUTO_INT8, "auto: this CPU has VNNI") if vnni else (
            AUTO_NO_VNNI, "auto: this CPU has no VNNI, where OpenVINO's int8 kernels may saturate: int8 kernels on the "
                          "convs whose integer operands cannot saturate, f32 fake-quant on the other layers")
    if mode not in MODES:
        raise ExportError(f"--ov-mode {mode!r}: choose auto, int8, int8_qdq, int8_narrow or dequant")
    if mode in INT8_MODES and not vnni:
        raise ExportError(f"--ov-mode {mode} is not exact on this CPU: {SATURATES}; use --ov-mode auto (int8_narrow here: "
                          "int8 kernels only where they cannot saturate) or --ov-mode dequant (both exact on every x86 CPU), "
                          "or export on a CPU with VNNI")
    return mode, "asked for"


@dataclass(frozen=True)
class OpenVinoOptions:
    mode: str = field(default="auto", metadata={
        "flag": "--ov-mode", "choices": ("auto", *MODES),
        "help": "int8: OpenVINO's int8 primitives on a graph built for them (u8 activations with PassionSR's zero "
                "points; exact only on CPUs with VNNI, refused elsewhere); int8_qdq: the same kernels on the trt "
                "target's Q/DQ graph; int8_narrow: int8 primitives on the convs whose integer operands cannot "
                "saturate the 16-bit pair sums of CPUs without VNNI (6-bit codes), the fake-quant graph in f32 on "
                "the other layers (exact on every x86 CPU); dequant: the fake-quant graph, rounding and "
                "convs/matmuls in f32 (exact on every x86 CPU); auto (default): int8 where this CPU has VNNI, "
                "else int8_narrow"})
    precision: str = field(default="f32", metadata={
        "flag": "--ov-precision", "choices": PRECISIONS,
        "help": "OpenVINO's inference precision for the float ops, set explicitly (default f32: exact); bf16 is "
                "OpenVINO's own default on CPUs with bf16, faster there and judged by --verify like any other setting "
                "(on a CPU without bf16 OpenVINO runs f32 and the manifest says so)"})


class OpenVinoTarget(CpuRuntimeTarget):
    name = "openvino"
    help = ("OpenVINO IR for OpenVINO's CPU plugin (int8 kernels on a CPU int8 graph or the Q/DQ graph, per layer where "
            "they cannot saturate, or the fake-quant graph in f32)")
    options = OpenVinoOptions
    runtime = "OpenVinoSR"
    manifest_needs = ("openvino",)
    component_needs = ("openvino_xml", "openvino_bin")

    def resolve_options(self, options) -> dict:
        o = self.make_options(options)
        if openvino_missing():
            raise ExportError(MISSING)
        if o.precision not in PRECISIONS:
            raise ExportError(f"--ov-precision {o.precision!r}: choose f32 or bf16")
        mode, why = resolve_mode(o.mode)
        return {"mode": mode, "mode_chosen": why, "precision": o.precision}

    def lower(self, job, name: str, graph) -> tuple[list[str], dict]:
        from .convert import write_openvino_ir

        return write_openvino_ir(job, name, graph)

    def manifest_fields(self, job) -> dict:
        from .ovcore import cpu_info, openvino_version

        o = job.options
        return {"openvino": {"version": openvino_version(), "mode": o["mode"], "mode_chosen": o["mode_chosen"],
                             "precision": o["precision"], "exact_on": EXACT_ON[o["mode"]],
                             "exported_on": cpu_info()}}

    def report(self, manifest: dict) -> ExportReport:
        o = manifest["openvino"]
        kernels = KERNELS.get(o["mode"]) or "dequant mode (fake-quant graph in f32, exact without VNNI)"
        ops = OPS[o["mode"]]
        lines = tuple(f"  {comp:12s} OpenVINO IR {c['openvino_bytes'] / 1e6:.2f} MB (int8 weights "
                      f"{c['openvino_int8_weight_bytes'] / 1e6:.2f} MB), {c['quantized_ops']} {ops} convs/matmuls"
                      + (_layer_split(c) if "openvino_f32_layers" in c else "")
                      for comp, c in manifest["components"].items())
        return ExportReport(f"openvino {o['version'].split('-')[0]}, {kernels} ({o['mode_chosen']}), {o['precision']} precision",
                            lines)

    def serve_spec(self, art) -> ServeSpec:
        """Each component's IR on Triton's openvino backend, with the CPU plugin properties the
        runtime compiles it with (the .bin is found beside the .xml under the same stem)."""
        ov = art.manifest["openvino"]
        params = {"INFERENCE_PRECISION_HINT": ov.get("precision", "f32")}
        if ov.get("mode") == "dequant":  # what makes the graph exact without VNNI (the runtime's setting)
            params["LP_TRANSFORMS_MODE"] = "NO"
        comps = {n: ComponentModel("openvino", {c["openvino_xml"]: "model.xml", c["openvino_bin"]: "model.bin"},
                                   c.get("input_shapes") or c["inputs"],
                                   f"OpenVINO IR ({c['openvino_xml']}, {ov.get('mode', '?')} mode, openvino backend)",
                                   parameters=params)
                 for n, c in art.manifest["components"].items()}
        note = ("the OpenVINO models carry the CPU plugin properties the artifact's runtime compiles them with "
                "(config.pbtxt parameters); check that your OpenVINO backend passes them on, LP_TRANSFORMS_MODE above "
                "all where the artifact runs in dequant mode")
        return ServeSpec(gpu=False, components=comps, notes=(note,))


def _layer_split(c: dict) -> str:
    """The int8_narrow mode's per-layer choice, as the export's summary says it."""
    f32 = c["openvino_f32_layers"]
    named = ", ".join(f32[:4]) + (f" and {len(f32) - 4} more" if len(f32) > 4 else "")
    return f"; {c['openvino_int8_layers']} layers int8, {len(f32)} f32" + (f" ({named})" if f32 else "")


TARGET = OpenVinoTarget()
