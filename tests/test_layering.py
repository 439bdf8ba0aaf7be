"""The layering contracts of .importlinter hold (kernels apart from policy, targets apart from
each other, the CLI on top, no import cycles): `lint-imports` run on this checkout.

import-linter finds a package's modules by walking its folder, and setup.py's package_dir maps
the top-level export/, kernels/ and benchmarks/ folders into passion_deploy only for the
installer. So the test lays the installed package out in a temporary folder (passion_deploy.layout:
links to the checkout's files) and lints that: the same modules, under the names the code imports them by.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_top_level_folders_are_mapped_not_linked():
    # package_dir, not links in the tree (a link breaks on Windows checkouts and in sdists)
    from passion_deploy.layout import MAPPED_INTO_PACKAGE

    for top in MAPPED_INTO_PACKAGE:
        assert not (ROOT / "passion_deploy" / top).exists(), f"passion_deploy/{top} should not exist in the checkout"
    import passion_deploy.export
    import passion_deploy.kernels

    assert Path(passion_deploy.export.__file__).parent == ROOT / "export"
    assert Path(passion_deploy.kernels.__file__).parent == ROOT / "kernels"


def test_import_contracts_are_kept(tmp_path):
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.fail("lint-imports is not installed: pip install -e '.[test]' brings import-linter")
    from passion_deploy.layout import lay_out_installed_package

    env = dict(os.environ, PYTHONPATH=str(lay_out_installed_package(tmp_path)))
    out = subprocess.run([exe, "--config", str(ROOT / ".importlinter"), "--no-cache"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "6 kept, 0 broken" in out.stdout
