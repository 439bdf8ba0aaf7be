"""The statistics pass (spec sections 2, 3 and 5.1): initialise every quantizer and LET scale.

Two sweeps over the calibration batches, without gradients:
1. LET and attention scales follow their init formula (first batch sets, then EMA 0.1) while
   weight quantizers track the min/max of the current scaled weight and activation
   quantizers the min/max of the current batch, so the model runs quantized as it calibrates;
2. with the scales frozen, activation ranges restart and follow the EMA (first batch, then
   x_min <- 0.95 x_min + 0.05 batch_min) over the same batches, so the final ranges describe
   the activations of the final scales, and weight ranges are set once from the final W*s.
"""
from __future__ import annotations

from typing import Iterable

import torch
from tqdm import tqdm

from ..quant.wrap import quantizers, set_observers


def _run(pipe, batches, desc: str, progress: bool) -> None:
    for lr_up in tqdm(batches, desc=desc, leave=False, disable=not progress):
        pipe(lr_up)


@torch.no_grad()
def statistics_pass(pipe, batches: Iterable[torch.Tensor], progress: bool = True) -> None:
    """Initialise the fake-quant pipeline `pipe` from calibration batches (B x 3 x H x W in [0, 1])."""
    batches = list(batches)
    if not batches:
        raise ValueError("the statistics pass needs at least one calibration batch")
    sizes = {tuple(b.shape[-2:]) for b in batches}
    if len(sizes) != 1:
        raise ValueError(f"calibration batches must share one size (attention scales are per token), got {sorted(sizes)}")
    (hh, ww), = sizes
    # the UNet is now tied to this latent tile (see models/tiling.py)
    pipe.latent_tile = (hh // pipe.vae_factor, ww // pipe.vae_factor)
    modules = [pipe.unet, pipe.vae]
    try:
        for m in modules:
            set_observers(m, act="minmax", weight="minmax", let=True)
        _run(pipe, batches, "statistics 1/2 (LET scales)", progress)
        for m in modules:
            for _, q in quantizers(m):
                if q.channels is None:
                    q.initialized.fill_(False)  # activation and bias ranges restart under the final scales
            set_observers(m, act="ema", weight="minmax", let=False)
        _run(pipe, batches, "statistics 2/2 (ranges)", progress)
    finally:
        for m in modules:
            set_observers(m, act=None, weight=None, let=False)
