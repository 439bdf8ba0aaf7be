"""Artifact directories: files written atomically, a manifest that describes and seals them.

    DIR/manifest.json        format, target, tool version, source checkpoint sha256,
                             quantization config, pipeline constants, per-component
                             inputs/outputs and files, and the sha256 and size of every file
    DIR/<component>.ir.safetensors   the deploy IR (packed weights + graph), every target
    DIR/<component>.onnx     onnx target (+ .onnx.data external weights beyond 2 GB)

The manifest is written last, so a directory with a manifest is complete. It seals its own
fields too (`manifest_sha256`: a digest per field), so an edited manifest is refused by the
field's name. `load` returns an `Artifact`: the manifest read and checked, every file checked
against its sha256, hashed once per process (file_sha256); what opens, verifies or serves an
artifact takes that object.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

from passion_deploy import __version__, io_utils
from passion_deploy.errors import PassionError
from passion_deploy.io_utils import atomic_write_text, sha256_file  # noqa: F401  (sha256_file: tests compare with it)

FORMAT = "passion-deploy/artifact"
# 3: the manifest's own fields sealed (manifest_sha256); 2: source_checkpoint.copy, the pipeline a
# triton or partial artifact runs around its parts
FORMAT_VERSION = 3
MANIFEST = "manifest.json"
SEAL = "manifest_sha256"  # {field: digest} of every other manifest field (manifest_seal)
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


# oneDNN's ISA caps (its ONEDNN_MAX_CPU_ISA values) without any VNNI ISA, and the AVX2 ones with it
ONEDNN_NO_VNNI = {"SSE41", "AVX", "AVX2", "AVX512_CORE", "AVX512_MIC", "AVX512_MIC_4OPS"}
ONEDNN_AVX2_VNNI = {"AVX2_VNNI", "AVX2_VNNI_2"}


def onednn_isa_cap() -> str | None:
    """The ISA cap oneDNN reads from the environment (ONEDNN_MAX_CPU_ISA, else the older
    DNNL_MAX_CPU_ISA), upper case; None where neither is set."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return cap.strip().upper() if cap and cap.strip() else None


def onednn_has_vnni() -> bool:
    """VNNI as oneDNN (OpenVINO's CPU plugin) will use it: this CPU's VNNI (cpu_has_vnni), unless
    ONEDNN_MAX_CPU_ISA caps oneDNN below its VNNI ISAs (AVX2, AVX512_CORE and older: no VNNI;
    AVX2_VNNI: only the AVX-VNNI flag counts). A user who sets the variable gets the kernels it
    names, so the openvino target judges exactness by the same; on a VNNI machine it is also how
    this project runs OpenVINO as on an AVX2-only CPU. The onnx target's ONNX Runtime does not read
    it and keeps cpu_has_vnni."""
    if not cpu_has_vnni():
        return False
    cap = onednn_isa_cap()
    if cap in ONEDNN_NO_VNNI:
        return False
    if cap in ONEDNN_AVX2_VNNI:
        return "avx_vnni" in cpu_flags()
    return True


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -- file hashes: each file version is hashed once per process ------------------------------------
# keyed by the file's identity and the stat fields a rewrite changes (the quick check make and rsync
# trust): an export seals its files, and --verify, passion-bench and the runtimes then open the same
# artifact several times in one process without reading its bytes again
_HASHES: dict[tuple, str] = {}


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, computed once per process for each version of it."""
    path = Path(path)
    key = _stat_key(path)
    if key not in _HASHES:
        _HASHES[key] = io_utils.sha256_file(path)
    return _HASHES[key]


def file_record(path: Path) -> dict:
    return {"sha256": file_sha256(path), "bytes": path.stat().st_size}


def onnx_file_fields(out_dir: Path, stem: str, files: list[str]) -> dict:
    """A component's manifest fields for its `<stem>.onnx` (+ `.onnx.data`) among `files`."""
    data = f"{stem}.onnx.data"
    return {"onnx": f"{stem}.onnx", "onnx_data": data if data in files else None,
            "onnx_bytes": sum((out_dir / f).stat().st_size for f in files if ".onnx" in f)}


# -- the manifest's seal ----------------------------------------------------------------------------
def _field_digest(value) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def manifest_seal(manifest: dict) -> dict[str, str]:
    """A digest of every manifest field, one level into each table ("pipeline.sqrt_alpha",
    "components.unet", "files.unet.onnx"), so an edited field is refused by its name. Every value
    is digested as canonical JSON (what json.load gives back, tuples as lists)."""
    seal = {}
    for key, value in manifest.items():
        if key == SEAL:
            continue
        if isinstance(value, dict) and value:
            seal.update({f"{key}.{k}": _field_digest(v) for k, v in value.items()})
        else:
            seal[key] = _field_digest(value)
    return seal


def _check_seal(mpath: Path, m: dict) -> None:
    stored = m.get(SEAL)
    if not isinstance(stored, dict):
        raise ArtifactError(f"{mpath}: the manifest has no {SEAL!r} seal; it was not written by passion-export", mpath)
    actual = manifest_seal(m)
    for name in sorted(set(stored) | set(actual)):
        if name not in actual:
            raise ArtifactError(f"{mpath}: manifest field {name!r} was removed after export (it is sealed); re-export "
                                "instead of editing the manifest", mpath)
        if stored.get(name) != actual[name]:
            what = "added" if name not in stored else "edited"
            raise ArtifactError(f"{mpath}: manifest field {name!r} was {what} after export (it no longer matches the "
                                f"manifest's seal); re-export instead of editing the manifest", mpath)


def write_manifest(out_dir: Path, manifest: dict, files: list[str]) -> dict:
    """Seal `files` (relative to out_dir) and the manifest's own fields, and write it atomically, last."""
    manifest = dict(manifest)
    manifest["format"] = FORMAT
    manifest["format_version"] = FORMAT_VERSION
    manifest["tool_version"] = __version__
    manifest["files"] = {f: file_record(out_dir / f) for f in sorted(set(files))}
    manifest = json.loads(json.dumps(manifest))  # what a reader gets back (tuples as lists), sealed as such
    manifest[SEAL] = manifest_seal(manifest)
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


# -- the artifact ----------------------------------------------------------------------------------
class Artifact:
    """An artifact directory, read once: its manifest checked against its seal and its format
    version, every file it lists checked against its size and sha256. Runtimes, --verify,
    passion-bench and the serving repository take this object instead of reading the folder again."""

    def __init__(self, directory: Path, manifest: dict):
        self.dir = directory
        self.manifest = manifest
        self.verification: dict | None = None  # passion_deploy.export_model(verify=True)'s report

    @property
    def target(self) -> str:
        return self.manifest["target"]

    @property
    def manifest_path(self) -> Path:
        return self.dir / MANIFEST

    def path(self, name: str) -> Path:
        return self.dir / name

    def require(self, who: str, fields: tuple[str, ...] = (), component_fields: tuple[str, ...] = ()) -> None:
        """Refuse, in one sentence, a manifest that lacks what `who` (a target) reads from it."""
        for key in fields:
            if key not in self.manifest:
                raise ArtifactError(f"{self.manifest_path}: the manifest lacks {key!r}, which the {who} target needs; "
                                    "re-export the artifact", self.manifest_path)
        for comp, c in self.manifest["components"].items():
            for key in component_fields:
                if not c.get(key):
                    raise ArtifactError(f"{self.manifest_path}: component {comp} lacks {key!r}, which the {who} target "
                                        "needs; re-export the artifact", self.manifest_path)

    def __fspath__(self) -> str:  # an Artifact goes wherever an artifact's path goes (messages, Path())
        return str(self.dir)

    def __str__(self) -> str:
        return str(self.dir)

    def __repr__(self) -> str:
        return f"Artifact({str(self.dir)!r}, target={self.target!r})"


def load(out_dir: "str | os.PathLike | Artifact") -> Artifact:
    """The artifact in `out_dir`, checked (an Artifact passes through as it is)."""
    if isinstance(out_dir, Artifact):
        return out_dir
    d = Path(out_dir)
    if not d.is_dir():
        raise ArtifactError(f"{d}: no such artifact directory", d)
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{mpath}: missing; {d} is not a passion-export artifact (or its export did not finish)", mpath)
    try:
        m = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mpath}: not valid JSON ({e.__class__.__name__} at {getattr(e, 'pos', '?')})", mpath) from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ArtifactError(f"{mpath}: not a passion-deploy artifact manifest", mpath)
    if m.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{mpath}: artifact format version {m.get('format_version')} is not supported (this tool "
                            f"reads {FORMAT_VERSION}); re-export it with this version", mpath)
    _check_seal(mpath, m)
    for key in ("files", "components", "pipeline", "target"):
        if key not in m:
            raise ArtifactError(f"{mpath}: manifest lacks {key!r}", mpath)
    check_artifact_files(d, m)
    return Artifact(d, m)


def read_manifest(out_dir: "str | os.PathLike | Artifact") -> dict:
    """The checked manifest of an artifact directory (load(out_dir).manifest)."""
    return load(out_dir).manifest


def check_artifact_files(d: Path, m: dict) -> None:
    for name, rec in m["files"].items():
        p = d / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ArtifactError(f"{d / MANIFEST}: file entry {name!r} points outside the artifact directory", d / MANIFEST)
        if not p.is_file():
            raise ArtifactError(f"{p}: listed in the manifest but missing", p)
        if p.stat().st_size != rec["bytes"]:
            raise ArtifactError(f"{p}: is {p.stat().st_size} bytes, the manifest says {rec['bytes']} (truncated or replaced); re-export", p)
        if file_sha256(p) != rec["sha256"]:
            raise ArtifactError(f"{p}: sha256 does not match the manifest (the file was modified or corrupted); re-export", p)
    for comp, c in m["components"].items():
        for key in ("onnx", "ir"):
            if c.get(key) and c[key] not in m["files"]:
                raise ArtifactError(f"{d / MANIFEST}: component {comp} names {c[key]} which is not sealed in the manifest", d / MANIFEST)


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
    if file_sha256(path) != src["sha256"]:
        raise ArtifactError(f"{path}: this checkpoint changed since the artifact was exported from it (sha256 differs "
                            "from the manifest's source_checkpoint); re-export")
    recorded = lambda key: src.get(key) if src.get(key) and Path(src[key]).exists() else None  # noqa: E731
    return load_checkpoint(path, weights=weights or recorded("weights"), lora=lora or recorded("lora"))
