"""passion-batch: 4x super-resolution of a folder (or a list of images) on a Ray cluster.

Each Ray worker loads the model once (one per GPU where the model runs on GPUs, otherwise
--cpus-per-worker CPUs each); images go to whichever worker is free. Outputs are passion-sr's
(the same code, bit-identical PNGs), written atomically by this process; a rerun skips finished
outputs unless --overwrite. A worker that dies has its images retried on another; an image that
fails twice is reported by name at the end.

    passion-batch --model build/tiny -i photos/ -o out/                      # a local Ray cluster
    passion-batch --model build/trt --list todo.txt -o out/ --ray head:6379  # a running cluster
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import refusals
from .serving_args import add_model_args, add_sr_args, load_checked, model_spec, sr_settings
from .sr import UsageError

PROG = "passion-batch"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--input", help="an image file or a folder of images")
    p.add_argument("--list", metavar="FILE", help="a text file of image paths, one per line (relative to the file)")
    p.add_argument("-o", "--output", required=True, help="output folder for the 4x PNGs")
    p.add_argument("--overwrite", action="store_true", help="rewrite outputs that already exist (default: keep them)")
    add_model_args(p)
    add_sr_args(p)
    p.add_argument("--batch", type=int, default=1, metavar="N", help="tiles stacked into one call of a component (default 1)")
    add_ray_args(p)
    return p


def add_ray_args(p: argparse.ArgumentParser) -> None:
    r = p.add_argument_group("Ray")
    r.add_argument("--ray", metavar="ADDRESS",
                   help="a running cluster (head:6379, ray://head:10001, auto); default: start a local one")
    r.add_argument("--workers", type=int, metavar="N",
                   help="workers to start (default: one per GPU for GPU models, else the cluster's CPUs / --cpus-per-worker)")
    r.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="C", help="CPUs each CPU worker takes (default 1)")


def read_list(path: Path) -> list[Path]:
    """Image paths from a list file: one per line, blank lines and # comments skipped, relative
    paths relative to the list's folder."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--list {path}: cannot read it ({e.__class__.__name__}: {e})") from None
    out = []
    for ln in lines:
        ln = ln.strip()
        if ln and not ln.startswith("#"):
            p = Path(ln)
            out.append(p if p.is_absolute() else path.parent / p)
    return out


def input_files(args) -> list[Path]:
    from ..images import list_images

    if bool(args.input) == bool(getattr(args, "list", None)):
        raise UsageError("give -i FILE_OR_FOLDER or --list FILE (one of them)")
    if getattr(args, "list", None):
        files = read_list(Path(args.list))
        if not files:
            raise UsageError(f"--list {args.list}: lists no image")
        return files
    src = Path(args.input)
    if not src.exists():
        raise UsageError(f"{src}: no such file or folder")
    files = list_images(src)
    if not files:
        raise UsageError(f"{src}: no images found (looked for .png/.jpg/.jpeg/.bmp/.tif/.webp)")
    return files


def run(args, prog: str = PROG) -> int:
    """The job from parsed arguments."""
    from ..io_utils import writable_dir
    from ..serving.ray_batch import BatchError, RayBatch

    if args.batch < 1:
        raise UsageError(f"--batch {args.batch} must be at least 1")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers} must be at least 1")
    if args.cpus_per_worker <= 0:
        raise UsageError(f"--cpus-per-worker {args.cpus_per_worker} must be above 0")
    out = writable_dir(args.output, "-o")  # refused now, not after the cluster started
    files = input_files(args)
    spec, settings = model_spec(args), sr_settings(args)
    if args.tile_overlap is not None or args.vae_overlap is not None:
        load_checked(spec, settings)  # overlaps must fit the model's tiles: refused here, not once per image
    address = args.ray or None
    job = RayBatch(files, out, spec, settings, address=address, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                   batch=args.batch, overwrite=args.overwrite)
    try:
        res = job.run()
    except BatchError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted after {len(job.result.written)} written; every finished output is complete, "
              "rerun the same command to continue", file=sys.stderr)
        return 130
    for name, why in res.failed.items():
        print(f"{prog}: failed {name}: {why}", file=sys.stderr)
    workers = len(res.workers)
    print(f"{prog}: {len(res.written)} written to {out}, {len(res.kept)} already there (kept; --overwrite rewrites), "
          f"{len(res.failed)} failed; {workers} Ray worker(s) ready"
          + (f", {res.worker_deaths} died, {res.retried} image(s) retried" if res.worker_deaths or res.retried else "")
          + f" ({res.seconds:.1f} s)")
    return 1 if res.failed else 0


@refusals(PROG)
def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
