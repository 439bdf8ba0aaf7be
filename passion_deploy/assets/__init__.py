"""Data shipped inside the package (context embedding, tiny weights, calibrated checkpoints, photos)."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def path(name: str) -> Path:
    return ROOT / name


def exists(name: str) -> bool:
    return (ROOT / name).is_file()
