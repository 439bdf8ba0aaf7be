"""Triton model repositories: config.pbtxt per model, model files in version folder 1/.

Two kinds:

- the serving repository (passion-serve): one Python-backend model, `passion_sr`, whole images
  of any size in, 4x images out (tritonserver_model.py), reading the artifact where it lies;
- the deployment repository (passion-serve --write-repo DIR), for a full Triton server:
    passion_sr        the same whole-image model, the artifact copied into passion_sr/1/artifact
                      (the server's Python needs passion-deploy installed)
    vae_encoder, unet, vae_decoder
                      the artifact's engines on Triton's own backends: TensorRT plans
                      (platform tensorrt_plan) where the artifact has engines, otherwise its
                      OpenVINO IR (openvino backend) or its ONNX models (onnxruntime backend)
    passion_sr_z0     z0 from latent and eps (Python backend, the pipeline's float64 formula)
    passion_sr_tile   an ensemble: one tile of the bicubic-upscaled LR image in [0, 1] ->
                      vae_encoder -> unet -> passion_sr_z0 -> vae_decoder -> the model's output
                      for that tile (before clamping and colour fix), for clients that tile

The configs are written as text here and checked in the tests by parsing them with Triton's
own protobuf definitions (tritonclient's model_config_pb2).
"""
from __future__ import annotations

from ..errors import PassionError
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..export import targets
from ..models.components import COMPONENTS, component
from .spec import ModelSpec, SRSettings

SR_MODEL = "passion_sr"
Z0_MODEL = "passion_sr_z0"
TILE_ENSEMBLE = "passion_sr_tile"
ARTIFACT_SUBDIR = "artifact"

SHIM = {
    SR_MODEL: ("# Written by passion-serve. Triton's Python backend loads TritonPythonModel from this file; the\n"
               "# model itself is passion_deploy.serving.tritonserver_model (pip install 'passion-deploy[serve]' in the\n"
               "# Python environment of the server), configured by the parameters of config.pbtxt.\n"
               "from passion_deploy.serving.tritonserver_model import TritonPythonModel  # noqa: F401\n"),
    Z0_MODEL: ("# Written by passion-serve: z0 from latent and eps, passion_deploy.serving.tritonserver_z0.\n"
               "from passion_deploy.serving.tritonserver_z0 import TritonPythonModel  # noqa: F401\n"),
}


class RepositoryError(PassionError):
    """A repository that cannot be written; the message says why."""


# -- config.pbtxt text ---------------------------------------------------------------------------
def _q(s: str) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dims(shape) -> str:
    return "[ " + ", ".join(str(-1 if d is None else int(d)) for d in shape) + " ]"


def _tensor(name: str, dtype: str, dims, optional: bool = False, ragged: bool = False) -> str:
    extra = (" optional: true" if optional else "") + (" allow_ragged_batch: true" if ragged else "")
    return f"  {{ name: {_q(name)} data_type: {dtype} dims: {_dims(dims)}{extra} }}"


def _tensors(key: str, items: list[str]) -> str:
    return f"{key} [\n" + ",\n".join(items) + "\n]\n"


def _parameters(params: dict[str, str]) -> str:
    return "".join(f"parameters {{ key: {_q(k)} value {{ string_value: {_q(v)} }} }}\n" for k, v in params.items())


def _batching(max_batch: int, delay_us: int, preferred: int | None = None) -> str:
    if max_batch <= 0:
        return ""
    pref = f" preferred_batch_size: [ {preferred} ]" if preferred else ""
    return f"dynamic_batching {{{pref} max_queue_delay_microseconds: {int(delay_us)} }}\n"


def _instances(kind: str, count: int) -> str:
    return f"instance_group [ {{ kind: {kind} count: {int(count)} }} ]\n"


def sr_model_config(max_batch: int, delay_us: int, instances: int, kind: str, params: dict[str, str]) -> str:
    """The whole-image model: `image` (uint8 H x W x 3, any size) or `encoded` (file bytes) per
    item, `sr` (uint8 4H x 4W x 3) out. Triton's dynamic batcher gathers up to max_batch items of
    any sizes (ragged) into one execute, whose tiles then share component calls."""
    return (f"name: {_q(SR_MODEL)}\nbackend: \"python\"\nmax_batch_size: {int(max_batch)}\n"
            + _batching(max_batch, delay_us)
            + _tensors("input", [_tensor("image", "TYPE_UINT8", (-1, -1, 3), optional=True, ragged=True),
                                 _tensor("encoded", "TYPE_STRING", (1,), optional=True, ragged=True)])
            + _tensors("output", [_tensor("sr", "TYPE_UINT8", (-1, -1, 3))])
            + _instances(kind, instances) + _parameters(params))


def instance_kind(spec: ModelSpec) -> str:
    """KIND_GPU for what runs on a GPU (the artifact's target says so; a pipeline on cuda)."""
    if spec.model_dir:
        return "KIND_GPU" if targets.serve_spec(spec.model_dir).gpu else "KIND_CPU"
    from ..devices import resolve_device

    return "KIND_GPU" if resolve_device(spec.device).type == "cuda" else "KIND_CPU"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_sr_model(repo: Path, spec: ModelSpec, settings: SRSettings, max_batch: int, delay_us: int,
                   instances: int, kind: str, extra: dict[str, str] | None = None) -> Path:
    params = {**spec.params(), **settings.params(), "max_batch": str(max_batch), **(extra or {})}
    d = Path(repo) / SR_MODEL
    _write(d / "config.pbtxt", sr_model_config(max_batch, delay_us, instances, kind, params))
    _write(d / "1" / "model.py", SHIM[SR_MODEL])
    return d


def write_serving_repository(repo: Path, spec: ModelSpec, settings: SRSettings, max_batch: int, delay_us: int,
                             instances: int, load_error_file: Path) -> Path:
    """passion-serve's repository: the whole-image model, reading the artifact where it lies."""
    if spec.model_dir:
        spec = replace(spec, model_dir=str(Path(spec.model_dir).resolve()))
    if spec.ckpt and Path(spec.ckpt).exists():
        spec = replace(spec, ckpt=str(Path(spec.ckpt).resolve()))
    return write_sr_model(repo, spec, settings, max_batch, delay_us, instances, instance_kind(spec),
                          {"load_error_file": str(load_error_file)})


# -- the deployment repository -----------------------------------------------------------------------
@dataclass
class RepositorySummary:
    out: Path
    models: dict[str, str] = field(default_factory=dict)  # model -> what it is
    notes: list[str] = field(default_factory=list)


def _component_io(m: dict, name: str, model, fixed: bool) -> tuple[dict, dict]:
    """(inputs, outputs) of a component as {name: shape with the batch dimension}: the inputs as
    its file takes them (the target's ComponentModel), the outputs the manifest's, or, where every
    dimension is fixed at the tile (engines), the component table's rule applied to the input."""
    inputs = {k: list(v) for k, v in model.inputs.items()}
    outputs = {k: list(v) for k, v in m["components"][name]["outputs"].items()}
    if fixed:
        main = inputs[component(name).input]
        f = m["pipeline"]["vae_factor"]
        if name == "vae_encoder":
            out = [main[0], 4, main[2] // f, main[3] // f]
        elif name == "vae_decoder":
            out = [main[0], 3, main[2] * f, main[3] * f]
        else:
            out = list(main)
        outputs = {component(name).output: out}
    return inputs, outputs


def _engine_config(name: str, model, inputs: dict, outputs: dict, batch: int, delay_us: int) -> str:
    def dims(shape):
        return shape[1:] if batch > 0 else shape

    head = f"name: {_q(name)}\n" + (f"platform: {_q(model.backend)}\n" if model.platform else f"backend: {_q(model.backend)}\n")
    kind, params = ("KIND_GPU" if model.gpu else "KIND_CPU"), model.parameters
    return (head + f"max_batch_size: {batch}\n" + _batching(batch, delay_us, preferred=batch if batch > 1 else None)
            + _tensors("input", [_tensor(k, "TYPE_FP32", dims(v)) for k, v in inputs.items()])
            + _tensors("output", [_tensor(k, "TYPE_FP32", dims(v)) for k, v in outputs.items()])
            + _instances(kind, 1) + _parameters(params or {}))


def _ensemble_config(batch: int, tile_image: list[int], latent: list[int]) -> str:
    def dims(shape):
        return shape[1:] if batch > 0 else shape

    def step(model, inputs: dict, outputs: dict) -> str:
        ins = " ".join(f"input_map {{ key: {_q(k)} value: {_q(v)} }}" for k, v in inputs.items())
        outs = " ".join(f"output_map {{ key: {_q(k)} value: {_q(v)} }}" for k, v in outputs.items())
        return f"    {{ model_name: {_q(model)} model_version: -1 {ins} {outs} }}"

    steps = [step("vae_encoder", {"image": "image"}, {"latent": "z"}),
             step("unet", {"latent": "z"}, {"eps": "eps"}),
             step(Z0_MODEL, {"latent": "z", "eps": "eps"}, {"z0": "z0"}),
             step("vae_decoder", {"latent": "z0"}, {"image": "sr"})]
    return (f"name: {_q(TILE_ENSEMBLE)}\nplatform: \"ensemble\"\nmax_batch_size: {batch}\n"
            + _tensors("input", [_tensor("image", "TYPE_FP32", dims(tile_image))])
            + _tensors("output", [_tensor("sr", "TYPE_FP32", dims(tile_image))])
            + "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n")


def _z0_config(batch: int, latent: list[int], pipeline: dict) -> str:
    d = latent[1:] if batch > 0 else latent
    return (f"name: {_q(Z0_MODEL)}\nbackend: \"python\"\nmax_batch_size: {batch}\n"
            + _tensors("input", [_tensor("latent", "TYPE_FP32", d), _tensor("eps", "TYPE_FP32", d)])
            + _tensors("output", [_tensor("z0", "TYPE_FP32", d)])
            + _instances("KIND_CPU", 1)
            + _parameters({"sqrt_alpha": repr(float(pipeline["sqrt_alpha"])),
                           "sqrt_one_minus_alpha": repr(float(pipeline["sqrt_one_minus_alpha"]))}))


def write_model_repository(out: str | Path, model_dir: str | Path, settings: SRSettings, max_batch: int = 4,
                           delay_us: int = 2000, instances: int = 1) -> RepositorySummary:
    """The deployment repository of an artifact (module docstring), built in a temporary folder
    beside `out` and renamed into place, so `out` is either complete or absent."""
    out, model_dir = Path(out), Path(model_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RepositoryError(f"{out}: exists and is not an empty folder; give --write-repo a new folder")
    art, target = targets.load(model_dir)  # every file checked against its sha256 before it is copied
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        summary = _fill_repository(tmp, art, target.serve_spec(art), settings, max_batch, delay_us, instances)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary.out = out
    return summary


def _fill_repository(repo: Path, art, serve, settings: SRSettings, max_batch: int, delay_us: int,
                     instances: int) -> RepositorySummary:
    s = RepositorySummary(repo)
    m, model_dir = art.manifest, art.dir
    kind = "KIND_GPU" if serve.gpu else "KIND_CPU"
    copied = repo / SR_MODEL / "1" / ARTIFACT_SUBDIR
    copied.mkdir(parents=True)
    for f in list(m["files"]) + ["manifest.json"] + (["verify.json"] if (model_dir / "verify.json").is_file() else []):
        (copied / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(model_dir / f, copied / f)
    write_sr_model(repo, ModelSpec(model_dir=ARTIFACT_SUBDIR), settings, max_batch, delay_us, instances, kind)
    s.models[SR_MODEL] = f"whole images, any size (Python backend, the artifact in {SR_MODEL}/1/{ARTIFACT_SUBDIR})"

    comps = [c for c in COMPONENTS if c in m["components"]]
    # files built for a batch (engines) take it whole; graphs exported at batch 1 cannot have
    # requests stacked into them by Triton (max_batch_size 0, the batch in the dims)
    batch = serve.max_batch if serve.max_batch > 1 else 0
    if not comps or serve.components is None:
        s.notes.append(f"the {m['target']} artifact has no engine, ONNX or OpenVINO file per component for Triton's own "
                       f"backends; only {SR_MODEL} is written")
        return s
    io = {}
    for name in comps:
        model = serve.components[name]
        vdir = repo / name / "1"
        vdir.mkdir(parents=True)
        for src, dst in model.files.items():
            shutil.copy2(model_dir / src, vdir / dst)
        inputs, outputs = _component_io(m, name, model, fixed=serve.fixed_shapes)
        io[name] = (inputs, outputs)
        _write(repo / name / "config.pbtxt", _engine_config(name, model, inputs, outputs, batch, delay_us))
        s.models[name] = model.description
    s.notes.extend(serve.notes)
    if set(comps) != set(COMPONENTS):
        s.notes.append(f"the artifact holds only {', '.join(comps)}: no {TILE_ENSEMBLE} ensemble")
        return s
    extra = [k for k in io["unet"][0] if k != component("unet").input]
    if extra:
        s.notes.append(f"the UNet takes {', '.join(extra)} as inputs (--dynamic-constants): an ensemble cannot feed "
                       f"them, so no {TILE_ENSEMBLE}")
        return s
    th, tw = m["pipeline"]["latent_tile"]
    f = m["pipeline"]["vae_factor"]
    tile_image = [1, 3, th * f, tw * f]
    latent = list(io["unet"][0][component("unet").input])
    _write(repo / Z0_MODEL / "config.pbtxt", _z0_config(batch, latent, m["pipeline"]))
    _write(repo / Z0_MODEL / "1" / "model.py", SHIM[Z0_MODEL])
    s.models[Z0_MODEL] = "z0 from latent and eps (Python backend)"
    _write(repo / TILE_ENSEMBLE / "config.pbtxt", _ensemble_config(batch, tile_image, latent))
    (repo / TILE_ENSEMBLE / "1").mkdir(parents=True)  # Triton wants a version folder, empty for an ensemble
    s.models[TILE_ENSEMBLE] = (f"ensemble: one {th * f}x{tw * f} tile of the upscaled LR in [0, 1] -> vae_encoder -> unet "
                               f"-> {Z0_MODEL} -> vae_decoder")
    return s
