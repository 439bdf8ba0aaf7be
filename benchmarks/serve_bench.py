"""Throughput and latency of an artifact served by passion-serve, against the dynamic batcher's
batch size and the number of concurrent clients: a short black-box benchmark through Triton's
HTTP endpoint, the way a user's clients see it.

    python -m passion_deploy.benchmarks.serve_bench --model build/tiny \\
        --json benchmarks/results/serve-tiny-w8a8-MACHINE.json --report docs/images/serve_tiny_w8a8_MACHINE.md

For each --max-batch B a passion-serve process starts on free local ports; after a warm-up, each
concurrency C runs C client threads that send --requests-per-client requests each, one after the
other, all of one LR size. A point records every request's latency (send to full response), the
throughput (requests answered / wall time of the point) and, from Triton's metrics, how many
model executions served them (requests per execution = how much the batcher gathered). The
report is a Markdown table and a PNG of throughput and p50/p99 latency against concurrency, a
line per batch size. `--from-json` redraws a saved record. On a shared CPU quote the shape of
the curves, not the absolute numbers; the record keeps the load average before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np

from passion_deploy.measure import percentile

from .charts import _figure, save_png
from .harness import machine_info, versions
from .report import machine_line


def machine_slug(machine: dict) -> str:
    cpu = re.sub(r"[^a-z0-9]+", "-", (machine.get("cpu") or "cpu").lower()).strip("-")
    return f"{cpu}-{machine.get('logical_cpus', '?')}cpu" + ("-" + re.sub(r"[^a-z0-9]+", "-", machine["gpu"].lower()).strip("-")
                                                          if machine.get("gpu") else "")


class _Server:
    """passion-serve in a subprocess on free ports, until stop()."""

    def __init__(self, model: str, max_batch: int, delay_ms: float, instances: int):
        import socket
        import subprocess

        socks = [socket.socket() for _ in range(3)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        self.http, self.grpc, self.metrics = (s.getsockname()[1] for s in socks)
        for s in socks:
            s.close()
        cmd = [sys.executable, "-m", "passion_deploy.cli.serve", "--model", model, "--max-batch", str(max_batch),
               "--max-queue-delay-ms", str(delay_ms), "--instances", str(instances), "--host", "127.0.0.1",
               "--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics)]
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.lines = []
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if "passion-serve: ready." in line:
                break
        else:
            raise RuntimeError("passion-serve did not start:\n" + "\n".join(self.lines[-20:]))
        self.startup_s = time.monotonic() - t0
        threading.Thread(target=lambda: [self.lines.append(ln.rstrip()) for ln in self.proc.stdout], daemon=True).start()

    def metric(self, name: str) -> float:
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=30).read().decode()
        return sum(float(m.group(1)) for m in re.finditer(rf'^{name}\{{[^}}]*model="passion_sr"[^}}]*\}} (\S+)$', text, re.M))

    def stop(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(300)


def _client_loop(url: str, image: np.ndarray, n: int, out: list, errors: list) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, connection_timeout=600, network_timeout=600)
    inp = httpclient.InferInput("image", [1, *image.shape], "UINT8")
    inp.set_data_from_numpy(image[None])
    try:
        for _ in range(n):
            t = time.perf_counter()
            try:
                client.infer("passion_sr", [inp])
            except Exception as e:  # recorded and reported: a benchmark with errors is not a result
                errors.append(str(e))
                continue
            out.append(time.perf_counter() - t)
    finally:
        client.close()


def run_point(server: _Server, image: np.ndarray, concurrency: int, per_client: int) -> dict:
    samples: list[float] = []
    errors: list[str] = []
    execs0, reqs0 = server.metric("nv_inference_exec_count"), server.metric("nv_inference_request_success")
    threads = [threading.Thread(target=_client_loop, args=(f"127.0.0.1:{server.http}", image, per_client, samples, errors))
               for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    execs = server.metric("nv_inference_exec_count") - execs0
    answered = server.metric("nv_inference_request_success") - reqs0
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed at concurrency {concurrency}: {errors[0]}")
    return {"concurrency": concurrency, "requests": len(samples), "wall_s": wall, "images_per_s": len(samples) / wall,
            "latency_s": {"p50": percentile(samples, 50), "p99": percentile(samples, 99), "min": min(samples),
                          "max": max(samples), "mean": sum(samples) / len(samples)},
            "executions": execs, "requests_per_execution": answered / execs if execs else None, "samples_s": samples}


def benchmark(model: str, batches: list[int], concurrency: list[int], per_client: int, lr_size: tuple[int, int],
              delay_ms: float, instances: int, warmup: int, progress: bool = True) -> dict:
    from tqdm import tqdm

    from passion_deploy.export.artifact import read_manifest

    m = read_manifest(model)
    rng = np.random.default_rng(0)
    w, h = lr_size
    small = (rng.random((max(2, h // 4), max(2, w // 4), 3)) * 255).astype(np.uint8)
    from PIL import Image

    image = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))
    machine, installed = machine_info(), {}
    for pkg in ("nvidia-pytriton", "tritonclient"):  # the server's (its own process) and the clients'
        try:
            from importlib.metadata import version

            installed[pkg] = version(pkg)
        except Exception:
            pass
    rec = {"kind": "serve", "model_dir": str(model), "target": m["target"], "quant_config": m.get("quant_config_name"),
           "source_checkpoint": m.get("source_checkpoint", {}).get("name"), "lr_size": [w, h], "sr_size": [4 * w, 4 * h],
           "machine": machine, "versions": installed,
           "settings": {"max_queue_delay_ms": delay_ms, "instances": instances, "requests_per_client": per_client,
                        "warmup_requests": warmup, "protocol": "HTTP, tritonclient, one image per request"},
           "runs": []}
    points = [(b, c) for b in batches for c in concurrency]
    bar = tqdm(total=len(points), desc="serve benchmark", unit="point", disable=not progress)
    for b in batches:
        server = _Server(model, b, delay_ms, instances)
        try:
            warm: list[float] = []
            _client_loop(f"127.0.0.1:{server.http}", image, warmup, warm, [])
            run = {"max_batch": b, "startup_s": server.startup_s, "points": []}
            for c in concurrency:
                p = run_point(server, image, c, per_client)
                run["points"].append(p)
                bar.set_postfix_str(f"batch {b}, {c} clients: {p['images_per_s']:.2f} img/s, "
                                    f"p50 {p['latency_s']['p50'] * 1e3:.0f} ms")
                bar.update(1)
            rec["runs"].append(run)
        finally:
            server.stop()
    bar.close()
    rec["versions"] = {**versions(), **installed}  # after the runs: what the clients imported is named
    try:
        machine["load_average_end"] = os.getloadavg()
    except OSError:
        pass
    return rec


def markdown(rec: dict, chart: str | None = None) -> str:
    w, h = rec["lr_size"]
    lines = [f"# passion-serve: {rec.get('quant_config', '?')} ({rec.get('target')}) through Triton Inference Server",
             "",
             f"- model: `{rec['model_dir']}` from `{rec.get('source_checkpoint')}`; each request one {w}x{h} LR image "
             f"(uint8), answered with its {4 * w}x{4 * h} SR image",
             f"- machine: {machine_line(rec)}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in rec["versions"].items() if k not in ("numpy", "diffusers")),
             f"- method: passion-serve per batch size (--max-batch, {rec['settings']['instances']} instance, queue delay "
             f"{rec['settings']['max_queue_delay_ms']} ms); C clients each send {rec['settings']['requests_per_client']} "
             "requests one after another; latency = send to full response; throughput = requests / wall time",
             "",
             "| --max-batch | clients | requests | images/s | p50 ms | p99 ms | min-max ms | requests per execution |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in rec["runs"]:
        for p in run["points"]:
            lat = p["latency_s"]
            rpe = f"{p['requests_per_execution']:.2f}" if p.get("requests_per_execution") else "-"
            lines.append(f"| {run['max_batch']} | {p['concurrency']} | {p['requests']} | {p['images_per_s']:.2f} | "
                         f"{lat['p50'] * 1e3:,.0f} | {lat['p99'] * 1e3:,.0f} | {lat['min'] * 1e3:,.0f}-{lat['max'] * 1e3:,.0f} | "
                         f"{rpe} |")
    lines.append("")
    if chart:
        lines += [f"![throughput and latency]({chart})", ""]
    return "\n".join(lines)


def figure(rec: dict):
    from matplotlib import colormaps

    fig = _figure(11.0, 4.6)
    ax_t, ax_l = fig.subplots(1, 2)
    cmap = colormaps["tab10"]
    for i, run in enumerate(rec["runs"]):
        pts = run["points"]
        c = [p["concurrency"] for p in pts]
        color = cmap(i % 10)
        label = f"--max-batch {run['max_batch']}"
        ax_t.plot(c, [p["images_per_s"] for p in pts], "o-", color=color, label=label)
        ax_l.plot(c, [p["latency_s"]["p50"] * 1e3 for p in pts], "o-", color=color, label=f"{label}, p50")
        ax_l.plot(c, [p["latency_s"]["p99"] * 1e3 for p in pts], "s--", color=color, label=f"{label}, p99")
    for ax in (ax_t, ax_l):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        concs = sorted({p["concurrency"] for run in rec["runs"] for p in run["points"]})
        ax.set_xticks(concs, [str(x) for x in concs])
    ax_t.set_ylabel("throughput, images/s", fontsize=9)
    ax_t.set_ylim(bottom=0)
    ax_l.set_ylabel("latency per request, ms", fontsize=9)
    ax_l.set_ylim(bottom=0)
    w, h = rec["lr_size"]
    fig.suptitle(f"passion-serve {rec.get('quant_config', '')} ({rec.get('target')}), {w}x{h} -> {4 * w}x{4 * h}, "
                 f"{rec['machine'].get('cpu')} ({rec['machine'].get('logical_cpus')} logical CPUs)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return fig


def write_report(rec: dict, out_md: str | Path) -> Path:
    from passion_deploy.io_utils import atomic_write_text

    out_md = Path(out_md)
    png = out_md.with_name(f"{out_md.stem}.png")
    save_png(figure(rec), png)
    atomic_write_text(out_md, markdown(rec, png.name))
    return png


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        vals = []
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers separated by commas")
    return vals


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="serve_bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="the artifact to serve")
    p.add_argument("--json", help="write the record here (default benchmarks/results/serve-<config>-<machine>.json)")
    p.add_argument("--report", help="write OUT.md and OUT.png (the chart)")
    p.add_argument("--from-json", help="redraw the report of a saved record (no benchmark run)")
    p.add_argument("--batches", type=_ints, default=[1, 4], help="--max-batch values (default 1,4)")
    p.add_argument("--concurrency", type=_ints, default=[1, 4, 16], help="concurrent clients (default 1,4,16)")
    p.add_argument("--requests-per-client", type=int, default=4, help="default 4")
    p.add_argument("--lr-size", default="32x32", help="WxH of the LR image each request sends (default 32x32)")
    p.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2, help="requests before the first point (default 2)")
    a = p.parse_args(argv)
    if a.from_json:
        rec = json.loads(Path(a.from_json).read_text())
    else:
        if not a.model:
            p.error("--model DIR is needed to run the benchmark (or --from-json REC.json to redraw one)")
        try:
            w, h = (int(v) for v in a.lr_size.lower().split("x"))
        except ValueError:
            p.error(f"--lr-size {a.lr_size!r}: give WxH, e.g. 32x32")
        rec = benchmark(a.model, a.batches, a.concurrency, a.requests_per_client, (w, h), a.max_queue_delay_ms,
                        a.instances, a.warmup)
        from passion_deploy.io_utils import atomic_write_text

        slug = re.sub(r"[^a-z0-9]+", "-", str(rec.get("source_checkpoint") or rec.get("quant_config")).lower())
        out = Path(a.json or f"benchmarks/results/serve-{slug}-{machine_slug(rec['machine'])}.json")
        atomic_write_text(out, json.dumps(rec, indent=1) + "\n")
        print(f"serve_bench: record written to {out}")
    if a.report:
        png = write_report(rec, a.report)
        print(f"serve_bench: report written to {a.report} (chart {png})")
    print(markdown(rec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
