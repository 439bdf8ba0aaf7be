"""Paths every command is given (issue 25): an output it could not write is refused in one
sentence before any work; an input folder's broken links, link loops and non-files are refused by
name like any bad file; a path that exists but is not a file is said to be what it is; a killed
run's temp files are swept on the rerun; an artifact whose manifest was relabelled `trt` is
refused in one sentence, not with a KeyError."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from passion_deploy.io_utils import atomic_write_text, not_a_file, sweep_stale_temps, writable_dir, writable_file

SEED = Path(__file__).parents[1] / "data" / "passionsr_ptq_seed.yaml"


def _unwritable(tmp_path) -> list[tuple[Path, str]]:
    """Output folders this process cannot write in, as (folder, words of the refusal): a path
    through a regular file, a read-only kernel file system (holds for root, as this CI runs), and
    a folder without write permission when not root."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [(afile / "sub", "is not a folder")]
    if Path("/sys/kernel").is_dir():
        cases.append((Path("/sys/kernel"), "cannot write in /sys/kernel"))
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        cases.append((ro, "cannot write in"))
    return cases


def _one_sentence(capsys, prog: str) -> str:
    out = capsys.readouterr()
    err = out.err.strip()
    assert "Traceback" not in out.err + out.out
    assert err.startswith(f"{prog}: ") and "\n" not in err, err
    return err


def test_every_command_refuses_an_unwritable_output_before_any_work(tmp_path, capsys):
    from passion_deploy.cli import batch, calibrate, export, import_passionsr, serve, sr

    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(images / "a.png")
    some_dir = tmp_path / "model"
    some_dir.mkdir()
    cfg = yaml.safe_load(SEED.read_text())
    cfg.update(cali_img_path=str(tmp_path / "cali"), device="cpu")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    for folder, words in _unwritable(tmp_path):
        ckpt = str(folder / "m.safetensors")
        # the inputs named below do not exist: a command that looked at them before its output
        # would refuse them instead, so each refusal proves the output came first
        runs = [
            ("passion-import", import_passionsr.main, ["--out", ckpt, "--ldm-config", "none.yaml", "--sd-ckpt", "none",
                                                       "--unet-quant", "none.pth", "--bits", "W8A8"]),
            ("passion-calibrate", calibrate.main, ["--config", str(tmp_path / "cfg.yaml"), "--preset", "tiny", "--out", ckpt]),
            ("passion-export", export.main, ["--ckpt", "tiny-w8a8", "--target", "onnx", "--out", str(folder / "art")]),
            ("passion-sr", sr.main, ["--model", str(tmp_path / "none"), "-i", str(images), "-o", str(folder / "out")]),
            ("passion-serve", serve.main, ["--model", str(some_dir), "--write-repo", str(folder / "repo")]),
            ("passion-batch", batch.main, ["--model", str(some_dir), "-i", str(images), "-o", str(folder / "out")]),
        ]
        for prog, main, argv in runs:
            assert main(argv) == 2, prog
            err = _one_sentence(capsys, prog)
            assert words in err and str(folder) in err, err


def test_output_checks_name_folders_and_files_for_what_they_are(tmp_path):
    from passion_deploy.io_utils import OutputError

    (tmp_path / "d").mkdir()
    with pytest.raises(OutputError, match="is a folder; give a file name"):
        writable_file(tmp_path / "d", "--out")
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        writable_dir(tmp_path / "f", "-o")
    assert writable_file(tmp_path / "new" / "deeper" / "m.safetensors") == tmp_path / "new" / "deeper" / "m.safetensors"
    assert not (tmp_path / "new").exists()  # the check creates nothing
    assert set(tmp_path.iterdir()) == {tmp_path / "d", tmp_path / "f"}  # nor leaves its probe file


def test_broken_links_link_loops_and_non_files_in_an_input_folder_are_refused_by_name(tmp_path, capsys):
    from passion_deploy.cli.sr import main

    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray((np.random.default_rng(0).random((10, 12, 3)) * 255).astype(np.uint8)).save(d / "good.png")
    (d / "broken.png").symlink_to(tmp_path / "gone.png")
    (d / "loop1.png").symlink_to(d / "loop2.png")
    (d / "loop2.png").symlink_to(d / "loop1.png")
    (d / "folder.png").mkdir()
    os.mkfifo(d / "pipe.png")  # reading it would block forever
    rc = main(["-i", str(d), "-o", str(tmp_path / "out")])
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    assert rc == 1  # refused ones reported, the good one written
    assert {p.name for p in (tmp_path / "out").glob("*.png")} == {"good.png"}
    err = out.err
    assert f"{d / 'broken.png'}: is a broken symbolic link (to {tmp_path / 'gone.png'})" in err
    assert f"{d / 'loop1.png'}: is a symbolic link loop" in err and f"{d / 'loop2.png'}: is a symbolic link loop" in err
    assert f"{d / 'folder.png'}: is a folder, not a file" in err
    assert f"{d / 'pipe.png'}: is a pipe, not a regular file" in err


def test_a_yaml_path_naming_a_folder_or_a_device_is_said_as_such(tmp_path):
    from passion_deploy.importers import ImportRefused
    from passion_deploy.importers.inference_yaml import _resolve

    with pytest.raises(ImportRefused, match=r"names .*, which is a folder, not a file$"):
        _resolve(str(tmp_path), "sd_ckpt", "run.yaml", tmp_path)
    with pytest.raises(ImportRefused, match=r"names /dev/null, which is a device, not a regular file$"):
        _resolve("/dev/null", "sd_ckpt", "run.yaml", tmp_path)
    with pytest.raises(ImportRefused, match="which does not exist .relative paths resolve against"):
        _resolve("missing.ckpt", "sd_ckpt", "run.yaml", tmp_path)
    assert not_a_file(tmp_path) == "is a folder, not a file"
    (tmp_path / "x").write_text("x")
    assert not_a_file(tmp_path / "x") is None


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_killed_runs_temp_files_are_swept_on_the_rerun_and_a_live_writers_are_kept(tmp_path, capsys):
    from passion_deploy.cli.sr import main

    out = tmp_path / "out"
    out.mkdir()
    dead = out / f".a.png.{_dead_pid()}.k3j4h5g6.tmp"  # what a SIGKILLed passion-sr leaves
    legacy = out / ".b.png.x8y7z6w5.tmp"  # the name before writers put their pid in it
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    live = out / f".c.png.{sleeper.pid}.q1w2e3r4.tmp"  # a writer still running (another process)
    mine = out / "keep.tmp"
    for p in (dead, legacy, live, mine):
        p.write_bytes(b"")
    old = time.time() - 2 * 3600
    os.utime(legacy, (old, old))
    try:
        empty = tmp_path / "empty"
        empty.mkdir()
        assert main(["-i", str(empty), "-o", str(out)]) == 2  # no images: it stops after checking -o
        capsys.readouterr()
        assert not dead.exists() and not legacy.exists()
        assert live.exists() and mine.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sweep_stale_temps(out) == [live]  # its writer is gone now


def test_atomic_writes_name_their_temp_files_with_the_writers_pid(tmp_path, monkeypatch):
    import passion_deploy.io_utils as io_utils

    seen = []
    real = io_utils.tempfile.mkstemp

    def spy(*a, **kw):
        fd, name = real(*a, **kw)
        seen.append(Path(name).name)
        return fd, name

    monkeypatch.setattr(io_utils.tempfile, "mkstemp", spy)
    atomic_write_text(tmp_path / "r.json", "{}")
    assert seen and seen[0].startswith(f".r.json.{os.getpid()}.") and seen[0].endswith(".tmp")
    assert io_utils._TMP.match(seen[0]).group("pid") == str(os.getpid())


def test_a_manifest_relabelled_trt_is_refused_in_one_sentence(tmp_path_factory, tmp_path, capsys):
    from serving_helpers import tiny_onnx_artifact

    from passion_deploy.cli.sr import main

    art = tmp_path / "art"
    shutil.copytree(tiny_onnx_artifact(tmp_path_factory), art)
    m = json.loads((art / "manifest.json").read_text())
    m["target"] = "trt"
    (art / "manifest.json").write_text(json.dumps(m))
    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(images / "a.png")
    rc = main(["--model", str(art), "-i", str(images), "-o", str(tmp_path / "out")])
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out and "KeyError" not in out.err
    assert rc != 0
    assert not list((tmp_path / "out").glob("*.png")) if (tmp_path / "out").exists() else True
    # one sentence naming the artifact (this runtime's check, or a manifest digest refusing any edit)
    refusals = [ln for ln in out.err.splitlines() if ln.startswith("passion-sr: ") and str(art) in ln]
    assert refusals, out.err
