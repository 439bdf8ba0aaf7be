"""What CPU users of OpenVINO pick instead of an openvino artifact, as passion-bench baselines
(export/runtime.py RuntimeBaselines: the runtime names them, this target builds them):

    ov_fp32     the FP32 ONNX baseline's graph in OpenVINO's CPU plugin, INFERENCE_PRECISION_HINT=f32
    ov_default  the same at OpenVINO's own default precision: bf16 on CPUs with bf16 (AVX-512 BF16,
                AMX); where that is f32 it is ov_fp32's compile, not timed twice (the record says so)
    nncf_int8   NNCF's post-training INT8 of that model (nncf.quantize defaults: min-max ranges, the
                performance preset) on the photos the checkpoint itself was calibrated on, float ops
                f32, so that its row shows what the generic recipe loses, not bf16
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...runtime import RuntimeBaselines, TimingVariant
from . import INSTALL_HINT


class OpenVinoBaselines(RuntimeBaselines):
    """ov_fp32 / ov_default / nncf_int8 of one artifact's components, built from the FP32 ONNX
    files the harness wrote (one OpenVINO model per component, converted when first asked for)."""

    needs = {"ov_fp32": ("openvino",), "ov_default": ("openvino",), "nncf_int8": ("openvino", "nncf")}
    install_hint = INSTALL_HINT
    calibrated = ("nncf_int8",)

    def __init__(self, rt, onnx_dir: Path, threads: int | None, photos, log):
        from . import ovcore

        super().__init__(rt, onnx_dir, threads, photos, log)
        self.default_precision = ovcore.default_precision()
        self._model = (None, None)
        self.nncf: dict[str, Path] = {}  # component -> its NNCF INT8 model, saved as OpenVINO IR
        self.nncf_info: dict[str, dict] = {}

    def skipped(self) -> dict[str, str]:
        if self.default_precision == "f32":
            return {"ov_default": "OpenVINO's default CPU inference precision on this CPU is f32 (it has no bf16), so "
                                  "its default compile is the OpenVINO FP32 row"}
        return {}

    def fp32_model(self, comp: str):
        if self._model[0] != comp:
            import openvino as ov

            self._model = (None, None)  # the previous component's weights go before this one's load
            self._model = (comp, ov.convert_model(str(self.dir / f"{comp}.onnx")))
        return self._model[1]

    def release(self) -> None:
        self._model = (None, None)  # the cached FP32 model: its variants keep it until they have compiled it

    def nncf_model(self, comp: str):
        from . import ovcore

        if comp not in self.nncf:
            import time

            import nncf
            import openvino as ov

            if self.photos is None:
                raise ValueError("the nncf_int8 baseline needs the calibration photos (run without --no-fidelity)")
            feeds = [self.feeds(comp, x) for x in self.photos.calibration(comp)]
            self.log(f"passion-bench: NNCF post-training INT8 of {comp} ({len(feeds)} calibration samples)")
            t0 = time.perf_counter()
            quantized = nncf.quantize(self.fp32_model(comp), nncf.Dataset(feeds))
            # kept on disk for full SR, not in memory (its weights are f32 until OpenVINO compiles it:
            # 3.5 GB for the sd21 UNet); read_model maps the file back when full SR needs it
            path = self.dir / f"{comp}.nncf_int8.xml"
            ov.save_model(quantized, str(path), compress_to_fp16=False)
            del quantized
            self.nncf[comp] = path
            self.nncf_info[comp] = {"nncf_version": nncf.__version__, "calibration_samples": len(feeds),
                                    "calibration": self.photos.calib_names,
                                    "quantize_seconds": round(time.perf_counter() - t0, 1),
                                    "recipe": "nncf.quantize defaults (min-max ranges, performance preset)"}
        return ovcore.core().read_model(str(self.nncf[comp]))

    def feeds(self, comp: str, x: torch.Tensor) -> dict:
        return {self.rt.main_input(comp): np.ascontiguousarray(x.detach().float().cpu().numpy()),
                **self.rt.constant_feeds(comp)}

    def variant(self, name: str, comp: str, x: torch.Tensor) -> TimingVariant:
        from . import ovcore as oc

        model = self.nncf_model(comp) if name == "nncf_int8" else self.fp32_model(comp)
        precision = None if name == "ov_default" else "f32"
        fields = {"ov_precision_asked": precision or "OpenVINO default",
                  "weight_bytes_in_model": sum(int(op.get_byte_size()) for op in model.get_ops()
                                               if op.get_type_name() == "Constant")}
        if name == "nncf_int8":
            fields.update(self.nncf_info[comp])
        sm = oc.StaticModels(model, oc.compile_config(precision, None, self.threads),
                             lambda c: {"precision": oc.effective_precision(c),
                                        **dict(zip(("int8_primitives", "convs_and_matmuls"), oc.int8_primitives(c)))})

        def load():
            fn = lambda t: sm(self.feeds(comp, t))  # noqa: E731
            fn(x)  # compile for x's shape inside the warm-up's memory sampling
            fields["ov_compiled"] = sm.found
            return fn
        return TimingVariant(name, load, x, fields)
