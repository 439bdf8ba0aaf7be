"""Peak resident memory of one ONNX Runtime model, measured in a fresh process.

    python -m passion_deploy.benchmarks.memprobe MODEL.onnx INPUTS.npz [THREADS]

Prints JSON: the process's resident set after importing onnxruntime (baseline), and its peak
(VmHWM) after loading the model and running it once on INPUTS.npz. In-process sampling cannot
tell one model's memory from another's (freed pages are reused), so the harness asks this.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    import numpy as np
    import onnxruntime as ort

    model, inputs = argv[0], argv[1]
    threads = int(argv[2]) if len(argv) > 2 and argv[2] != "0" else 0
    feeds = dict(np.load(inputs))
    baseline = _status("VmRSS")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    loaded = _status("VmRSS")
    sess.run(None, feeds)
    print(json.dumps({"baseline_rss_bytes": baseline, "after_load_rss_bytes": loaded, "peak_rss_bytes": _status("VmHWM")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
