"""The real-photo data passion-bench scores every variant with, and full SR made of timed variants.

PhotoData runs the FP32 PyTorch pipeline on real photos, once: the calibration inputs (a target's
own calibrated baselines use them: export/runtime.py RuntimeBaselines), each timed shape's input
from FIDELITY_PHOTO and its FP32 output, which every variant is scored against. ComposedSR runs
full SR on one loaded function per component (a variant's), to time and score it end to end.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from passion_deploy.export.runtime import SRRuntime
from passion_deploy.models.components import component

FIDELITY_PHOTO = "coffee"  # one of calibrate/data.py's HELD_OUT photos: no checkpoint here was calibrated on it


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
