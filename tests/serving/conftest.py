"""What every serving test serves: the tiny onnx artifact, exported once per session."""
import pytest

from serving_helpers import tiny_onnx_artifact


@pytest.fixture(scope="session")
def artifact(tmp_path_factory):
    """passion-export --ckpt tiny-w8a8 --target onnx (the session's base temp folder holds it)."""
    return tiny_onnx_artifact(tmp_path_factory)
