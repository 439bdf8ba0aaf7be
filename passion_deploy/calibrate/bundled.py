"""The calibration set of the bundled tiny checkpoints (`python -m passion_deploy.cli.bundled` replays them).

Calibration images are HR crops of the tiny model's *training* photos (scikit-image, `train`
extra), never the held-out photos the reports evaluate on. Each checkpoint is calibrated by
`passion-calibrate` from the PassionSR YAML in assets/configs/tiny-<cfg>.yaml; W6A6 also runs
the ablation.
"""
from __future__ import annotations

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
