"""passion-serve --write-repo: a Triton model repository whose every config.pbtxt parses with
Triton's own protobuf definitions (tritonclient's model_config_pb2), names what the files in it
really are (the ONNX graphs' inputs and outputs), wires its ensemble tensor by tensor, and
computes what the artifact computes: the tile ensemble run step by step equals the runtime on
that tile, and the whole-image model, loaded the way Triton's Python backend loads it, answers
exactly passion-sr's image."""
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("tritonclient.grpc", reason="the configs are parsed with tritonclient's protobuf definitions")
from google.protobuf import json_format, text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2 as mc  # noqa: E402

from passion_deploy.cli import serve as serve_cli  # noqa: E402
from passion_deploy.export import artifact as artifact_mod  # noqa: E402
from serving_helpers import images_with_outputs, rgb  # noqa: E402

ONNX_TYPES = {1: mc.TYPE_FP32}


@pytest.fixture(scope="module")
def repo(artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("repo") / "triton-repo"
    assert serve_cli.main(["--model", str(artifact), "--write-repo", str(out), "--max-batch", "3",
                           "--max-queue-delay-ms", "7"]) == 0
    return out


def parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


@pytest.fixture(scope="module")
def configs(repo):
    cfgs = {d.name: parse(d / "config.pbtxt") for d in sorted(repo.iterdir()) if d.is_dir()}
    assert set(cfgs) == {"passion_sr", "vae_encoder", "unet", "vae_decoder", "passion_sr_z0", "passion_sr_tile"}
    for name, c in cfgs.items():
        assert c.name == name and (repo / name / "1").is_dir()  # Triton: the folder is the model's name
    return cfgs


def test_whole_image_model_config(configs, repo, artifact):
    c = configs["passion_sr"]
    assert c.backend == "python" and c.max_batch_size == 3
    assert c.dynamic_batching.max_queue_delay_microseconds == 7000
    ins = {i.name: i for i in c.input}
    assert ins["image"].data_type == mc.TYPE_UINT8 and list(ins["image"].dims) == [-1, -1, 3]
    assert ins["encoded"].data_type == mc.TYPE_STRING
    assert all(i.optional and i.allow_ragged_batch for i in c.input)  # either input; any sizes batch together
    assert [(o.name, o.data_type, list(o.dims)) for o in c.output] == [("sr", mc.TYPE_UINT8, [-1, -1, 3])]
    assert c.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert c.parameters["model_dir"].string_value == "artifact"  # relative: the repository can move
    assert c.parameters["color_fix"].string_value == "adain" and c.parameters["max_batch"].string_value == "3"
    copied = repo / "passion_sr" / "1" / "artifact"
    artifact_mod.read_manifest(copied)  # every file there, matching its sha256
    assert (repo / "passion_sr" / "1" / "model.py").read_text().count("import TritonPythonModel") == 1


def test_component_configs_match_their_onnx_graphs(configs, repo, artifact):
    import onnx

    for name in ("vae_encoder", "unet", "vae_decoder"):
        c = configs[name]
        assert c.backend == "onnxruntime" and c.max_batch_size == 0  # graphs exported at batch 1
        f = repo / name / "1" / "model.onnx"
        assert f.read_bytes() == (artifact / f"{name}.onnx").read_bytes()
        g = onnx.load(str(f), load_external_data=False).graph
        for cfg_tensors, graph_tensors in ((c.input, g.input), (c.output, g.output)):
            want = {t.name: ([d.dim_value if d.dim_value else -1 for d in t.type.tensor_type.shape.dim],
                             ONNX_TYPES[t.type.tensor_type.elem_type]) for t in graph_tensors}
            assert {t.name: (list(t.dims), t.data_type) for t in cfg_tensors} == want, name


def _tensors(c):
    return {t.name: list(t.dims) for t in c.input}, {t.name: list(t.dims) for t in c.output}


def _compatible(a, b):
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b))


def test_tile_ensemble_is_wired_tensor_by_tensor(configs):
    e = configs["passion_sr_tile"]
    assert e.platform == "ensemble"
    steps = e.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["vae_encoder", "unet", "passion_sr_z0", "vae_decoder"]
    ens_in, ens_out = _tensors(e)
    known = dict(ens_in)  # ensemble tensor -> dims, as produced so far
    for s in steps:
        m_in, m_out = _tensors(configs[s.model_name])
        assert set(s.input_map) == set(m_in), s.model_name  # every model input fed
        for model_input, tensor in s.input_map.items():
            assert tensor in known, f"{s.model_name} reads {tensor} before any step writes it"
            assert _compatible(known[tensor], m_in[model_input]), (s.model_name, model_input)
        for model_output, tensor in s.output_map.items():
            assert model_output in m_out
            known[tensor] = m_out[model_output]
    for name, dims in ens_out.items():
        assert name in known and _compatible(known[name], dims)
    z0 = configs["passion_sr_z0"]
    assert z0.backend == "python"


def _fake_pb_utils():
    """The few names of Triton's triton_python_backend_utils the models use, for running them
    in this process exactly as the Python backend calls them."""
    pb = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name, array):
            self._name, self._a = name, array

        def name(self):
            return self._name

        def as_numpy(self):
            return self._a

    class TritonError:
        INVALID_ARG = 3

        def __init__(self, msg, code=0):
            self.msg, self.code = msg, code

    class InferenceResponse:
        def __init__(self, output_tensors=(), error=None):
            self.outputs, self.error = {t.name(): t.as_numpy() for t in output_tensors}, error

    class Request:
        def __init__(self, **arrays):
            self.tensors = {k: Tensor(k, v) for k, v in arrays.items()}

    pb.Tensor, pb.TritonError, pb.InferenceResponse, pb.Request = Tensor, TritonError, InferenceResponse, Request
    pb.get_input_tensor_by_name = lambda req, name: req.tensors.get(name)
    return pb


def _load_model_py(repo, model, monkeypatch):
    """repo/model/1/model.py loaded as the backend loads it, with the args Triton passes."""
    pb = _fake_pb_utils()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    spec = importlib.util.spec_from_file_location(f"triton_model_{model}", repo / model / "1" / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = json_format.MessageToDict(parse(repo / model / "config.pbtxt"), preserving_proto_field_name=True)
    m = mod.TritonPythonModel()
    m.initialize({"model_config": json.dumps(cfg), "model_repository": str(repo / model), "model_version": "1",
                  "model_instance_kind": "CPU", "model_instance_device_id": "0"})
    return m, pb


def test_tile_ensemble_steps_compute_the_runtime_on_a_tile(repo, artifact, monkeypatch):
    """The ensemble's steps run in order on the repository's own files (ONNX Runtime for the
    engines, the z0 model as Triton's Python backend runs it) equal the artifact's runtime."""
    import onnxruntime as ort

    from passion_deploy.export.targets import open_artifact

    rt = open_artifact(artifact)
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    z0_model, pb = _load_model_py(repo, "passion_sr_z0", monkeypatch)

    def onnx(name, feed):
        return ort.InferenceSession(str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)[0]

    z = onnx("vae_encoder", {"image": x.numpy()})
    eps = onnx("unet", {"latent": z})
    z0 = z0_model.execute([pb.Request(latent=z, eps=eps)])[0].outputs["z0"]
    sr = onnx("vae_decoder", {"latent": z0})
    assert torch.equal(torch.from_numpy(sr), rt(x))


def test_whole_image_model_loaded_as_the_python_backend_loads_it(repo, artifact, tmp_path, monkeypatch):
    model, pb = _load_model_py(repo, "passion_sr", monkeypatch)
    paths, ref = images_with_outputs(artifact, tmp_path, [(20, 12), (9, 30)], seed=3)
    a, b = (rgb(p) for p in paths)
    reqs = [pb.Request(image=a[None]), pb.Request(encoded=np.array([[b"not an image"]], dtype=object)),
            pb.Request(encoded=np.array([[paths[1].read_bytes()]], dtype=object))]
    out = model.execute(reqs)
    assert out[0].error is None and np.array_equal(out[0].outputs["sr"][0], ref[paths[0].stem])
    assert out[1].error.code == pb.TritonError.INVALID_ARG and "not a readable image" in out[1].error.msg
    assert out[2].error is None and np.array_equal(out[2].outputs["sr"][0], ref[paths[1].stem])


def test_write_repo_needs_an_artifact(capsys):
    assert serve_cli.main(["--backend", "fp32", "--write-repo", "/tmp/never-written"]) == 2
    assert "--write-repo needs --model DIR" in capsys.readouterr().err
    assert not Path("/tmp/never-written").exists()


def _synthetic_artifact(d: Path, artifact: Path, target: str, **fields) -> Path:
    """An artifact folder of another target built from the onnx one's manifest: its files are
    placeholders (the repository copies them, Triton's backends would read them), sealed in a
    manifest the way passion-export seals them."""
    m = json.loads((artifact / "manifest.json").read_text())
    d.mkdir()
    files = []
    comps = {}
    for name, c in m["components"].items():
        c = {k: v for k, v in c.items() if k not in ("onnx", "onnx_data", "ir")}
        for key, fname in {"ir": f"{name}.ir.safetensors", **fields["files"](name)}.items():
            (d / fname).write_bytes(f"{target} {name} {key}".encode())
            files.append(fname)
            c[key] = fname
        c.update(fields.get("component", {}).get(name, {}))
        comps[name] = c
    extra = {k: v(files) if callable(v) else v for k, v in fields.get("top", {}).items()}
    keep = {k: m[k] for k in ("pipeline", "quant_config", "quant_config_name", "source_checkpoint")}
    artifact_mod.write_manifest(d, {**keep, **extra, "target": target, "components": comps}, files)
    return d


def test_trt_engines_become_plans_with_the_engines_batch(artifact, tmp_path):
    from passion_deploy.serving.repository import write_model_repository
    from passion_deploy.serving.spec import SRSettings

    tile = {"unet": {"latent": [1, 4, 32, 32]}, "vae_encoder": {"image": [1, 3, 128, 128]},
            "vae_decoder": {"latent": [1, 4, 32, 32]}}
    trt = _synthetic_artifact(
        tmp_path / "trt", artifact, "trt",
        files=lambda n: {"onnx": f"{n}.qdq.onnx", "int8_engine": f"{n}.int8.engine"},
        component={n: {"fixed_input_shapes": s, "onnx_data": None} for n, s in tile.items()},
        top={"engines": {n: {"int8": {"engine": f"{n}.int8.engine"}, "fp16": {"engine": f"{n}.int8.engine"}} for n in tile},
             "tensorrt": {"max_batch": 4, "version": "10.x", "gpu": "test"}})
    s = write_model_repository(tmp_path / "repo", trt, SRSettings(), max_batch=8)
    repo = s.out
    from passion_deploy.export import targets

    assert targets.serve_spec(trt).tiles_per_call == 4  # what passion-serve's batcher stacks per engine call
    cfgs = {d.name: parse(d / "config.pbtxt") for d in repo.iterdir()}
    for n in tile:
        c = cfgs[n]
        assert c.platform == "tensorrt_plan" and c.max_batch_size == 4
        assert list(c.dynamic_batching.preferred_batch_size) == [4]
        assert c.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        assert (repo / n / "1" / "model.plan").read_bytes() == (trt / f"{n}.int8.engine").read_bytes()
    # fixed tiles: every dim known, the batch dim left to Triton
    assert [list(t.dims) for t in cfgs["vae_encoder"].input] == [[3, 128, 128]]
    assert [list(t.dims) for t in cfgs["vae_encoder"].output] == [[4, 32, 32]]
    assert [list(t.dims) for t in cfgs["vae_decoder"].output] == [[3, 128, 128]]
    assert cfgs["passion_sr_tile"].max_batch_size == 4 and cfgs["passion_sr_z0"].max_batch_size == 4
    assert cfgs["passion_sr"].instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    test_tile_ensemble_is_wired_tensor_by_tensor(cfgs)


def test_openvino_ir_gets_the_openvino_backend_with_its_plugin_properties(artifact, tmp_path):
    from passion_deploy.serving.repository import write_model_repository
    from passion_deploy.serving.spec import SRSettings

    ov = _synthetic_artifact(tmp_path / "ov", artifact, "openvino",
                             files=lambda n: {"openvino_xml": f"{n}.xml", "openvino_bin": f"{n}.bin"},
                             top={"openvino": {"mode": "dequant", "precision": "f32", "version": "2026.0"}})
    s = write_model_repository(tmp_path / "repo", ov, SRSettings())
    for n in ("vae_encoder", "unet", "vae_decoder"):
        c = parse(s.out / n / "config.pbtxt")
        assert c.backend == "openvino" and c.max_batch_size == 0
        assert c.parameters["LP_TRANSFORMS_MODE"].string_value == "NO"
        assert c.parameters["INFERENCE_PRECISION_HINT"].string_value == "f32"
        assert (s.out / n / "1" / "model.xml").read_bytes() == (ov / f"{n}.xml").read_bytes()
        assert (s.out / n / "1" / "model.bin").read_bytes() == (ov / f"{n}.bin").read_bytes()
    assert any("LP_TRANSFORMS_MODE" in note for note in s.notes)
