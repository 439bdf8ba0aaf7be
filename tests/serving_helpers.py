"""What the serve and Ray tests share: the tiny onnx artifact (exported once per session),
test images, passion-sr's reference outputs, a passion-serve process and a tritonclient call."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image


def tiny_onnx_artifact(tmp_path_factory) -> Path:
    """passion-export --ckpt tiny-w8a8 --target onnx, once per test session (the session's base
    temp folder is shared by every module's fixtures)."""
    from passion_deploy.cli import export as export_cli

    out = tmp_path_factory.getbasetemp() / "tiny-onnx-artifact"
    if not (out / "manifest.json").exists():
        assert export_cli.main(["--ckpt", "tiny-w8a8", "--target", "onnx", "--out", str(out), "--no-progress"]) == 0
    return out


def write_images(folder: Path, sizes: list[tuple[int, int]], seed: int = 0, prefix: str = "img") -> list[Path]:
    """Smooth random RGB PNGs of the given (width, height): noise upscaled, like a photo's LR."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (w, h) in enumerate(sizes):
        small = (rng.random((max(2, h // 4), max(2, w // 4), 3)) * 255).astype(np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        p = folder / f"{prefix}{i:02d}_{w}x{h}.png"
        img.save(p)
        paths.append(p)
    return paths


def passion_sr_outputs(model_dir: Path, in_dir: Path, out_dir: Path, *extra: str) -> dict[str, np.ndarray]:
    """passion-sr --model's outputs for a folder: {stem: uint8 H x W x 3}."""
    from passion_deploy.cli import sr as sr_cli

    assert sr_cli.main(["--model", str(model_dir), "-i", str(in_dir), "-o", str(out_dir), *extra]) == 0
    return {p.stem: np.asarray(Image.open(p).convert("RGB")) for p in sorted(out_dir.glob("*.png"))}


def images_with_outputs(model_dir: Path, folder: Path, sizes: list[tuple[int, int]], seed: int = 0
                        ) -> tuple[list[Path], dict[str, np.ndarray]]:
    """Test images of the given (width, height) in folder/lr and passion-sr --model's output for
    each (folder/ref): (paths, {stem: uint8 H x W x 3}), what a served image must equal."""
    paths = write_images(folder / "lr", sizes, seed=seed)
    return paths, passion_sr_outputs(model_dir, folder / "lr", folder / "ref")


def rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class ServeProcess:
    """passion-serve in a subprocess on free ports; `lines` collects its output."""

    def __init__(self, *args: str, ready_timeout: float = 300.0, host: str | None = "127.0.0.1"):
        self.http, self.grpc, self.metrics = free_ports(3)
        cmd = [sys.executable, "-m", "passion_deploy.cli.serve", *args, *(["--host", host] if host else []),
               "--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.lines: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        t0 = time.monotonic()
        while not self._ready.wait(0.5):
            if self.proc.poll() is not None or time.monotonic() - t0 > ready_timeout:
                self.stop()
                raise AssertionError("passion-serve did not become ready:\n" + "\n".join(self.lines[-40:]))
        self.startup_s = time.monotonic() - t0

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "passion-serve: ready." in line:
                self._ready.set()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http}"

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 180.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        return self.proc.returncode


def infer(url: str, image: np.ndarray | None = None, encoded: list[bytes] | None = None, dtype: str | None = None,
          timeout: float = 300.0):
    """One HTTP request to passion_sr: (uint8 N x 4H x 4W x 3, None) or (None, the error text)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
    inputs = []
    if image is not None:
        i = httpclient.InferInput("image", list(image.shape), dtype or "UINT8")
        i.set_data_from_numpy(image)
        inputs.append(i)
    if encoded is not None:
        i = httpclient.InferInput("encoded", [len(encoded), 1], "BYTES")
        i.set_data_from_numpy(np.array(encoded, dtype=object).reshape(-1, 1))
        inputs.append(i)
    try:
        return client.infer("passion_sr", inputs).as_numpy("sr"), None
    except InferenceServerException as e:
        return None, str(e)
    except Exception as e:  # the connection itself refused or closed (a stopping server)
        return None, f"{e.__class__.__name__}: {e}"
    finally:
        client.close()


def metric(port: int, name: str, model: str = "passion_sr") -> float:
    """A counter or gauge of Triton's Prometheus metrics for `model`."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    total = 0.0
    for m in re.finditer(rf'^{name}\{{[^}}]*model="{model}"[^}}]*\}} (\S+)$', text, re.M):
        total += float(m.group(1))
    return total
