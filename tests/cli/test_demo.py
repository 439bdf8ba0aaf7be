"""The README's main job (passion-demo) runs on CPU and prints its summary."""
import pytest

from passion_deploy.calibrate.data import bundled_photos
from passion_deploy.cli.demo import main


def test_demo_prints_summary_and_writes_images(tmp_path, capsys):
    if not bundled_photos():
        pytest.skip("no bundled photos in this checkout")
    assert main(["-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "PSNR vs HR" in out and "bicubic" in out and "fake-quant" in out and "vs FP32 output" in out
    names = {p.name.split("_", 1)[1] for p in tmp_path.glob("*.png")}
    assert names == {"lr.png", "bicubic.png", "hr.png", "fp32.png", "fakequant.png"}
