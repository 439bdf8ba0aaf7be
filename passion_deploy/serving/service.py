"""The served model without Triton: request tensors in, 4x uint8 images or one-sentence refusals out.

A request carries either `image` (uint8, N x H x W x 3: N images of one size) or `encoded`
(N image files' bytes: PNG, JPEG, ...). Each request is checked on its own; a bad one (empty,
over the pixel budget, not decodable, both or neither input) becomes a BadRequest naming the
problem, and the others of the same Triton batch run as if it had not come. Wrong dtype and
rank never get here: Triton refuses them against the model config first.

The images of all good requests run concurrently, one thread each, through passion-sr's own
super_resolve on a BatchedRuntime, so their tiles meet in stacked component calls
(batcher.py); each output is bit-identical to passion-sr's for the same input and settings.
"""
from __future__ import annotations

from ..errors import PassionError
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..images import ImageError
from ..runner import SRModel
from .batcher import BatchedRuntime, TileBatcher, exact_batch
from .spec import SRSettings, array_image, decode_image, sr_uint8

SCALE = 4


class BadRequest(PassionError):
    """A request the model refuses; the message is one sentence for the client."""


@dataclass
class Request:
    """One request's images (3 x H x W float tensors, one size), or why it was refused."""

    images: list[torch.Tensor] | None = None
    error: str | None = None


class SRService:
    def __init__(self, model: SRModel, settings: SRSettings, max_batch: int = 4):
        self.model = model
        self.settings = settings
        self.max_batch = exact_batch(model.pipe, max_batch)
        self.last_stats = None  # the last batch's TileBatcher.stats (tests, the benchmark)

    # -- checking ------------------------------------------------------------------------
    def parse(self, image: np.ndarray | None, encoded: np.ndarray | None) -> Request:
        try:
            return Request(images=self._images(image, encoded))
        except BadRequest as e:
            return Request(error=str(e))

    def _images(self, image, encoded) -> list[torch.Tensor]:
        if (image is None) == (encoded is None):
            raise BadRequest("send exactly one input: 'image' (uint8 N x H x W x 3) or 'encoded' (image file bytes)")
        budget = self.settings.budget
        if image is not None:
            if image.dtype != np.uint8 or image.ndim != 4 or image.shape[-1] != 3:
                raise BadRequest(f"'image' must be uint8 N x H x W x 3, got {image.dtype} of shape {list(image.shape)}")
            n, h, w, _ = image.shape
            if n == 0 or h == 0 or w == 0:
                raise BadRequest(f"the image is empty ({w}x{h} pixels, {n} image(s))")
            if budget and h * w > budget:
                raise BadRequest(f"refused, {w}x{h} = {w * h:,} pixels is over the pixel budget of {budget:,} "
                                 "(passion-serve --max-pixels sets it)")
            return [array_image(image[i]) for i in range(n)]
        blobs = [b for b in np.asarray(encoded, dtype=object).reshape(-1)]
        if not blobs:
            raise BadRequest("'encoded' holds no image")
        images = []
        for i, b in enumerate(blobs):
            name = "the encoded image" if len(blobs) == 1 else f"encoded image {i}"
            if not isinstance(b, (bytes, bytearray)) or len(b) == 0:
                raise BadRequest(f"{name} is empty (0 bytes)")
            try:
                images.append(decode_image(bytes(b), name, budget))
            except ImageError as e:
                raise BadRequest(str(e).replace("(raise --max-pixels to process it in tiles)",
                                                "(passion-serve --max-pixels sets it)")) from None
        if len({tuple(t.shape) for t in images}) > 1:
            sizes = ", ".join(f"{t.shape[-1]}x{t.shape[-2]}" for t in images)
            raise BadRequest(f"the images of one request must have one size to come back as one tensor, got {sizes}; "
                             "send them in separate requests")
        return images

    # -- running ------------------------------------------------------------------------
    def run(self, requests: list[Request]) -> list[np.ndarray | Exception]:
        """Each good request's N x 4H x 4W x 3 uint8 output, or the exception its images raised."""
        jobs = [(i, img) for i, r in enumerate(requests) if r.error is None for img in r.images]
        batcher = TileBatcher(self.model.pipe, self.max_batch)
        model = SRModel(BatchedRuntime(self.model.pipe, batcher), self.model.backend, self.model.latent_tile,
                        self.model.description, self.model.label)

        def one(img: torch.Tensor) -> np.ndarray:
            with batcher.participant():
                return sr_uint8(model, img, self.settings, batch=self.max_batch)

        outs: dict[int, list[np.ndarray]] = {}
        failed: dict[int, Exception] = {}
        if jobs:
            with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="passion-sr") as pool:
                futures = [(i, pool.submit(one, img)) for i, img in jobs]
                for i, f in futures:
                    try:
                        outs.setdefault(i, []).append(f.result())
                    except Exception as e:  # this request fails; the others still answer
                        failed.setdefault(i, e)
        self.last_stats = batcher.stats
        results: list[np.ndarray | Exception] = []
        for i, r in enumerate(requests):
            if r.error is not None:
                results.append(BadRequest(r.error))
            elif i in failed:
                results.append(failed[i])
            else:
                results.append(np.stack(outs[i]))
        return results
