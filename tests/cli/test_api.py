"""The Python API's own refusals and its light import (the README's examples run in
test_readme_api.py)."""
import subprocess
import sys

import numpy as np
import pytest

import passion_deploy as pd


def test_import_passion_deploy_loads_neither_torch_nor_the_exporter():
    code = "import sys, passion_deploy; print(sorted(m for m in ('torch', 'onnx', 'passion_deploy.export') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_api_names_are_the_functions_even_after_the_subpackages_load():
    import passion_deploy.calibrate  # noqa: F401  (a subpackage attribute must not shadow an API name)
    import passion_deploy.export  # noqa: F401

    assert pd.export_model.__module__ == "passion_deploy.api" and pd.quantize.__module__ == "passion_deploy.api"
    from passion_deploy.errors import PassionError

    assert pd.PassionError is PassionError
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        pd.nothing


def test_quantize_takes_a_loop_or_images():
    with pytest.raises(pd.PassionError, match="give forward_loop or images"):
        pd.quantize(object(), "w8a8")
    with pytest.raises(pd.PassionError, match="give forward_loop or images"):
        pd.quantize(object(), "w8a8", forward_loop=lambda m: None, images=[])


def test_export_needs_the_checkpoint_a_pipeline_came_from(tmp_path):
    class Unsaved:
        checkpoint_path = None

    with pytest.raises(pd.PassionError, match="the pipeline has no checkpoint file; save it first"):
        pd.export_model(Unsaved(), "onnx", tmp_path / "a")


@pytest.mark.parametrize("image", [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8)])
def test_upscale_refuses_what_is_not_an_rgb_uint8_image(image):
    with pytest.raises(pd.PassionError, match="expected a PIL image or an H x W x 3 uint8 array"):
        pd.Upscaler(runtime=None).upscale(image)


def test_open_refuses_a_folder_that_is_no_artifact(tmp_path):
    with pytest.raises(pd.PassionError, match="manifest.json: missing"):
        pd.open(tmp_path)


def test_upscaler_leaves_the_named_photos_out_of_its_calibration():
    """passion-demo's need: the photo it shows is not among the fake-quant model's calibration data."""
    from passion_deploy.calibrate.data import bundled_photos

    stems = [p.stem for p in bundled_photos()]
    if len(stems) < 2:
        pytest.skip("fewer than two bundled photos in this checkout")
    up = pd.upscaler("fakequant", "tiny", device="cpu", progress=False, calib_exclude=stems[0])  # one name: a string
    assert stems[0] not in up.description and all(s in up.description for s in stems[1:]), up.description
