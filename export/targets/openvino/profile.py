"""Where a compiled OpenVINO model spends its time: the CPU plugin's performance counters
(`PERF_COUNT=YES`) summed by node type and exec type, and the nodes that run a reference kernel
(`ref_*` exec types, the plugin's slow fallbacks). passion-bench records it for the openvino
artifact; tests/targets/test_openvino_int8.py holds the int8 graph to having no reference kernel."""
from __future__ import annotations

from collections import defaultdict


def exec_types(compiled) -> dict[str, str]:
    """{node name: exec type} of a compiled model (its runtime graph, no inference needed)."""
    out = {}
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        if rt["layerType"].astype(str) in ("Input", "Output", "Const"):
            continue
        out[op.get_friendly_name()] = rt["primitiveType"].astype(str)
    return out


def reference_nodes(compiled) -> list[str]:
    """'name (layer type, exec type)' of every node that runs a reference kernel."""
    found = []
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        kind, prim = rt["layerType"].astype(str), rt["primitiveType"].astype(str)
        if kind not in ("Input", "Output", "Const") and prim.startswith("ref"):
            found.append(f"{op.get_friendly_name()} ({kind}, {prim})")
    return found


def perf_profile(request, runs: int = 3) -> dict:
    """Median per-run time (ms) of `request` (an InferRequest of a model compiled with
    PERF_COUNT=YES, already fed), summed by 'node type / exec type', over `runs` inferences
    after one warm-up; with node counts and the total."""
    request.infer()
    per_run = []
    for _ in range(runs):
        request.infer()
        acc: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        for p in request.get_profiling_info():
            if str(p.status).endswith("NOT_RUN"):
                continue
            key = f"{p.node_type} / {p.exec_type}"
            acc[key][0] += p.real_time.total_seconds() * 1e3
            acc[key][1] += 1
        per_run.append(acc)
    keys = sorted({k for r in per_run for k in r})
    rows = {}
    for k in keys:
        times = sorted(r.get(k, [0.0, 0])[0] for r in per_run)
        rows[k] = {"ms": round(times[len(times) // 2], 3), "nodes": per_run[0].get(k, [0, 0])[1]}
    total = sum(r["ms"] for r in rows.values())
    by_time = dict(sorted(rows.items(), key=lambda kv: -kv[1]["ms"]))
    return {"total_ms": round(total, 3), "runs": runs, "by_type": by_time,
            "reference_kernel_nodes": sum(r["nodes"] for k, r in rows.items() if k.split(" / ")[1].startswith("ref"))}


def compiled_profile(model, config: dict, feeds: dict, runs: int = 3) -> dict:
    """perf_profile of `model` compiled with `config` plus PERF_COUNT, on `feeds`."""
    from .ovcore import core

    m = model
    if any(i.get_partial_shape().is_dynamic for i in model.inputs):
        m = model.clone()
        m.reshape({k: list(v.shape) for k, v in feeds.items()})
    compiled = core().compile_model(m, "CPU", {**config, "PERF_COUNT": "YES"})
    req = compiled.create_infer_request()
    for k, v in feeds.items():
        req.set_tensor(k, __import__("openvino").Tensor(v))
    return perf_profile(req, runs)
