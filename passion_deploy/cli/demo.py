"""passion-demo: the embedded default job. 4x SR of a bundled real photo with the tiny model,
fake-quant W8A8 against FP32, with a short summary."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import refusals


@refusals("passion-demo")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="passion-demo", description=__doc__)
    p.add_argument("-o", "--output", default="build/demo", help="folder for the LR/bicubic/FP32/W8A8 PNGs")
    p.add_argument("--ckpt", default=None, help="calibrated checkpoint (default: bundled tiny-w8a8, else a statistics pass)")
    args = p.parse_args(argv)

    import torch

    from ..calibrate.data import bundled_photos, pair_from_hr
    from ..checkpoint import BUNDLED
    from .. import assets
    from ..api import upscaler
    from ..images import downscale_bicubic, psnr, read_image, write_png

    torch.set_num_threads(max(1, torch.get_num_threads()))
    photos = bundled_photos()
    if not photos:
        print("passion-demo: no photos are bundled in this installation", file=sys.stderr)
        return 2
    photo = photos[0]
    hr = read_image(photo)
    hr = hr[:, : hr.shape[1] // 16 * 16, : hr.shape[2] // 16 * 16]
    lr = downscale_bicubic(hr, 4)
    bicubic = pair_from_hr(hr)[0]
    ckpt = args.ckpt or ("tiny-w8a8" if assets.exists(BUNDLED["tiny-w8a8"]) else None)
    out = Path(args.output)

    rows = []
    results = {}
    for backend in ("fp32", "fakequant"):
        # on the CPU, as the summary says; the photo shown is left out of a statistics calibration
        model = upscaler(backend, "tiny", ckpt=ckpt if backend == "fakequant" else None, device="cpu", progress=False,
                         calib_exclude=(photo.stem,))
        # the model's own output (no colour fix): the PSNR columns compare models, not a post-process
        model.upscale_tensor(lr, color_fix="none")  # warm-up
        t0 = time.perf_counter()
        sr = model.upscale_tensor(lr, color_fix="none")
        secs = time.perf_counter() - t0
        results[backend] = sr
        write_png(out / f"{photo.stem}_{backend}.png", sr)
        rows.append((model.description, psnr(sr, hr), secs))
    write_png(out / f"{photo.stem}_lr.png", lr)
    write_png(out / f"{photo.stem}_bicubic.png", bicubic)
    write_png(out / f"{photo.stem}_hr.png", hr)

    print(f"\npassion-demo: 4x super-resolution of bundled photo '{photo.stem}' "
          f"({lr.shape[2]}x{lr.shape[1]} -> {hr.shape[2]}x{hr.shape[1]}), tiny model, CPU")
    print(f"  {'method':<72} {'PSNR vs HR':>10} {'time':>8}")
    print(f"  {'bicubic':<72} {psnr(bicubic, hr):>7.2f} dB {'':>8}")
    for desc, db, secs in rows:
        print(f"  {desc[:72]:<72} {db:>7.2f} dB {secs:>6.2f} s")
    print(f"  fake-quant vs FP32 output: {psnr(results['fakequant'], results['fp32']):.2f} dB PSNR")
    print(f"  images written to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
