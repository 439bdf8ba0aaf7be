"""What every command shares (passion_deploy/cli/__init__.py): refusals said as `prog: sentence`
with exit status 2 in one place, and a target's flags generated from its options dataclass."""
import argparse
from pathlib import Path

import pytest

from passion_deploy.cli import add_options_arguments, options_from_args, refusals
from passion_deploy.errors import PassionError
from passion_deploy.export.targets import get_target, target_names


def test_a_refusal_or_an_os_error_is_one_line_and_status_2(capsys):
    @refusals("passion-x")
    def main(argv):
        if argv == ["refuse"]:
            raise PassionError("/data/a.png: not an image", "/data/a.png")
        if argv == ["os"]:
            raise FileNotFoundError(2, "No such file or directory", "/nowhere/x")
        return 0

    assert main([]) == 0
    assert main(["refuse"]) == 2
    assert capsys.readouterr().err == "passion-x: /data/a.png: not an image\n"
    assert main(["os"]) == 2
    assert capsys.readouterr().err == "passion-x: [Errno 2] No such file or directory: '/nowhere/x'\n"


def test_anything_else_is_a_bug_and_keeps_its_traceback():
    @refusals("passion-x")
    def main(argv):
        raise KeyError("bug")

    with pytest.raises(KeyError):
        main([])


def _parse(argv):
    p = argparse.ArgumentParser()
    for n in target_names():
        add_options_arguments(p, f"{n} target", get_target(n).options)
    return p.parse_args(argv)


@pytest.mark.parametrize("name", target_names())
def test_flags_left_out_give_the_dataclass_defaults(name):
    options = get_target(name).options
    assert options_from_args(_parse([]), options) == options()


def test_flags_set_the_fields_with_their_types():
    trt = get_target("trt").options
    o = options_from_args(_parse(["--no-engines", "--max-batch", "4", "--timing-cache", "t.cache", "--trt-float", "fp16"]), trt)
    assert o == trt(float_precision="fp16", max_batch=4, timing_cache=Path("t.cache"), build_engines=False)
    assert options_from_args(_parse(["--isa", "portable"]), get_target("onnx").options).isa == "portable"
    with pytest.raises(SystemExit):  # choices come from the field's metadata
        _parse(["--ov-mode", "fast"])
