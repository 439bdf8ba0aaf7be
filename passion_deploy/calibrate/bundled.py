"""Reproduce the bundled tiny checkpoints: `python -m passion_deploy.calibrate.bundled [w8a8|w6a6|all]`.

Calibration images are HR crops of the tiny model's *training* photos (scikit-image, `train`
extra), never the held-out photos the reports evaluate on. Each checkpoint is calibrated by
`passion-calibrate` from the PassionSR YAML in assets/configs/tiny-<cfg>.yaml; W6A6 also runs
the ablation.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .. import assets
from ..io_utils import atomic_path

CALI_DIR = Path("build/cali-tiny")  # the configs' cali_img_path (relative to the working directory)
CROPS_PER_PHOTO = 3
CROP = 128  # the configs' process_size: latent tile 32 for the tiny VAE's factor 4


def write_calibration_set(folder: Path = CALI_DIR, seed: int = 0) -> list[Path]:
    from ..models.train_tiny import TRAIN_PHOTOS, load_photo

    rng = np.random.default_rng(seed)
    out = []
    hr = folder / "hr"
    hr.mkdir(parents=True, exist_ok=True)
    for name in TRAIN_PHOTOS:
        photo = load_photo(name)
        for i in range(CROPS_PER_PHOTO):
            y = int(rng.integers(0, photo.shape[0] - CROP + 1))
            x = int(rng.integers(0, photo.shape[1] - CROP + 1))
            path = hr / f"{name}_{i}.png"
            with atomic_path(path) as tmp:
                Image.fromarray(photo[y:y + CROP, x:x + CROP], "RGB").save(tmp, format="PNG")
            out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    from ..cli.calibrate import main as calibrate

    p = argparse.ArgumentParser(prog="python -m passion_deploy.calibrate.bundled", description=__doc__)
    p.add_argument("which", nargs="?", default="all", choices=["w8a8", "w6a6", "all"])
    args = p.parse_args(argv)
    files = write_calibration_set()
    print(f"calibration set: {len(files)} crops of {CROP} px in {CALI_DIR}")
    for cfg in (["w8a8", "w6a6"] if args.which == "all" else [args.which]):
        cmd = ["--config", str(assets.path(f"configs/tiny-{cfg}.yaml")), "--preset", "tiny",
               "--out", str(assets.path(f"tiny/tiny-{cfg}.safetensors"))]
        if cfg == "w6a6":
            cmd.append("--ablation")
        rc = calibrate(cmd)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
