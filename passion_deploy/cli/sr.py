"""passion-sr: 4x super-resolution of an image or a folder with a chosen backend.

Any image size: the VAE encoder, the UNet and the VAE decoder run on overlapping tiles
blended into one output, so a 300x200 photo becomes exactly 1200x800 and memory stays
bounded on large ones. Outputs are written atomically; a rerun skips finished outputs.
"""
from __future__ import annotations

from ..errors import PassionError
import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from . import refusals

DEFAULT_MAX_PIXELS = 4_000_000  # LR pixels: a 2000x2000 photo, 64 MP out (~0.8 GB per float image buffer)
SCALE = 4


def build_parser() -> argparse.ArgumentParser:
    from ..api import BACKENDS
    from ..colorfix import COLOR_FIXES, DEFAULT_COLOR_FIX
    from ..compare import DEFAULT_CROP

    p = argparse.ArgumentParser(prog="passion-sr", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--input", required=True, help="an image file or a folder of images")
    p.add_argument("-o", "--output", required=True, help="output folder for the 4x PNGs")
    m = p.add_argument_group("model")
    m.add_argument("--preset", choices=["tiny", "sd21"],
                   help="model preset (default: the --ckpt's own, else tiny); a --ckpt of another preset is refused")
    m.add_argument("--backend", choices=BACKENDS,
                   help="default fp32; fakequant when --config names PassionSR's calibrated parameters")
    m.add_argument("--weights", help="FP weights: project .safetensors, diffusers folder or SD single-file checkpoint")
    m.add_argument("--lora", help="OSEDiff LoRA file to merge into the weights")
    m.add_argument("--random-weights", type=int, metavar="SEED", help="seeded random weights (benchmarking only)")
    m.add_argument("--ckpt", help="calibrated checkpoint (path, or bundled name such as tiny-w8a8) for --backend fakequant")
    m.add_argument("--config", default="w8a8",
                   help="quantization config when no --ckpt is given: w8a8, w6a6, w8a8-unet, w6a6-unet or a YAML file; "
                        "a PassionSR inference YAML whose blocks name quant_ckpt runs PassionSR's model, imported")
    m.add_argument("--device", default="auto",
                   help="where the PyTorch pipelines (fp32, fp16, fakequant) run: auto (the GPU when there is one), cpu, "
                        "cuda or cuda:N; an artifact runs where its target runs")
    m.add_argument("--model", metavar="DIR", help="an artifact directory written by passion-export (replaces --backend)")
    t = p.add_argument_group("tiling and colour")
    t.add_argument("--tile-overlap", type=int, metavar="N",
                   help="overlap of the UNet's latent tiles in latent pixels (default: half the model's tile)")
    t.add_argument("--vae-tile", default="auto", metavar="auto|off|N|ENC,DEC",
                   help="VAE encoder/decoder tile side in latent pixels; auto (default) is PassionSR's 1024 px encoder and "
                        "224-latent decoder tiles for SD, scaled to the model's UNet tile (tiny: 64 and 112); an image that "
                        "fits in one tile runs untiled, a smaller N forces tiling; off runs the VAE on the whole image")
    t.add_argument("--vae-overlap", type=int, metavar="N", help="overlap of VAE tiles in latent pixels (default: a quarter tile)")
    t.add_argument("--batch", type=int, default=1, metavar="N", help="tiles stacked into one call of a component (default 1)")
    t.add_argument("--color-fix", default=DEFAULT_COLOR_FIX, choices=COLOR_FIXES,
                   help=f"colour correction against the bicubic-upscaled LR, as OSEDiff/PassionSR offer (default "
                        f"{DEFAULT_COLOR_FIX}, OSEDiff's): adain matches per-channel mean and std, wavelet takes the LR's "
                        "low frequencies, none keeps the model's output")
    o = p.add_argument_group("inputs and outputs")
    o.add_argument("--overwrite", action="store_true", help="rewrite outputs that already exist (default: keep them, skip)")
    o.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse LR images over N pixels, by name (default {DEFAULT_MAX_PIXELS}; 0: no limit)")
    e = p.add_argument_group("metrics against ground truth")
    e.add_argument("--hr", metavar="FOLDER", help="HR images with the inputs' file stems (an LR suffix such as x4 or _LR "
                                                   "may differ): PSNR/SSIM on Y (BT.601) and RGB, a CSV and a summary table")
    e.add_argument("--metrics-csv", metavar="PATH", help="where the CSV goes (default OUTPUT/metrics.csv)")
    e.add_argument("--crop-border", type=int, default=0, metavar="N", help="pixels removed on each side before metrics (default 0)")
    c = p.add_argument_group("comparison pictures")
    c.add_argument("--compare", action="store_true",
                   help="write OUTPUT/compare/NAME.png: one crop of LR (nearest) | FP32 | this model | --compare-with | HR")
    c.add_argument("--compare-with", action="append", default=[], metavar="SPEC[,SPEC...]",
                   help="more columns: fp16, fakequant (uses --ckpt/--config), fakequant:CKPT_OR_CONFIG (e.g. "
                        "fakequant:tiny-w6a6) or an artifact DIR; LABEL=SPEC names the column; repeatable")
    c.add_argument("--compare-crop", default="auto", metavar="auto|X,Y,W,H",
                   help="crop in LR pixels (default auto: the most textured window of the LR)")
    c.add_argument("--compare-size", type=int, default=DEFAULT_CROP, metavar="N",
                   help=f"side of the automatic crop in LR pixels (default {DEFAULT_CROP})")
    return p


class UsageError(PassionError):
    """A bad option value; the message says which and why."""


def parse_vae_tile(text: str):
    """--vae-tile's value (serving.spec owns the parsing: passion-serve takes the same flag)."""
    from passion_deploy.serving.spec import parse_vae_tile as parse

    try:
        return parse(text)
    except ValueError as e:
        raise UsageError(str(e)) from None


@dataclass
class CompareSpec:
    spec: str
    label: str | None = None


def parse_compare_specs(values: list[str]) -> list[CompareSpec]:
    specs = []
    for v in values:
        for item in filter(None, (s.strip() for s in v.split(","))):
            label, _, spec = item.rpartition("=") if "=" in item else ("", "", item)
            specs.append(CompareSpec(spec, label or None))
    return specs


class Models:
    """The main model and the comparison columns, Upscalers of the Python API, each loaded on first use."""

    def __init__(self, args):
        self.args = args
        self._main = None
        self._fp32 = None
        self._extra = None

    def main(self):
        if self._main is None:
            from .. import api

            a = self.args
            if a.import_key:
                self._main = api.passionsr_upscaler(a.config, device=a.device)
            elif a.model:  # an artifact runs where its target runs, whatever --device says
                self._main = api.open(a.model)
            else:
                self._main = api.upscaler(a.backend, a.preset, a.ckpt, a.config, a.weights, a.lora, a.random_weights,
                                          device=a.device)
        return self._main

    def fp32(self):
        """FP32 reference: the main model if it is FP32; for a checkpoint or an artifact, the same
        weights with every quantizer off (equal to the FP32 model up to float rounding)."""
        if self._fp32 is None:
            self._fp32 = self.main().fp32_reference(self.args.device)
        return self._fp32

    def extra(self):
        """(label, model) per --compare-with column, the main model first when it is not FP32."""
        if self._extra is None:
            from .. import api

            a = self.args
            cols = [] if self.main().backend == "fp32" else [(self.main().label, self.main())]
            for s in parse_compare_specs(a.compare_with):
                kind, _, arg = s.spec.partition(":")
                if s.spec == "fp32":
                    continue
                if s.spec == "fp16":
                    m = api.upscaler("fp16", a.preset, weights=a.weights, lora=a.lora, random_weights=a.random_weights,
                                     device=a.device)
                elif kind == "fakequant":
                    if api.passionsr_parameters(arg or a.config):
                        m = api.passionsr_upscaler(arg or a.config, device=a.device)
                    elif arg and api.is_checkpoint(arg):
                        m = api.upscaler("fakequant", a.preset, ckpt=arg, weights=a.weights, device=a.device)
                        m.label = f"{m.label} ({Path(arg).stem})"
                    elif arg:
                        m = api.upscaler("fakequant", a.preset, config=arg, weights=a.weights, lora=a.lora,
                                         random_weights=a.random_weights, device=a.device)
                    else:
                        m = api.upscaler("fakequant", a.preset, a.ckpt, a.config, a.weights, a.lora, a.random_weights,
                                         device=a.device)
                elif Path(s.spec).is_dir():
                    m = api.open(s.spec)
                else:
                    raise UsageError(f"--compare-with {s.spec!r}: not fp16, fakequant[:CKPT_OR_CONFIG] or an artifact folder")
                if s.label:
                    m.label = s.label
                cols.append((m.label, m))
            self._extra = cols
        return self._extra


def resolve_model_args(args) -> None:
    """--config naming PassionSR's calibrated parameters (quantize_config.<block>.quant_ckpt) selects
    that model, imported; it is never dropped in favour of another model."""
    from ..api import passionsr_parameters
    from ..devices import resolve_device

    args.device = resolve_device(args.device)  # a DeviceError is a refusal main's wrapper says as it is
    args.import_key = passionsr_parameters(args.config)
    if args.import_key:
        for flag, value in (("--ckpt", args.ckpt), ("--model", args.model), ("--weights", args.weights),
                            ("--lora", args.lora), ("--random-weights", args.random_weights)):
            if value is not None:
                raise UsageError(f"--config {args.config} names PassionSR's calibrated parameters ({args.import_key}) "
                                 f"and the files they go with, so {flag} does not apply; give one or the other")
        if args.backend not in (None, "fakequant"):
            raise UsageError(f"--config {args.config} names PassionSR's calibrated parameters ({args.import_key}), "
                             f"which run with --backend fakequant, not {args.backend}")
        args.backend = "fakequant"
    args.backend = args.backend or "fp32"


def check_tiling(model, tiling) -> None:
    """Refuse overlaps that do not fit the model's (an Upscaler's) tiles (one sentence, before any image runs)."""
    th, tw = model.latent_tile
    if tiling.overlap is not None and not 0 <= tiling.overlap < min(th, tw):
        raise UsageError(f"--tile-overlap {tiling.overlap} must be at least 0 and below the UNet tile {th}x{tw}")
    enc, dec, _ = model.vae_tiles(tiling.vae_tile)
    for name, tile in (("encoder", enc), ("decoder", dec)):
        if tile is not None and tiling.vae_overlap is not None and not 0 <= tiling.vae_overlap < min(tile):
            raise UsageError(f"--vae-overlap {tiling.vae_overlap} must be at least 0 and below the VAE {name} tile "
                             f"{tile[0]}x{tile[1]}")


@refusals("passion-sr")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    resolve_model_args(args)
    return _run(args)


def _check_args(args) -> None:
    if args.batch < 1:
        raise UsageError(f"--batch {args.batch} must be at least 1")
    if args.max_pixels < 0:
        raise UsageError(f"--max-pixels {args.max_pixels} must be 0 (no limit) or positive")
    if args.crop_border < 0:
        raise UsageError(f"--crop-border {args.crop_border} must be 0 or positive")
    if args.compare_size < 1:
        raise UsageError(f"--compare-size {args.compare_size} must be at least 1")


class Reporter:
    """Failures (an input that produced no output) and warnings, one line each as they happen."""

    def __init__(self):
        self.failed: list[str] = []

    def fail(self, msg: str) -> None:
        self.failed.append(msg)
        tqdm.write(f"passion-sr: skipped {msg}", file=sys.stderr)

    @staticmethod
    def warn(msg: str) -> None:
        tqdm.write(f"passion-sr: {msg}", file=sys.stderr)


def _load(what):
    """A model loader's refusal as a usage error: a PassionError (bad checkpoint, config, weights,
    artifact), a loader's plain ValueError, or a missing optional package (ImportError)."""
    try:
        return what()
    except (ValueError, ImportError) as e:
        raise UsageError(str(e)) from None


def _comparison_picture(f, lr, sr, hr, models, run, args, crop_setting, table):
    """The picture's columns (LR | FP32 | main model | --compare-with | HR) as one PIL image;
    compared models' metrics against HR join the table."""
    from ..compare import auto_crop, clip_crop, compose, nearest_upscale
    from ..evaluation import image_metrics_row
    from ..images import quantize_8bit
    from ..metrics import psnr

    main = models.main()
    ref = sr if main.backend == "fp32" else quantize_8bit(run(_load(models.fp32)))
    cols = [("FP32", ref)] + [(label, sr if m is main else quantize_8bit(run(m))) for label, m in _load(models.extra)]
    crop = clip_crop(crop_setting, *lr.shape[-2:]) if crop_setting else auto_crop(lr, args.compare_size)
    columns = [("LR (nearest x4)", f"{lr.shape[-1]}x{lr.shape[-2]} input", nearest_upscale(lr, SCALE))]
    for label, img in cols:
        parts = ["reference" if label == "FP32" else f"{psnr(img, ref):.1f} dB vs FP32"]
        if hr is not None:
            parts.append(f"{psnr(img, hr):.1f} dB vs HR")
            if label != main.label:
                table.add(f.stem, label, image_metrics_row(img, hr, args.crop_border))
        columns.append((label, ", ".join(parts), img))
    if hr is not None:
        columns.append(("HR", "ground truth", hr))
    return compose(columns, crop, SCALE)


def _run(args) -> int:
    from ..api import Tiling
    from ..compare import parse_crop, save_picture
    from ..evaluation import MetricsTable, align_hr, find_hr, hr_index, image_metrics_row
    from ..images import ImageError, list_images, quantize_8bit, read_image, upscale_bicubic, write_png
    from ..io_utils import OutputError, atomic_write_text, real_path, writable_dir

    _check_args(args)
    try:
        crop_setting = parse_crop(args.compare_crop)
    except ValueError as e:
        raise UsageError(f"--compare-crop: {e}") from None
    tiling = Tiling(args.tile_overlap, parse_vae_tile(args.vae_tile), args.vae_overlap, args.batch)
    max_pixels = args.max_pixels or None

    src, out = Path(args.input), Path(args.output)
    if not src.exists():
        print(f"passion-sr: {src}: no such file or folder", file=sys.stderr)
        return 2
    try:  # an output folder it cannot write is refused now, not after the model ran on every image
        writable_dir(out, "-o")
        if args.compare:
            writable_dir(out / "compare", "-o")
    except OutputError as e:
        print(f"passion-sr: {e}", file=sys.stderr)
        return 2
    files = list_images(src)
    if not files:
        print(f"passion-sr: {src}: no images found (looked for .png/.jpg/.jpeg/.bmp/.tif/.webp)", file=sys.stderr)
        return 2
    hr_files = None
    if args.hr:
        if not Path(args.hr).is_dir():
            print(f"passion-sr: {args.hr}: the --hr folder does not exist", file=sys.stderr)
            return 2
        hr_files = hr_index(Path(args.hr))
    csv_path = Path(args.metrics_csv) if args.metrics_csv else out / "metrics.csv"

    models = Models(args)
    report = Reporter()
    table = MetricsTable()
    written = skipped = pictures = 0
    seen: dict[Path, Path] = {}
    announced = False
    t0 = time.perf_counter()
    try:
        for f in tqdm(files, desc="super-resolving", unit="img", disable=len(files) < 2):
            target = out / f"{f.stem}.png"
            picture = out / "compare" / f"{f.stem}.png"
            if real_path(target) in seen:
                report.fail(f"{f}: its output {target} is also the output of {seen[real_path(target)].name}; "
                            "rename one of them")
                continue
            seen[real_path(target)] = f
            if real_path(target) == real_path(f):
                report.fail(f"{f}: its output would overwrite the input; choose another output folder")
                continue
            need_sr = args.overwrite or not target.exists()
            need_pic = args.compare and (args.overwrite or not picture.exists())
            hr_path = find_hr(hr_files, f) if hr_files is not None else None
            if hr_files is not None and hr_path is None:
                report.warn(f"{f}: no HR image matches its name in {args.hr}; no metrics for it")
            if not (need_sr or need_pic or hr_path):
                skipped += 1  # finished, and nothing asks to look at it again
                continue
            try:
                lr = read_image(f, max_pixels)
            except ImageError as e:
                report.fail(str(e))
                continue
            if not announced and (need_sr or need_pic):
                main_model = _load(models.main)
                check_tiling(main_model, tiling)
                if main_model.fixed_vae_latent_tile is not None and args.vae_tile != "auto":
                    th, tw = main_model.fixed_vae_latent_tile
                    tqdm.write(f"passion-sr: --vae-tile ignored: this model's VAE runs on fixed {th}x{tw} latent tiles")
                tqdm.write(f"passion-sr: {main_model.description}")
                announced = True

            def run(model):
                return model.upscale_tensor(lr, tiling, args.color_fix)

            # the main output: computed and written, or the finished one read back
            try:
                if need_sr:
                    sr = run(models.main())
                    try:
                        write_png(target, sr)
                    except OSError as e:
                        report.fail(f"{target}: cannot write the output ({e.__class__.__name__}: {e})")
                        continue
                    written += 1
                    sr = quantize_8bit(sr)  # judge what was written
                else:
                    skipped += 1
                    sr = read_image(target)
                    if sr.shape[-2:] != (lr.shape[-2] * SCALE, lr.shape[-1] * SCALE):
                        report.warn(f"{target}: the existing output is not 4x its input {f.name}; rerun with --overwrite")
                        continue
            except ImageError as e:
                report.fail(f"{e} (an existing output; rerun with --overwrite)")
                continue
            except (RuntimeError, ValueError, MemoryError, OSError) as e:
                report.fail(f"{f}: super-resolution failed ({e.__class__.__name__}: {e})")
                continue

            hr = None
            if hr_path is not None:
                try:
                    hr = read_image(hr_path, max_pixels * SCALE * SCALE if max_pixels else None)
                    hr_full = hr.shape
                    hr = align_hr(hr, tuple(sr.shape[-2:]), SCALE)
                    if hr is None:
                        report.warn(f"{hr_path}: HR is {hr_full[-1]}x{hr_full[-2]} but the 4x output of {f.name} is "
                                    f"{sr.shape[-1]}x{sr.shape[-2]}; no metrics for it")
                except ImageError as e:
                    report.warn(f"{e}; no metrics for {f.name}")
                if hr is not None:
                    table.add(f.stem, models.main().label, image_metrics_row(sr, hr, args.crop_border))
                    bicubic = quantize_8bit(upscale_bicubic(lr, SCALE))
                    table.add(f.stem, "bicubic", image_metrics_row(bicubic, hr, args.crop_border))

            if need_pic:
                try:
                    pic = _comparison_picture(f, lr, sr, hr, models, run, args, crop_setting, table)
                except UsageError:
                    raise
                except (RuntimeError, ValueError, MemoryError) as e:
                    report.fail(f"{f}: the comparison models failed ({e.__class__.__name__}: {e})")
                    continue
                try:
                    save_picture(picture, pic)
                    pictures += 1
                except OSError as e:
                    report.fail(f"{picture}: cannot write the comparison picture ({e.__class__.__name__}: {e})")
    except KeyboardInterrupt:
        print(f"\npassion-sr: interrupted after {written} written; every finished output is complete, "
              "rerun the same command to continue", file=sys.stderr)
        return 130

    secs = time.perf_counter() - t0
    if table.rows:
        atomic_write_text(csv_path, table.csv_text())
        print(f"passion-sr: metrics vs HR{f' (border {args.crop_border} px cropped)' if args.crop_border else ''}, "
              f"means over images, written to {csv_path}:")
        print(table.summary())
    print(f"passion-sr: {written} written to {out}, {skipped} already there (kept; --overwrite rewrites), "
          f"{len(report.failed)} failed" + (f", {pictures} comparison pictures in {out / 'compare'}" if args.compare else "")
          + f" ({secs:.1f} s)")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
