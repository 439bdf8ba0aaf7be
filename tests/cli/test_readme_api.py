"""The README's "Python API" section runs as written: its ```python blocks are executed in order,
in one namespace, in a temporary folder (they export the bundled tiny-w8a8 and a checkpoint
they calibrate themselves), and what they print is what the comments say."""
import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def api_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_section_has_its_examples():
    blocks = api_blocks()
    assert len(blocks) == 2 and all("pd." in b for b in blocks)


def test_the_python_api_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for i, block in enumerate(api_blocks()):
            exec(compile(block, f"README.md Python API block {i + 1}", "exec"), namespace)
    lines = printed.getvalue().splitlines()
    assert lines[0] == "onnx ['unet', 'vae_decoder', 'vae_encoder']"
    passed, db = lines[1].split()
    assert passed == "True" and float(db) > 40  # the onnx target is exact: far above the 45 dB bar in practice
    assert lines[2] == "(160, 96)"
    assert lines[3] == "torch.Size([1, 3, 128, 128])"
    assert (tmp_path / "build" / "tiny-onnx" / "verify.json").is_file()
    assert namespace["art"].target == "onnx" and list(namespace["art"].manifest["components"]) == ["vae_decoder"]
