"""What a server or a Ray worker runs, and images in and out exactly as passion-sr handles them.

ModelSpec names the model the way passion-sr's flags do (an artifact folder, or a backend with
its checkpoint) and loads it with the same call; SRSettings holds the tiling, colour fix and
pixel budget. Both are plain data: they travel in a Triton config.pbtxt (as string parameters)
and to Ray actors (pickled), and every process that loads them gets the same model.

Images: a uint8 H x W x 3 array becomes the float tensor read_image gives for the same pixels
in a PNG; file bytes are read by read_image itself (EXIF orientation, alpha on white, 16-bit,
the pixel budget from the header); an output is stored as write_png stores it (to_uint8).
"""
from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from ..images import ImageError, read_image, to_uint8
from ..runner import SRModel, Tiling, super_resolve

DEFAULT_MAX_PIXELS = 4_000_000  # LR pixels, passion-sr's default budget


@dataclass(frozen=True)
class ModelSpec:
    """The model, as passion-sr's --model / --backend / --preset / --ckpt / --config name it."""

    model_dir: str | None = None  # an artifact folder (replaces backend)
    backend: str = "fp32"  # fp32 | fp16 | fakequant, when there is no model_dir
    preset: str | None = None
    ckpt: str | None = None
    config: str = "w8a8"
    weights: str | None = None
    lora: str | None = None
    device: str = "auto"  # --device: where a PyTorch pipeline runs, resolved where it loads (a Ray
    # worker on a GPU node gets its GPU); an artifact runs where its target runs

    def load(self) -> SRModel:
        """The model, loaded by what passion-sr's Python API calls (api.upscaler, api.open) run:
        resolve_device, runner.load_model, place. Serving sits under the API, so it calls them itself."""
        from ..devices import resolve_device
        from ..runner import load_model, place

        device = resolve_device(self.device) if self.model_dir is None else None
        model = load_model(self.preset, self.backend, self.weights, self.lora, None, self.ckpt, self.config,
                           progress=False, model_dir=self.model_dir)
        return place(model, device)

    @property
    def name(self) -> str:
        return self.model_dir or f"{self.backend}" + (f" ({self.ckpt})" if self.ckpt else "")

    def params(self) -> dict[str, str]:
        return _params(self)

    @classmethod
    def from_params(cls, params: dict[str, str], base: Path | None = None) -> "ModelSpec":
        """From config.pbtxt parameters; a relative model_dir is relative to `base` (the model's
        version folder, so a written repository can be moved)."""
        spec = _from_params(cls, params)
        if spec.model_dir and base is not None and not os.path.isabs(spec.model_dir):
            spec = replace(spec, model_dir=str(base / spec.model_dir))
        return spec


@dataclass(frozen=True)
class SRSettings:
    """passion-sr's tiling and colour flags and the pixel budget (defaults: passion-sr's)."""

    tile_overlap: int | None = None
    vae_tile: str = "auto"  # auto | off | N | ENC,DEC, as --vae-tile takes it
    vae_overlap: int | None = None
    color_fix: str = "adain"
    max_pixels: int = DEFAULT_MAX_PIXELS  # 0: no limit

    def tiling(self, batch: int = 1) -> Tiling:
        return Tiling(self.tile_overlap, parse_vae_tile(self.vae_tile), self.vae_overlap, batch)

    @property
    def budget(self) -> int | None:
        return self.max_pixels or None

    def params(self) -> dict[str, str]:
        return _params(self)

    @classmethod
    def from_params(cls, params: dict[str, str]) -> "SRSettings":
        return _from_params(cls, params)


def parse_vae_tile(text: str):
    """--vae-tile's value: auto, off, N or ENC,DEC (ValueError names a bad one)."""
    t = str(text).strip().lower()
    if t in ("auto", "off"):
        return t
    try:
        vals = [int(v) for v in t.split(",")]
    except ValueError:
        vals = []
    if len(vals) not in (1, 2) or min(vals) < 1:
        raise ValueError(f"--vae-tile {text!r} must be auto, off, N or ENC,DEC (latent pixels, at least 1)")
    return vals[0] if len(vals) == 1 else (vals[0], vals[1])


def _params(obj) -> dict[str, str]:
    """Dataclass fields as strings (None as ""): what a config.pbtxt parameter holds."""
    return {f.name: "" if getattr(obj, f.name) is None else str(getattr(obj, f.name)) for f in fields(obj)}


def _from_params(cls, params: dict[str, str]):
    kw = {}
    for f in fields(cls):
        if f.name not in params:
            continue
        v = params[f.name]
        if f.type in ("int | None", "int"):
            kw[f.name] = int(v) if v != "" else None
        else:
            kw[f.name] = v if v != "" else None
        if kw[f.name] is None and f.default is not None:
            kw[f.name] = f.default
    return cls(**kw)


def array_image(a: np.ndarray) -> torch.Tensor:
    """uint8 H x W x 3 -> float32 3 x H x W in [0, 1], the tensor read_image gives for the same
    pixels in an RGB PNG (uint8 to float32, then / 255)."""
    return torch.from_numpy(np.ascontiguousarray((a.astype(np.float32) / 255.0).transpose(2, 0, 1)))


def decode_image(data: bytes, name: str, max_pixels: int | None) -> torch.Tensor:
    """Image file bytes -> 3 x H x W float tensor, by read_image itself on a private copy (so a
    served or shipped file is read exactly as passion-sr reads it from disk); ImageError names
    `name`, never the copy."""
    with tempfile.TemporaryDirectory(prefix="passion-decode-") as d:
        path = Path(d) / "image"
        path.write_bytes(data)
        try:
            return read_image(path, max_pixels)
        except ImageError as e:
            raise ImageError(str(e).replace(str(path), name)) from None


def sr_uint8(model: SRModel, lr: torch.Tensor, settings: SRSettings, batch: int = 1) -> np.ndarray:
    """4x super-resolution of one LR tensor as passion-sr computes it, as the uint8 H x W x 3
    array its PNG stores."""
    sr = super_resolve(model, lr, tiling=settings.tiling(batch), color_fix=settings.color_fix)
    return to_uint8(sr)


def png_bytes(img: np.ndarray) -> bytes:
    """uint8 H x W x 3 -> PNG file bytes, encoded as write_png encodes (PIL, default settings)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="PNG")
    return buf.getvalue()
