"""The installed package's layout, laid out as links, for what reads folders instead of importing.

setup.py's package_dir installs the top-level export/, kernels/ and benchmarks/ folders as
passion_deploy.export, .kernels and .benchmarks. An install (editable too) maps them; two users of
a checkout cannot rely on one: import-linter walks folders, and the GPU machine runs the checkout
without installing it. Both get a folder where passion_deploy/ holds links to the checkout's
files with the three folders linked in, under the names the code imports them by.
"""
from __future__ import annotations

import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
MAPPED_INTO_PACKAGE = ("export", "kernels", "benchmarks")  # setup.py's package_dir


def lay_out_installed_package(dest: str | Path, checkout: str | Path = CHECKOUT) -> Path:
    """dest/passion_deploy as the installer lays it out (dest is created, or emptied of a previous
    layout); returns dest, the folder to put on PYTHONPATH."""
    dest, checkout = Path(dest), Path(checkout)
    pkg = dest / "passion_deploy"
    if pkg.is_dir():
        for link in pkg.iterdir():
            link.unlink()
        pkg.rmdir()
    pkg.mkdir(parents=True)
    for entry in (checkout / "passion_deploy").iterdir():
        (pkg / entry.name).symlink_to(entry)
    for top in MAPPED_INTO_PACKAGE:
        (pkg / top).symlink_to(checkout / top)
    return dest


if __name__ == "__main__":  # python -m passion_deploy.layout DEST (the Makefile's gpu-check)
    print(lay_out_installed_package(sys.argv[1]))
