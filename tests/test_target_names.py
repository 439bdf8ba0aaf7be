"""No code outside export/targets/ branches on a target's name: the CLIs, serving, the runner,
the exporter and the benchmarks ask the Target contract (its options, report, open and serve
spec) instead. Every comparison in their source is read (Python's own parser): `x == "trt"`,
`target in ("trt", "triton")`, `name != 'onnx'` and the like are reported with file and line.
(.importlinter's one-target-behind-the-contract contract checks the imports.)"""
import ast
from pathlib import Path

import pytest

from passion_deploy.export.targets import target_names

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("passion_deploy", "export", "benchmarks")  # not kernels/: there "triton" is the compiler's package
TARGETS_DIR = ROOT / "export" / "targets"


def _names_in(node) -> set[str]:
    """The target names a comparison operand spells out: a string constant, or the string
    constants of a tuple, list or set literal."""
    elts = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return {e.value for e in elts if isinstance(e, ast.Constant) and e.value in target_names()}


def target_name_comparisons(source: str, filename: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Compare):
            names = set().union(*(_names_in(n) for n in [node.left, *node.comparators]))
            if names:
                found.append(f"{filename}:{node.lineno}: compares with target name(s) {', '.join(sorted(names))}")
    return found


def _sources():
    seen = set()  # passion_deploy/{export,benchmarks} may be links to the top-level folders: each file once
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            path = path.resolve()
            if path in seen or path.is_relative_to(TARGETS_DIR) or not path.is_relative_to(ROOT):
                continue
            seen.add(path)
            yield path


def test_the_scan_covers_cli_serving_benchmarks_and_the_exporter():
    scanned = {p.relative_to(ROOT).as_posix() for p in _sources()}
    for must in ("passion_deploy/cli/export.py", "passion_deploy/serving/repository.py", "passion_deploy/serving/ray_batch.py",
                 "benchmarks/harness.py", "export/exporter.py", "passion_deploy/runner.py", "passion_deploy/api.py"):
        assert must in scanned
    assert not any(s.startswith("export/targets/") for s in scanned)


@pytest.mark.parametrize("code", ['if m["target"] in ("trt", "triton"): pass', "gpu = target == 'trt'",
                                  'ok = "openvino" != kind', 'x = t not in {"onnx"}', 'y = t in ["onnx", "other"]'])
def test_a_comparison_with_a_target_name_is_found(code):
    assert target_name_comparisons(code, "f.py")


@pytest.mark.parametrize("code", ['x = get("trt")', 'name = "onnx"', 'if kind == "KIND_GPU": pass',
                                  'y = backend in ("fp32", "fp16")'])
def test_other_uses_of_strings_are_not_reported(code):
    assert not target_name_comparisons(code, "f.py")


def test_no_target_name_comparison_outside_export_targets():
    found = []
    for path in _sources():
        found += target_name_comparisons(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())
    assert not found, "\n".join(found)
