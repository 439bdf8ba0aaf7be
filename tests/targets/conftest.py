"""Session factories of the target tests: one checkpoint, and one small artifact per target,
exported once and shared read-only by the conformance suite (tests/targets/test_conformance.py)."""
import pytest

CONFORMANCE_COMPONENTS = ("vae_decoder",)
# options exact on every CPU (portable int8 GEMMs) and runnable without TensorRT (the Q/DQ graph alone)
CONFORMANCE_OPTIONS = {"onnx": {"isa": "portable"}, "trt": {"build_engines": False}}


@pytest.fixture(scope="session")
def conformance_ckpt(tiny_w8a8, tmp_path_factory):
    from passion_deploy.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("conformance-ckpt") / "tiny-w8a8.safetensors"
    save_checkpoint(tiny_w8a8, path)  # no FP weights: the tiny preset's own come from the installation
    return path


@pytest.fixture(scope="session")
def exported_artifact(conformance_ckpt, tiny_w8a8, tmp_path_factory):
    """exported_artifact(target) -> the target's artifact folder, exported on first use."""
    from passion_deploy.export.exporter import export_artifact

    made = {}

    def get(target: str):
        if target not in made:
            out = tmp_path_factory.mktemp(f"conformance-{target}") / "art"
            export_artifact(str(conformance_ckpt), out, target, CONFORMANCE_COMPONENTS, progress=False, pipe=tiny_w8a8,
                            options=CONFORMANCE_OPTIONS.get(target, {}))
            made[target] = out
        return made[target]

    return get
