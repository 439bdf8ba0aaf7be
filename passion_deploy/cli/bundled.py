"""Reproduce the bundled tiny checkpoints: `python -m passion_deploy.cli.bundled [w8a8|w6a6|all]`.

Writes the calibration set (calibrate/bundled.py: HR crops of the tiny model's training photos),
then runs passion-calibrate on each PassionSR YAML in assets/configs/tiny-<cfg>.yaml as a user
would; W6A6 also runs the ablation.
"""
from __future__ import annotations

import argparse
import sys

from .. import assets
from ..calibrate.bundled import CALI_DIR, CROP, write_calibration_set
from .calibrate import main as calibrate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m passion_deploy.cli.bundled", description=__doc__)
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
