"""passion-batch over Ray on a local 2-worker cluster (this machine), with the tiny onnx artifact.

- 20 images, one worker killed (SIGKILL) mid-job: every image is finished exactly once (one
  atomic write each, none missing, none failed), its output bit-identical to passion-sr --model,
  the dead worker's images retried on another;
- a rerun keeps the finished outputs; an unreadable file is reported by name; an image whose
  processing fails twice is reported by name with the reason;
- the command line: progress, a one-line summary, bad arguments refused in one sentence.
"""
import os
import re
import signal

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="passion-batch runs on Ray: pip install 'passion-deploy[serve]'")

from passion_deploy.serving.ray_batch import RayBatch  # noqa: E402
from passion_deploy.serving.spec import ModelSpec, SRSettings  # noqa: E402
from serving_helpers import images_with_outputs, rgb  # noqa: E402

N_IMAGES = 20


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs: room for 2 one-CPU workers (and a replacement once one dies)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 1024 * 1024)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(artifact, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ray")
    sizes = [(12 + 4 * (i % 5), 10 + 6 * (i % 3)) for i in range(N_IMAGES)]
    paths, ref = images_with_outputs(artifact, tmp, sizes, seed=11)
    return artifact, paths, ref, tmp


def test_killed_worker_mid_job_every_image_exactly_once(cluster, data):
    art, paths, ref, tmp = data
    out = tmp / "out"
    killed = []

    def on_result(name, rec):
        # from the 5th output on, once both workers are up, kill the other worker's process: it
        # has images in flight (each worker keeps two queued)
        others = [w for w in sorted(job.result.workers) if w != rec["worker"]]
        if not killed and len(job.result.written) >= 5 and others:
            os.kill(job.result.workers[others[0]]["pid"], signal.SIGKILL)
            killed.append(others[0])

    job = RayBatch(paths, out, ModelSpec(model_dir=str(art)), SRSettings(), workers=2, progress=False,
                   on_result=on_result)
    res = job.run()
    assert killed, "no worker was killed"
    assert res.worker_deaths == 1 and res.retried >= 1
    assert res.failed == {}
    assert sorted(res.written) == sorted(str(p) for p in paths)
    assert set(res.written.values()) == {1}, "an output was written more than once"
    assert sorted(f.name for f in out.iterdir()) == sorted(f"{p.stem}.png" for p in paths)  # no temp files left
    for p in paths:
        assert np.array_equal(rgb(out / f"{p.stem}.png"), ref[p.stem]), p.name


def test_rerun_keeps_finished_outputs_and_reports_bad_files_by_name(cluster, data):
    art, paths, ref, tmp = data
    out = tmp / "out2"
    out.mkdir()
    (out / f"{paths[0].stem}.png").write_bytes((tmp / "ref" / f"{paths[0].stem}.png").read_bytes())
    bad = tmp / "bad" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    job = RayBatch(paths[:3] + [bad], out, ModelSpec(model_dir=str(art)), SRSettings(), workers=2, progress=False)
    res = job.run()
    assert res.kept == [str(paths[0])]
    assert sorted(res.written) == sorted(str(p) for p in paths[1:3])
    assert list(res.failed) == [str(bad)] and "not a readable image" in res.failed[str(bad)]
    assert "/tmp/passion-decode" not in res.failed[str(bad)]  # named as the user named it
    for p in paths[1:3]:
        assert np.array_equal(rgb(out / f"{p.stem}.png"), ref[p.stem])


def test_an_image_failing_twice_is_reported_by_name(cluster, data):
    """A UNet overlap the tiles cannot take makes every image raise in the worker (RayBatch used
    directly skips the command line's check): each is tried twice, on both workers, then named
    with the reason; nothing is written."""
    art, paths, ref, tmp = data
    job = RayBatch(paths[:2], tmp / "out3", ModelSpec(model_dir=str(art)), SRSettings(tile_overlap=40),
                   workers=2, progress=False)
    res = job.run()
    assert sorted(res.failed) == sorted(str(p) for p in paths[:2])
    for why in res.failed.values():
        assert why.startswith("failed 2 times: ") and why.count("tile overlap 40 must be") == 2, why
    assert res.retried == 2 and not res.written and not (tmp / "out3").exists()


def test_command_line_runs_and_summarises(cluster, data, capsys):
    from passion_deploy.cli import batch as batch_cli

    art, paths, ref, tmp = data
    lst = tmp / "todo.txt"
    lst.write_text("# two of them\n" + "\n".join(os.path.relpath(p, tmp) for p in paths[3:5]) + "\n")
    out = tmp / "out4"
    assert batch_cli.main(["--model", str(art), "--list", str(lst), "-o", str(out), "--workers", "2"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("passion-batch: 2 written to") and re.search(r"0 failed; [12] Ray worker\(s\) ready", summary)
    for p in paths[3:5]:
        assert np.array_equal(rgb(out / f"{p.stem}.png"), ref[p.stem])
    assert batch_cli.main(["--model", str(art), "-i", str(tmp / "none"), "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"passion-batch: {tmp / 'none'}: no such file or folder"
    assert batch_cli.main(["--model", str(art), "-i", str(paths[0]), "-o", str(out), "--tile-overlap", "99"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("passion-batch: --tile-overlap 99 must be") and "\n" not in err
