"""The SR runtime contract: one-step SR, whatever runs its three components.

    SRRuntime        encode -> unet_eps -> z0 -> decode on host tensors; the pipeline constants,
                     device placement and the per-call conversions. A runtime supplies only
                     `component_fn(name)`: the component as a function of a tensor already on
                     its device in its compute dtype (what benchmarks time).
    PipelineSR       a PyTorch OneStepSR (FP32, FP16 or fake-quant) behind the same contract.
    ArtifactRuntime  an exported artifact directory: the manifest read and checked, its
                     constants, the UNet's tile check, the fake-quant pipeline it was exported
                     from (the reference --verify judges it against, and the fallback for
                     components it does not contain). Each target's runtime derives from it.

passion-sr (runner.super_resolve and models/tiling), --verify and passion-bench take any of
them interchangeably.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from passion_deploy.errors import PassionError
from passion_deploy.models.components import COMPONENTS, component, tile_shapes
from passion_deploy.models.pipeline import z0_from_eps

from . import artifact

ComponentFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class TimingVariant:
    """One way of computing a component, as passion-bench times it next to the others on the same
    input (benchmarks/harness.py). `load` runs inside the warm-up's memory sampling, so what it
    loads (an ONNX Runtime session) counts there; that memory is the GPU allocator's when x is on
    a GPU, else the host's resident set."""

    name: str  # the record's key: int_onnx, trt_int8, triton, torch_fp16, ...
    load: Callable[[], ComponentFn]  # returns the function that is timed
    x: torch.Tensor  # its input, on its device in its dtype
    fields: dict = field(default_factory=dict)  # recorded as given: weight, IR or engine bytes
    onnx_file: Path | None = None  # an ONNX model, also measured alone in a fresh process (measure.fresh_process_peak)


class SRRuntime:
    """One-step SR on host tensors. Subclasses set `backend` and implement `component_fn`."""

    backend = ""
    layer_tables = True  # whether run_layers can give per-layer values (--verify's tables)
    fixed_vae_latent_tile: tuple[int, int] | None = None  # VAE tiles of exactly this size (fixed engines)

    def __init__(self, constants: dict, latent_tile, device: torch.device | str = "cpu",
                 compute_dtype: torch.dtype = torch.float32, dtype: torch.dtype = torch.float32):
        self.scaling_factor = constants["scaling_factor"]
        self.sqrt_a, self.sqrt_1ma = constants["sqrt_alpha"], constants["sqrt_one_minus_alpha"]
        self.vae_factor, self.size_multiple = constants["vae_factor"], constants["size_multiple"]
        self.latent_tile = (int(latent_tile[0]), int(latent_tile[1]))
        self.device = torch.device(device)
        self.compute_dtype = compute_dtype  # what the components compute in
        self.dtype = dtype  # what encode/unet_eps/decode return (on the host)

    @property
    def description(self) -> str:
        return self.backend

    def component_fn(self, name: str) -> ComponentFn:
        raise NotImplementedError

    def tile_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each component's input shape at one latent tile (fixed-shape engines, CUDA graphs)."""
        return tile_shapes(self.latent_tile, self.vae_factor)

    def check_input(self, name: str, x: torch.Tensor) -> None:
        """Refuse an input this runtime cannot take, in one sentence (nothing to check by default)."""

    @torch.no_grad()
    def run(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Component `name` on host tensor x, its result back on the host in `dtype`."""
        self.check_input(name, x)
        out = self.component_fn(name)(x.to(self.device, self.compute_dtype))
        return out.to("cpu", self.dtype)

    def encode(self, lr_up: torch.Tensor) -> torch.Tensor:
        return self.run("vae_encoder", lr_up)

    def unet_eps(self, z: torch.Tensor) -> torch.Tensor:
        return self.run("unet", z)

    def z0_from_eps(self, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return z0_from_eps(z, eps, self.sqrt_a, self.sqrt_1ma)

    def denoise(self, z: torch.Tensor) -> torch.Tensor:
        return self.z0_from_eps(z, self.unet_eps(z))

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        return self.run("vae_decoder", z0)

    def __call__(self, lr_up: torch.Tensor) -> torch.Tensor:
        return self.decode(self.denoise(self.encode(lr_up)))


def pipeline_constants(pipe) -> dict:
    """A OneStepSR's constants, keyed as an artifact manifest's "pipeline" records them."""
    return {"timestep": 999, "scaling_factor": pipe.scaling_factor, "sqrt_alpha": pipe.sqrt_a,
            "sqrt_one_minus_alpha": pipe.sqrt_1ma, "vae_factor": pipe.vae_factor, "size_multiple": pipe.size_multiple}


class PipelineSR(SRRuntime):
    """A PyTorch OneStepSR (FP32, FP16 or fake-quant) as a runtime: it computes and returns in
    its own dtype, on its own device."""

    def __init__(self, pipe, backend: str, latent_tile, description: str = ""):
        p = next(pipe.parameters())
        super().__init__(pipeline_constants(pipe), latent_tile, p.device, p.dtype, p.dtype)
        self.pipe, self.backend = pipe, backend
        self._description = description or backend

    @property
    def description(self) -> str:
        return self._description

    def reference_pipeline(self):
        return self.pipe

    def to(self, device: torch.device | str) -> "PipelineSR":
        """Run on `device` (the pipeline moves; inputs and outputs stay host tensors)."""
        self.pipe.to(device)
        self.device = torch.device(device)
        return self

    def component_fn(self, name: str) -> ComponentFn:
        return component(name).fn(self.pipe)


class ArtifactRuntime(SRRuntime):
    """An artifact of one target: the class's `contract` is that Target (targets/), whose name is
    the runtime's `target` and `backend`. Subclasses implement `artifact_fn(name)` for the
    components the artifact holds; the others run on the fake-quant checkpoint it was exported from."""

    contract = None  # the Target this runtime runs (set by each target's runtime module)

    @property
    def target(self) -> str:
        return self.contract.name

    def __init__(self, model: "str | os.PathLike | artifact.Artifact", device: torch.device | str = "cpu",
                 compute_dtype: torch.dtype = torch.float32):
        self.artifact = artifact.load(model)  # an Artifact passed down is used as it is: no second read
        self.dir = self.artifact.dir
        self.manifest = self.artifact.manifest
        artifact.require_target(self.manifest, self.target, str(self.dir))
        c = self.contract
        self.artifact.require(c.name, c.manifest_needs, c.component_needs)  # refused in one sentence, not a KeyError later
        p = self.manifest["pipeline"]
        super().__init__(p, p["latent_tile"], device, compute_dtype, torch.float32)
        self._source = None
        self.source_weights = (None, None)  # (--weights, --lora) for a source checkpoint without FP weights

    @property
    def backend(self) -> str:
        return self.target

    @property
    def components(self) -> list[str]:
        """The components the artifact itself holds, in export order."""
        return [c for c in COMPONENTS if c in self.manifest["components"]]

    def source_pipeline(self):
        """The fake-quant checkpoint the artifact was exported from (loaded once, on first use)."""
        if self._source is None:
            self._source = artifact.load_source_pipeline(self.manifest, self.dir, *self.source_weights)
        return self._source

    def reference_pipeline(self):
        """The fake-quant model --verify compares against (an unmodified source pipeline)."""
        return self.source_pipeline()

    def artifact_fn(self, name: str) -> ComponentFn:
        raise NotImplementedError

    def once(self, key: tuple, make):
        """What `make()` returned the first time `key` was asked for on this runtime: --verify judges
        probe by probe and layer by layer (export/verify.py), and a component's layer names and each
        layer's cut are built once, not per call."""
        store = self.__dict__.setdefault("_once", {})
        if key not in store:
            store[key] = make()
        return store[key]

    def component_fn(self, name: str) -> ComponentFn:
        if name in self.manifest["components"]:
            return self.artifact_fn(name)
        pipe = self.source_pipeline()  # wherever it is (--verify may have put it on a GPU): inputs go to it
        fn = component(name).fn(pipe)
        return lambda x: fn(x.to(next(pipe.parameters()).device, torch.float32)).to(x.device)

    def constant_feeds(self, name: str, batch: int = 1) -> dict:
        """Inputs of a UNet exported with --dynamic-constants, for a batch of `batch` tiles:
        t = 999 and the stored context (numpy)."""
        import numpy as np

        inputs = self.manifest["components"][name]["inputs"]
        feeds = {}
        if "timestep" in inputs:
            feeds["timestep"] = np.full((batch,), self.manifest["pipeline"]["timestep"], np.float32)
        if "context" in inputs:
            from safetensors.numpy import load_file

            context = load_file(str(self.dir / "context.safetensors"))["context"]
            feeds["context"] = np.ascontiguousarray(np.broadcast_to(context, (batch,) + context.shape[1:]))
        return feeds

    def main_input(self, name: str) -> str:
        return component(name).input

    def check_input(self, name: str, x: torch.Tensor) -> None:
        if name == "unet" and tuple(x.shape[-2:]) != self.latent_tile:
            raise ValueError(f"{self.dir}: the UNet runs on {self.latent_tile[0]}x{self.latent_tile[1]} latent tiles, "
                             f"got {tuple(x.shape[-2:])}")

    # -- passion-bench (benchmarks/harness.py), which opens a runtime with its Target's open_for_timing --
    timing_baselines: tuple[str, ...] = ()  # the float baselines timed next to the artifact (record keys)
    # builds those of timing_baselines the harness does not (it builds fp32_onnx and the PyTorch ones)
    own_baselines: type[RuntimeBaselines] | None = None

    def timing_variants(self, name: str, x: torch.Tensor) -> list[TimingVariant]:
        """Component `name` as the artifact runs it, on host input x: the artifact's own variant
        first (speed-ups are against it), then any other build the artifact holds."""
        raise NotImplementedError(f"{self.dir}: the {self.target} runtime cannot be timed")

    def timing_record(self) -> dict:
        """Top-level fields of a benchmark record about this runtime."""
        return {"runtime": self.description}

    def timing_settings(self) -> dict:
        """How this runtime ran, for the record's settings."""
        return {"device": str(self.device)}


class RuntimeBaselines:
    """Float baselines a target's runtime names and builds itself (ArtifactRuntime.own_baselines):
    what a user of the target's toolkit would run instead of the artifact on the same hardware,
    compiled from the FP32 ONNX files passion-bench lowers from the source checkpoint into
    `onnx_dir` (one `<component>.onnx` each). The harness owns the generic baselines, the timing
    loop and the real-photo data; a target that adds baselines adds them here, in its own folder.

    `photos` is the harness's real-photo data (benchmarks/fidelity.py PhotoData): `calibration(comp)`
    gives a component's inputs on the calibration photos, `calib_names` says which; it is None when
    no baseline in `calibrated` was asked for and no fidelity is scored."""

    needs: dict[str, tuple[str, ...]] = {}  # each baseline built here -> the Python packages it needs
    install_hint = ""  # how to install them, said when one is missing
    calibrated: tuple[str, ...] = ()  # baselines calibrated on real photos: the harness computes those first

    @classmethod
    def require(cls, names) -> None:
        """Refuse, in one sentence, a baseline asked for that this installation cannot build
        (before any work: the FP32 ONNX lowering of a large model takes minutes)."""
        from importlib.util import find_spec

        for name in names:
            for module in cls.needs.get(name, ()):
                if find_spec(module) is None:
                    raise PassionError(f"the {name} baseline needs {module}, which is not installed here: {cls.install_hint}")

    def __init__(self, rt: ArtifactRuntime, onnx_dir: Path, threads: int | None, photos, log):
        self.rt, self.dir, self.threads, self.photos, self.log = rt, onnx_dir, threads, photos, log

    def skipped(self) -> dict[str, str]:
        """Baselines asked for that are not timed here, and why (the record says so)."""
        return {}

    def variant(self, name: str, comp: str, x: torch.Tensor) -> TimingVariant:
        """Baseline `name` of component `comp` on host input x."""
        raise NotImplementedError

    def release(self) -> None:
        """Forget what was cached while building one component's variants (they hold what they need)."""
