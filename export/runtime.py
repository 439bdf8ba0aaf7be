"""Run an exported ONNX artifact as a one-step SR pipeline (the interface of OneStepSR that
the runner, verification and benchmarks use: encode, unet_eps, denoise, decode)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from . import artifact


def session(path_or_bytes, threads: int | None = None, plain_qdq: bool = False):
    """An ONNX Runtime CPU session. `plain_qdq` runs DequantizeLinear -> Conv/Gemm/MatMul as
    written (dequantize, then a float op) instead of fusing them into ONNX Runtime's int8
    kernels, whose u8s8 products saturate at 16 bits on CPUs without VNNI (int_algebra): that
    is how a TensorRT Q/DQ graph's meaning is checked on a CPU."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if plain_qdq:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    src = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


class OnnxSR:
    """A OneStepSR-like pipeline backed by ONNX Runtime sessions of an artifact directory.

    Components the artifact does not contain run on the fake-quant checkpoint it was exported
    from (loaded on first use)."""

    backend = "onnx"
    target = "onnx"
    plain_qdq = False  # see session(): the trt target's Q/DQ graphs run unfused

    def __init__(self, model_dir: str | os.PathLike, threads: int | None = None, load_sessions: bool = True,
                 check_isa: bool = True):
        self.dir = Path(model_dir)
        self.manifest = artifact.read_manifest(self.dir)
        artifact.require_target(self.manifest, self.target, str(self.dir))
        if check_isa:
            artifact.check_cpu(self.manifest, str(self.dir))
        p = self.manifest["pipeline"]
        self.scaling_factor = p["scaling_factor"]
        self.sqrt_a, self.sqrt_1ma = p["sqrt_alpha"], p["sqrt_one_minus_alpha"]
        self.vae_factor, self.size_multiple = p["vae_factor"], p["size_multiple"]
        self.latent_tile = tuple(p["latent_tile"])
        self.threads = threads
        self.sessions = {c: session(self.dir / info["onnx"], threads, self.plain_qdq)
                         for c, info in self.manifest["components"].items()} if load_sessions else {}
        self._fallback = None

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def description(self) -> str:
        m = self.manifest
        parts = ", ".join(sorted(self.sessions))
        return f"ONNX Runtime {m['quant_config_name']} ({m['isa']}) from {self.dir} [{parts}]"

    def fallback(self):
        if self._fallback is None:
            self._fallback = artifact.load_source_pipeline(self.manifest)
        return self._fallback

    def reference_pipeline(self):
        """The fake-quant model --verify compares against (the fallback: these sessions do not modify it)."""
        return self.fallback()

    def run_with_layers(self, component: str, x: torch.Tensor, names: list[str]) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        """The component's output on x (this artifact's session) and the outputs of the named
        quantized layers / attention cores: the IR lowered again with those values as extra
        graph outputs (the same lowering, but a separate model, so the artifact runs unchanged)."""
        from .irfile import load_ir
        from .onnx_lower import PROBE_PREFIX

        g = load_ir(self.dir / self.manifest["components"][component]["ir"])
        value = {n.name: n.outputs[0] for n in g.nodes if n.name in names}
        model = self.lower(g, [value[n] for n in names])
        sess = session(model.SerializeToString(), plain_qdq=self.plain_qdq)
        del model
        outs = sess.run([PROBE_PREFIX + value[n] for n in names], {list(g.inputs)[0]: x.numpy(), **self.extra_feeds(component)})
        return self._run(component, list(g.inputs)[0], x), dict(zip(names, outs))

    def lower(self, g, probes: list[str]):
        """The artifact's lowering of IR graph g, with `probes` as extra outputs."""
        from .onnx_lower import lower_graph

        return lower_graph(g, self.manifest["isa"], probes=probes)

    def extra_feeds(self, comp: str) -> dict:
        """Inputs of a UNet exported with --dynamic-constants: t = 999 and the stored context."""
        inputs = self.manifest["components"][comp]["inputs"]
        feeds = {}
        if "timestep" in inputs:
            feeds["timestep"] = np.array([self.manifest["pipeline"]["timestep"]], np.float32)
        if "context" in inputs:
            from safetensors.numpy import load_file

            feeds["context"] = load_file(str(self.dir / "context.safetensors"))["context"]
        return feeds

    def _run(self, comp: str, name: str, x: torch.Tensor) -> torch.Tensor:
        sess = self.sessions[comp]
        extra = self.extra_feeds(comp)
        outs = [sess.run(None, {name: x[i:i + 1].detach().float().cpu().numpy(), **extra})[0] for i in range(x.shape[0])]
        return torch.from_numpy(np.concatenate(outs, axis=0))

    def encode(self, lr_up: torch.Tensor) -> torch.Tensor:
        if "vae_encoder" not in self.sessions:
            with torch.no_grad():
                return self.fallback().encode(lr_up)
        return self._run("vae_encoder", "image", lr_up)

    def unet_eps(self, z: torch.Tensor) -> torch.Tensor:
        if "unet" not in self.sessions:
            with torch.no_grad():
                return self.fallback().unet_eps(z)
        if tuple(z.shape[-2:]) != self.latent_tile:
            raise ValueError(f"{self.dir}: the UNet runs on {self.latent_tile[0]}x{self.latent_tile[1]} latent tiles, got {tuple(z.shape[-2:])}")
        return self._run("unet", "latent", z)

    def z0_from_eps(self, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        # the reference computes this step in float64 (pipeline.OneStepSR.z0_from_eps)
        return ((z.double() - self.sqrt_1ma * eps.double()) / self.sqrt_a).to(z.dtype)

    def denoise(self, z: torch.Tensor) -> torch.Tensor:
        return self.z0_from_eps(z, self.unet_eps(z))

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        if "vae_decoder" not in self.sessions:
            with torch.no_grad():
                return self.fallback().decode(z0)
        return self._run("vae_decoder", "latent", z0)

    def __call__(self, lr_up: torch.Tensor) -> torch.Tensor:
        return self.decode(self.denoise(self.encode(lr_up)))
