"""Run an openvino artifact: its OpenVINO IR in the CPU plugin, in the mode and precision the
manifest records (targets/openvino/__init__.py), checked against the CPU at hand on load.

An int8 or int8_qdq artifact is refused on a CPU without VNNI (its int8 kernels saturate there;
VNNI as oneDNN uses it, artifact.onednn_has_vnni); an int8_narrow one runs everywhere (int8
kernels only where they cannot saturate). Every compiled model is checked to run the precision
the artifact was verified in, a dequant one to hold no int8 primitive, an int8_narrow one none in
its f32 layers (ovcore.check_compiled). Batches run one tile at a time, as the
graphs are exported at batch 1; the VAE runs at any size (one compiled model per size).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ... import artifact
from ...runtime import ArtifactRuntime, TimingVariant
from . import INT8_MODES, KERNELS, MISSING, SATURATES, TARGET, openvino_missing
from .baselines import OpenVinoBaselines


def check_cpu(m: dict, where: str) -> None:
    """The CPU check of the module docstring (the manifest's mode against this CPU's VNNI)."""
    if m["openvino"]["mode"] in INT8_MODES and not artifact.onednn_has_vnni():
        raise artifact.ArtifactError(f"{where}: exported with --ov-mode {m['openvino']['mode']}, which is not exact on this CPU: {SATURATES}; "
                                     "re-export it here with --ov-mode auto (int8_narrow) or dequant")


class OpenVinoSR(ArtifactRuntime):
    contract = TARGET

    def __init__(self, model_dir: str | os.PathLike, threads: int | None = None, check_isa: bool = True, **_):
        super().__init__(model_dir)
        if openvino_missing():
            raise artifact.ArtifactError(f"{self.dir}: {MISSING}")
        if check_isa:
            check_cpu(self.manifest, str(self.dir))
        from . import ovcore

        o = self.manifest["openvino"]
        self.mode, self.precision, self.threads = o["mode"], o["precision"], threads
        self.config = ovcore.compile_config(self.precision, self.mode, threads)
        self.models = {}  # component -> ovcore.StaticModels, read on first use

    def static_models(self, name: str):
        from . import ovcore

        if name not in self.models:
            comp = self.manifest["components"][name]
            xml = self.dir / comp["openvino_xml"]
            self.models[name] = ovcore.StaticModels(
                ovcore.core().read_model(str(xml)), self.config,
                lambda c: ovcore.check_compiled(c, self.mode, self.precision, f"{self.dir}: {name}",
                                                comp.get("openvino_f32_layers")))
        return self.models[name]

    @property
    def description(self) -> str:
        o = self.manifest["openvino"]
        found = [f"{c} {m.found['int8_primitives']}/{m.found['convs_and_matmuls']} int8"
                 for c, m in self.models.items() if m.found]
        ran = {m.found["precision"] for m in self.models.values() if m.found}
        prec = self.precision if not ran or ran == {self.precision} else f"{self.precision} asked, {'/'.join(sorted(ran))} ran"
        kernels = KERNELS.get(self.mode) or "dequant mode (the fake-quant graph: rounding and convs/matmuls in f32)"
        return (f"OpenVINO {o['version'].split('-')[0]} CPU, {kernels}, {prec} precision, {self.manifest['quant_config_name']} "
                f"from {self.dir} [{', '.join(found) if found else ', '.join(self.components)}]")

    def feeds(self, name: str, x: np.ndarray) -> dict:
        return {self.main_input(name): np.ascontiguousarray(x, np.float32), **self.constant_feeds(name)}

    def artifact_fn(self, name: str):
        models = self.static_models(name)

        def run(x: torch.Tensor) -> torch.Tensor:
            xs = x.detach().float().cpu().numpy()
            return torch.from_numpy(np.concatenate([models(self.feeds(name, xs[i:i + 1])) for i in range(xs.shape[0])]))
        return run

    def run_layers(self, name: str, layer_inputs: dict[str, list[list[np.ndarray]]]) -> dict[str, list[np.ndarray]]:
        """Each named quantized layer cut out of the artifact's own OpenVINO model (its input
        tensors made parameters, its output the result), compiled with the artifact's settings
        and run on each given input. The tensors are named by the ONNX lowering the model was
        converted from (export/layer_cut.py), lowered again here for its names."""
        import openvino as ov
        import openvino.opset13 as ops

        from ...ir.irfile import load_ir
        from ...layer_cut import LayerCutError, layer_values
        from . import ovcore
        from .convert import lower_component

        # each layer is cut and compiled once per runtime (ArtifactRuntime.once), and the component's tensor
        # names come from one lowering: lowering the int8 graph compiles it (int8_graph.reference_copies),
        # a minute for the sd21 UNet, which once per layer made its --verify hours long
        def names():
            return layer_values(lower_component(load_ir(self.dir / self.manifest["components"][name]["ir"]), self.mode)[0])

        xml = str(self.dir / self.manifest["components"][name]["openvino_xml"])

        def compiled_cut(layer):
            model = ovcore.core().read_model(xml)  # cut in place: a fresh copy per layer
            ports = {n: o for op in model.get_ordered_ops() for o in op.outputs() for n in o.get_names()}
            v = self.once(("layer names", name), names)[layer]
            inputs = [i for i in v["inputs"] if i is not None]
            unnamed = [t for t in inputs + [v["output"]] if t not in ports]
            if unnamed:
                raise LayerCutError(f"{self.dir}: {name}: {layer}: tensor {unnamed[0]!r} is not named in the OpenVINO model")
            params = []
            for t in inputs:
                src = ports[t]
                p = ops.parameter(src.get_partial_shape(), src.get_element_type(), name=t)
                p.output(0).set_names({t})
                for target in list(src.get_target_inputs()):
                    target.replace_source_output(p.output(0))
                params.append(p)
            cut = ov.Model([ops.result(ports[v["output"]])], params, layer)
            return ovcore.core().compile_model(cut, "CPU", self.config), inputs

        out = {}
        for layer, feeds in layer_inputs.items():
            compiled, inputs = self.once(("layer cut", name, layer), lambda: compiled_cut(layer))
            out[layer] = [np.array(compiled({t: np.ascontiguousarray(a, np.float32) for t, a in zip(inputs, xs)})[0])
                          for xs in feeds]
            compiled.release_memory()  # its activation buffers: an sd21 VAE layer's at 512 px are hundreds of MB
        return out

    # -- passion-bench --------------------------------------------------------------------------
    # ORT FP32 and PyTorch FP32 as for every CPU artifact, and what a CPU user of OpenVINO picks
    timing_baselines = ("fp32_onnx", "ov_fp32", "ov_default", "nncf_int8", "torch_fp32")
    own_baselines = OpenVinoBaselines  # the OpenVINO ones (baselines.py)

    @property
    def variant_name(self) -> str:
        return f"ov_{self.mode}"

    def timing_variants(self, name: str, x: torch.Tensor) -> list[TimingVariant]:
        c = self.manifest["components"][name]

        def load():
            fn = self.artifact_fn(name)
            fn(x)  # compiles for x's shape here, inside the warm-up's memory sampling
            return fn
        return [TimingVariant(self.variant_name, load, x, {"weight_bytes_on_disk": c["openvino_bytes"],
                                                           "ir_bytes_on_disk": c["ir_file_bytes"]})]

    def timing_record(self) -> dict:
        return {"runtime": self.description, "openvino": self.manifest["openvino"], "exec_profile": self.exec_profiles()}

    def exec_profiles(self, runs: int = 3) -> dict:
        """Per component timed here, for each input shape it was compiled for: where the compiled
        model spends its time (profile.compiled_profile: the plugin's counters by node type and exec
        type, and its reference-kernel nodes), from a fresh PERF_COUNT compile on a random input of
        that shape (the timed model runs without counters)."""
        from . import ovcore, profile

        out = {}
        for name, models in self.models.items():
            xml = self.dir / self.manifest["components"][name]["openvino_xml"]
            for key in models.compiled:
                rng = np.random.default_rng(0)
                feeds = {k: (self.constant_feeds(name)[k] if k in self.constant_feeds(name)
                             else rng.standard_normal(shape).astype(np.float32)) for k, shape in key}
                shape = "x".join(str(d) for d in dict(key)[self.main_input(name)])
                out[f"{name} {shape}"] = profile.compiled_profile(ovcore.core().read_model(str(xml)), self.config, feeds, runs)
        return out

    def timing_settings(self) -> dict:
        found = {c: m.found for c, m in self.models.items() if m.found}
        return {"ov_inference_num_threads": self.threads or "default", "ov_mode": self.mode, "ov_precision": self.precision,
                "ov_compiled": found,
                "cpu_check_skipped_outputs_invalid": self.mode in INT8_MODES and not artifact.onednn_has_vnni()}


def open_for_timing(model_dir: str | os.PathLike, threads: int | None = None, timing_only_isa: bool = False) -> OpenVinoSR:
    """passion-bench's way in; timing_only_isa opens an int8 artifact on a CPU without VNNI, where
    its kernels saturate: its timing is meaningful, its outputs are not (the record says so)."""
    return OpenVinoSR(model_dir, threads, check_isa=not timing_only_isa)
