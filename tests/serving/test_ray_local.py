"""passion-batch planning a folder with a symbolic link loop and a broken link in it (issue 25):
nothing raises (Path.resolve() did, on the loop) and each is named when the driver reads it."""
import pytest

ray = pytest.importorskip("ray", reason="passion-batch runs on Ray: pip install 'passion-deploy[serve]'")

from passion_deploy.io_utils import not_a_file  # noqa: E402
from passion_deploy.serving.ray_batch import BatchResult, plan  # noqa: E402


def test_a_link_loop_in_the_input_is_planned_and_named_not_raised(tmp_path):
    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    (tmp_path / "c.png").symlink_to(tmp_path / "gone.png")
    files = sorted(tmp_path.glob("*.png"))
    result = BatchResult()
    jobs = plan(files, tmp_path / "out", False, result)  # Path.resolve() raised RuntimeError on the loop
    assert [j.src for j in jobs] == files and not result.failed
    assert not_a_file(files[0]) == "is a symbolic link loop"
    assert not_a_file(files[2]) == f"is a broken symbolic link (to {tmp_path / 'gone.png'})"
