"""Serving and scale-out on existing engines: NVIDIA Triton Inference Server (through PyTriton's
bundled server) for requests, Ray for folders of images.

    spec.py          what runs and how (ModelSpec, SRSettings): one description the Triton model,
                     the Ray workers and the CLIs share; images in and out exactly as passion-sr
                     reads and writes them
    batcher.py       TileBatcher: component calls of concurrent images stacked into one call
    service.py       SRService: request tensors -> checked images -> 4x uint8 images, each bad
                     request refused in one sentence (no Triton needed; what the model runs)
    tritonserver_model.py  Triton Inference Server's Python-backend model around SRService (the
                     server, not the `triton` export target of Triton kernels)
    tritonserver_z0.py     the z0 step of --write-repo's tile ensemble, a Python-backend model
    repository.py    Triton model repositories: the one passion-serve serves, and --write-repo's
                     (component models, an ensemble, the whole-image model) for a full Triton
    server.py        PyTriton's Triton Inference Server on a repository: libpython, supervision
                     (a dead server is restarted with backoff), SIGTERM drain
    guard.py         the public HTTP, gRPC and metrics endpoints: every request checked (size,
                     declared shapes, JSON re-encoded as binary) before Triton, which listens on
                     loopback only
    ray_batch.py     a folder or a list of images over Ray actors, each loading the model once

Every path runs passion-sr's own code (runner.super_resolve on an SR runtime), so a served or
Ray-processed image is bit-identical to passion-sr's output for the same input and tiling.
"""
