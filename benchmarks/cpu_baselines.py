"""What CPU users pick instead of this project's integer artifacts, as passion-bench baselines
(`OpenVinoBaselines`), and the real-photo data that scores every variant against FP32 (`PhotoData`).

    ov_fp32     the FP32 ONNX baseline's graph in OpenVINO's CPU plugin, INFERENCE_PRECISION_HINT=f32
    ov_default  the same at OpenVINO's own default precision: bf16 on CPUs with bf16 (AVX-512 BF16,
                AMX); where that is f32 it is ov_fp32's compile, not timed twice (the record says so)
    nncf_int8   NNCF's post-training INT8 of that model (nncf.quantize defaults: min-max ranges, the
                performance preset) on the photos the checkpoint itself was calibrated on, float ops
                f32, so that its row shows what the generic recipe loses, not bf16

PhotoData runs the FP32 PyTorch pipeline on real photos, once: the calibration inputs, each timed
shape's input from FIDELITY_PHOTO and its FP32 output, which every variant is scored against.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from passion_deploy.export.runtime import SRRuntime
from passion_deploy.models.components import component

NEEDS = {"ov_fp32": ["openvino"], "ov_default": ["openvino"], "nncf_int8": ["openvino", "nncf"]}  # Python packages
OV_BASELINES = tuple(NEEDS)
FIDELITY_PHOTO = "coffee"  # one of calibrate/data.py's HELD_OUT photos: no checkpoint here was calibrated on it


def require(names: list[str]) -> None:
    """Refuse, in one sentence, OpenVINO baselines this installation cannot build."""
    from importlib.util import find_spec

    for name in names:
        for module in NEEDS.get(name, ()):
            if find_spec(module) is None:
                raise ValueError(f"the {name} baseline needs {module}, which is not installed here: "
                                 "pip install 'passion-deploy[openvino]'")


def to_tensor(out) -> torch.Tensor:
    """A variant's output (an ONNX Runtime list of arrays, an array or a tensor) as a float CPU tensor."""
    if isinstance(out, (list, tuple)):
        out = out[0]
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(np.asarray(out))
    return out.detach().float().cpu()


class PhotoData:
    """Real-photo inputs and FP32 references, computed once on the CPU by the FP32 pipeline `fp`."""

    def __init__(self, fp, rt, shapes: dict[str, tuple], calib_dir: str | Path | None = None, sr_px: int | None = None,
                 log=print):
        from passion_deploy.calibrate.data import bundled_photos, center_square, pair_from_hr
        from passion_deploy.images import read_image

        self.fp, self.rt = fp, rt
        th, tw = rt.latent_tile
        f = rt.vae_factor
        photos = {p.stem: p for p in bundled_photos()}
        if FIDELITY_PHOTO not in photos:
            raise ValueError(f"the fidelity photo {FIDELITY_PHOTO!r} is not bundled in this installation")
        hr = read_image(photos[FIDELITY_PHOTO])
        self.inputs, self.refs = {}, {}
        with torch.no_grad():
            for comp, shape in shapes.items():
                hw = shape[-2:] if comp == "vae_encoder" else (shape[-2] * f, shape[-1] * f)
                img = pair_from_hr(center_square(hr, hw[0]))[0][None]
                if hw[0] != hw[1]:
                    img = torch.nn.functional.interpolate(img, size=tuple(hw), mode="bicubic", align_corners=False).clamp(0, 1)
                z = fp.encode(img)
                x = {"vae_encoder": img, "unet": z, "vae_decoder": None}[comp]
                if comp == "vae_decoder":
                    x = fp.z0_from_eps(z, fp.unet_eps(z)) if tuple(z.shape[-2:]) == (th, tw) else self._z0_tiled(z)
                self.inputs[comp] = x.float()
                self.refs[comp] = component(comp).fn(fp)(x).float()
        self.calib_dir = calib_dir
        self.log = log
        self._calib = None
        self.sr_lr = self.sr_ref = None
        if sr_px:
            from passion_deploy.images import downscale_bicubic

            self.sr_lr = downscale_bicubic(center_square(hr, sr_px), 4).clamp(0, 1)
            self.sr_ref = self.super_resolve(fp_runtime(fp, rt))

    def _z0_tiled(self, z: torch.Tensor) -> torch.Tensor:
        """z0 of a latent larger than the UNet tile, as the SR pipeline computes it (tiled)."""
        from passion_deploy.models.tiling import denoise_tiled

        return denoise_tiled(fp_runtime(self.fp, self.rt), z, self.rt.latent_tile)

    def super_resolve(self, sr_runtime) -> torch.Tensor:
        """4x SR of the fidelity photo's LR with the SR pipeline's default tiling, no colour fix."""
        from passion_deploy.runner import SRModel, super_resolve

        model = SRModel(sr_runtime, "bench", self.rt.latent_tile, "bench")
        return super_resolve(model, self.sr_lr)

    def calibration(self, comp: str) -> list[torch.Tensor]:
        """Each component's inputs on the calibration photos at the calibrated tile."""
        if self._calib is None:
            from passion_deploy.calibrate.data import calibration_images

            preset, px = self.rt.manifest["source_checkpoint"].get("preset"), self.rt.latent_tile[0] * self.rt.vae_factor
            images, names = calibration_images(preset, px, self.calib_dir)
            self.log(f"passion-bench: NNCF calibration on {len(images)} image(s): {names}")
            with torch.no_grad():
                z = [self.fp.encode(x) for x in images]
                self._calib = {"vae_encoder": images, "unet": z,
                               "vae_decoder": [self.fp.z0_from_eps(zi, self.fp.unet_eps(zi)) for zi in z]}
            self.calib_names = names
        return self._calib[comp]


def fp_runtime(fp, rt):
    """The FP32 PyTorch pipeline as an SR runtime at the artifact's tile."""
    from passion_deploy.export.runtime import PipelineSR

    return PipelineSR(fp, "fp32", rt.latent_tile)


class ComposedSR(SRRuntime):
    """An SR runtime made of one loaded function per component (a timed variant's), for full SR:
    each component gets its input where and as its variant was timed (device, dtype)."""

    def __init__(self, rt, fns: dict, variants: dict):
        super().__init__(rt.manifest["pipeline"], rt.latent_tile)
        self.fns, self.variants = fns, variants

    def component_fn(self, name: str):
        fn, x = self.fns[name], self.variants[name].x
        return lambda t: to_tensor(fn(t.to(x.device, x.dtype)))


class OpenVinoBaselines:
    """ov_fp32 / ov_default / nncf_int8 of one artifact's components, built from the FP32 ONNX
    files the harness wrote (one OpenVINO model per component, converted when first asked for)."""

    def __init__(self, rt, onnx_dir: Path, threads: int | None, photos: PhotoData | None, log):
        from passion_deploy.export.targets.openvino import ovcore

        self.rt, self.dir, self.threads, self.photos, self.log = rt, onnx_dir, threads, photos, log
        self.ovcore = ovcore
        self.default_precision = ovcore.default_precision()
        self._model = (None, None)
        self.nncf: dict[str, Path] = {}  # component -> its NNCF INT8 model, saved as OpenVINO IR
        self.nncf_info: dict[str, dict] = {}

    def skipped(self) -> dict[str, str]:
        """Baselines not timed here, and why."""
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
        """Forget the cached FP32 model (its variants keep it until they have compiled it)."""
        self._model = (None, None)

    def nncf_model(self, comp: str):
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
        return self.ovcore.core().read_model(str(self.nncf[comp]))

    def feeds(self, comp: str, x: torch.Tensor) -> dict:
        return {self.rt.main_input(comp): np.ascontiguousarray(x.detach().float().cpu().numpy()),
                **self.rt.constant_feeds(comp)}

    def variant(self, name: str, comp: str, x: torch.Tensor):
        from passion_deploy.export.runtime import TimingVariant

        oc = self.ovcore
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
