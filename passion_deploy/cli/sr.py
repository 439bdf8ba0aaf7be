"""passion-sr: 4x super-resolution of an image or a folder with a chosen backend."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm


def build_parser() -> argparse.ArgumentParser:
    from ..runner import BACKENDS

    p = argparse.ArgumentParser(prog="passion-sr", description=__doc__)
    p.add_argument("-i", "--input", required=True, help="an image file or a folder of images")
    p.add_argument("-o", "--output", required=True, help="output folder for the 4x PNGs")
    p.add_argument("--preset", default="tiny", choices=["tiny", "sd21"])
    p.add_argument("--backend", default="fp32", choices=BACKENDS)
    p.add_argument("--weights", help="FP weights: project .safetensors, diffusers folder or SD single-file checkpoint")
    p.add_argument("--lora", help="OSEDiff LoRA file to merge into the weights")
    p.add_argument("--random-weights", type=int, metavar="SEED", help="seeded random weights (benchmarking only)")
    p.add_argument("--ckpt", help="calibrated checkpoint (path, or bundled name such as tiny-w8a8) for --backend fakequant")
    p.add_argument("--config", default="w8a8",
                   help="quantization config when no --ckpt is given: w8a8, w6a6, w8a8-unet, w6a6-unet or a YAML file")
    p.add_argument("--model", metavar="DIR", help="an artifact directory written by passion-export (replaces --backend)")
    p.add_argument("--overwrite", action="store_true", help="rewrite outputs that already exist")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..images import ImageError, list_images, read_image, write_png
    from ..models import WeightsError
    from ..runner import load_model, super_resolve

    src, out = Path(args.input), Path(args.output)
    if not src.exists():
        print(f"passion-sr: {src}: no such file or folder", file=sys.stderr)
        return 2
    files = list_images(src)
    if not files:
        print(f"passion-sr: {src}: no images found (looked for .png/.jpg/.jpeg/.bmp/.tif/.webp)", file=sys.stderr)
        return 2
    try:
        model = load_model(args.preset, args.backend, args.weights, args.lora, args.random_weights, args.ckpt, args.config,
                           model_dir=args.model)
    except (CheckpointError, ConfigError, WeightsError, ValueError) as e:
        print(f"passion-sr: {e}", file=sys.stderr)
        return 2
    print(f"passion-sr: {model.description}")
    written, skipped, failed = 0, 0, []
    t0 = time.perf_counter()
    for f in tqdm(files, desc="super-resolving", unit="img", disable=len(files) < 2):
        target = out / f"{f.stem}.png"
        if target.exists() and not args.overwrite:
            skipped += 1
            continue
        try:
            lr = read_image(f)
        except ImageError as e:
            failed.append(str(e))
            tqdm.write(f"skipped {e}", file=sys.stderr)
            continue
        write_png(target, super_resolve(model, lr))
        written += 1
    secs = time.perf_counter() - t0
    print(f"passion-sr: {written} written to {out}, {skipped} already there, {len(failed)} failed ({secs:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
