"""Artifact directories: files written atomically, a manifest that describes and seals them.

    DIR/manifest.json        format, target, tool version, source checkpoint sha256,
                             quantization config, pipeline constants, per-component
                             inputs/outputs and files, and the sha256 and size of every file
    DIR/<component>.ir.safetensors   the deploy IR (packed weights + graph), every target
    DIR/<component>.onnx     onnx target (+ .onnx.data external weights beyond 2 GB)

The manifest is written last, so a directory with a manifest is complete. Loading re-hashes
every file and refuses a missing, resized, modified or foreign file with one sentence.
"""
from __future__ import annotations

from passion_deploy.errors import PassionError
import json
import os
import platform
from pathlib import Path

from passion_deploy import __version__
from passion_deploy.io_utils import atomic_write_text, sha256_file

FORMAT = "passion-deploy/artifact"
FORMAT_VERSION = 2  # 2: source_checkpoint.copy, the pipeline a triton or partial artifact runs around its parts
MANIFEST = "manifest.json"
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


class ArtifactError(PassionError):
    """An artifact directory that cannot be used; the message names the file and the problem."""


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_vnni() -> bool:
    return bool(cpu_flags() & VNNI_FLAGS)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def file_record(path: Path) -> dict:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def onnx_file_fields(out_dir: Path, stem: str, files: list[str]) -> dict:
    """A component's manifest fields for its `<stem>.onnx` (+ `.onnx.data`) among `files`."""
    data = f"{stem}.onnx.data"
    return {"onnx": f"{stem}.onnx", "onnx_data": data if data in files else None,
            "onnx_bytes": sum((out_dir / f).stat().st_size for f in files if ".onnx" in f)}


def write_manifest(out_dir: Path, manifest: dict, files: list[str]) -> dict:
    """Seal `files` (relative to out_dir) into the manifest and write it atomically, last."""
    manifest = dict(manifest)
    manifest["format"] = FORMAT
    manifest["format_version"] = FORMAT_VERSION
    manifest["tool_version"] = __version__
    manifest["files"] = {f: file_record(out_dir / f) for f in sorted(set(files))}
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(out_dir: str | os.PathLike, check_files: bool = True) -> dict:
    d = Path(out_dir)
    if not d.is_dir():
        raise ArtifactError(f"{d}: no such artifact directory")
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{mpath}: missing; {d} is not a passion-export artifact (or its export did not finish)")
    try:
        m = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mpath}: not valid JSON ({e.__class__.__name__} at {getattr(e, 'pos', '?')})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ArtifactError(f"{mpath}: not a passion-deploy artifact manifest")
    if m.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{mpath}: artifact format version {m.get('format_version')} is not supported (this tool reads {FORMAT_VERSION})")
    for key in ("files", "components", "pipeline", "target"):
        if key not in m:
            raise ArtifactError(f"{mpath}: manifest lacks {key!r}")
    if check_files:
        check_artifact_files(d, m)
    return m


def check_artifact_files(d: Path, m: dict) -> None:
    for name, rec in m["files"].items():
        p = d / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ArtifactError(f"{d / MANIFEST}: file entry {name!r} points outside the artifact directory")
        if not p.is_file():
            raise ArtifactError(f"{p}: listed in the manifest but missing")
        if p.stat().st_size != rec["bytes"]:
            raise ArtifactError(f"{p}: is {p.stat().st_size} bytes, the manifest says {rec['bytes']} (truncated or replaced); re-export")
        if sha256_file(p) != rec["sha256"]:
            raise ArtifactError(f"{p}: sha256 does not match the manifest (the file was modified or corrupted); re-export")
    for comp, c in m["components"].items():
        for key in ("onnx", "ir"):
            if c.get(key) and c[key] not in m["files"]:
                raise ArtifactError(f"{d / MANIFEST}: component {comp} names {c[key]} which is not sealed in the manifest")


def check_cpu(m: dict, where: str) -> None:
    """Artifacts with int8 weights on every 8x8 layer are exact only with VNNI (see int_algebra)."""
    if m.get("isa") == "vnni" and not cpu_has_vnni():
        raise ArtifactError(f"{where}: exported with --isa vnni, whose int8 GEMMs saturate on this CPU without VNNI "
                            "and would compute wrong results; re-export with --isa portable")


def require_target(m: dict, target: str, where: str) -> None:
    if m["target"] != target:
        raise ArtifactError(f"{where}: is a {m['target']!r} artifact, not {target!r}; "
                            "open it with passion_deploy.export.targets.open_artifact")


def load_source_pipeline(m: dict, model_dir: str | os.PathLike, weights: str | os.PathLike | None = None,
                         lora: str | os.PathLike | None = None):
    """The fake-quant pipeline of the checkpoint the artifact was exported from: the artifact's own
    copy where it carries one (source_checkpoint.copy: FP weights included, so the folder runs
    anywhere), else the recorded path, else the name (a bundled checkpoint moves with the
    installation). It must be the file that was exported: runtimes take the float part of the
    graph from it. A checkpoint without FP weights is built on `weights` / `lora`, else on the
    ones it was exported with (recorded in the manifest), when they are on this machine."""
    from passion_deploy.checkpoint import load_checkpoint, resolve_checkpoint

    src = m["source_checkpoint"]
    if src.get("copy"):
        return load_checkpoint(Path(model_dir) / src["copy"])
    path = Path(src["path"]) if Path(src["path"]).is_file() else resolve_checkpoint(src["name"])
    if not path.is_file():
        raise ArtifactError(f"{Path(model_dir) / MANIFEST}: the checkpoint it was exported from ({src['path']}) is not on "
                            "this machine, and the artifact carries no copy of it; export it again here, or bring the checkpoint")
    if sha256_file(path) != src["sha256"]:
        raise ArtifactError(f"{path}: this checkpoint changed since the artifact was exported from it (sha256 differs "
                            "from the manifest's source_checkpoint); re-export")
    recorded = lambda key: src.get(key) if src.get(key) and Path(src[key]).exists() else None  # noqa: E731
    return load_checkpoint(path, weights=weights or recorded("weights"), lora=lora or recorded("lora"))
