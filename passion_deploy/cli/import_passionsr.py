"""passion-import: a PassionSR model (its inference YAML, or the same files given one by one) ->
this project's calibrated checkpoint, ready for passion-sr --ckpt and passion-export --ckpt.

    passion-import --config scripts/inference/config/saw_sep/UV/saw_U_W8A8_V_W8A8.yaml --out m.safetensors
    passion-import --ldm-config v2-inference.yaml --sd-ckpt v2-1_512-ema-pruned.ckpt --lora osediff.ckpt \\
        --context empty_context_embedding.pt --unet-quant unet.pth --vae-quant vae.pth --bits W8A8 --out m.safetensors

Relative paths in the YAML resolve against the directory PassionSR runs in (--root, default the
working directory), as PassionSR resolves them. The checkpoint holds the merged FP weights
unless --no-fp-weights is given (then load it with the SD checkpoint as --weights).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import refusals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="passion-import", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="PassionSR's inference YAML (basic_config + quantize_config with quant_ckpt)")
    p.add_argument("--out", required=True, help="the checkpoint to write (.safetensors)")
    p.add_argument("--root", help="directory the YAML's relative paths resolve against (default: the working directory)")
    p.add_argument("--no-fp-weights", action="store_true", help="leave the merged FP weights out of the checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    f = p.add_argument_group("files (without --config, or replacing the YAML's paths)")
    f.add_argument("--ldm-config", help="ldm model YAML giving the architecture (SD2's v2-inference.yaml schema)")
    f.add_argument("--sd-ckpt", help="original-SD single-file checkpoint ({'state_dict': ...})")
    f.add_argument("--lora", help="OSEDiff LoRA: PassionSR's osediff.ckpt or OSEDiff's osediff.pkl")
    f.add_argument("--context", help="empty-prompt context tensor (.pt; default: the bundled SD2.1 one)")
    f.add_argument("--unet-quant", help="PassionSR's UNet quantization checkpoint (.pth)")
    f.add_argument("--vae-quant", help="PassionSR's VAE quantization checkpoint (.pth); quantizes the VAE too")
    b = p.add_argument_group("bit settings (without --config; PassionSR's files do not record them)")
    b.add_argument("--bits", help="weight and activation bits of the UNet (and the VAE), e.g. W8A8 or W6A6")
    b.add_argument("--vae-bits", help="the VAE's bits when they differ from --bits")
    b.add_argument("--weight-sym", action="store_true", help="symmetric weight quantizers (released configs: asymmetric)")
    b.add_argument("--weight-sign", action="store_true", help="signed weight grid")
    b.add_argument("--act-sym", action="store_true", help="symmetric activation quantizers")
    b.add_argument("--act-sign", action="store_true", help="signed activation grid")
    b.add_argument("--no-unet-split", action="store_true", help="the UNet was calibrated with split: False")
    return p


BIT_FLAGS = ("bits", "vae_bits", "weight_sym", "weight_sign", "act_sym", "act_sign", "no_unet_split")


def make_job(args):
    """The ImportJob the arguments describe (raises ImportRefused with one sentence)."""
    from ..importers import ImportRefused, job_from_flags, job_from_yaml

    if args.config:
        given = [f for f in BIT_FLAGS if getattr(args, f)]
        if given:
            raise ImportRefused(f"--{given[0].replace('_', '-')}: with --config the bit settings come from its "
                                "quantize_config blocks; edit the YAML or leave --config out")
        overrides = {"ldm_config": args.ldm_config, "sd_ckpt": args.sd_ckpt, "lora": args.lora, "context": args.context,
                     "unet_quant": args.unet_quant, "vae_quant": args.vae_quant}
        return job_from_yaml(args.config, args.root, overrides)
    for flag in ("ldm_config", "sd_ckpt", "unet_quant"):
        if not getattr(args, flag):
            raise ImportRefused(f"--{flag.replace('_', '-')} is needed without --config")
    if args.root:
        raise ImportRefused("--root applies to --config's relative paths; without --config give the paths themselves")
    return job_from_flags(args.ldm_config, args.sd_ckpt, args.unet_quant, args.bits, vae_quant=args.vae_quant,
                          vae_bits=args.vae_bits, lora=args.lora, context=args.context, weight_sym=args.weight_sym,
                          weight_sign=args.weight_sign, act_sym=args.act_sym, act_sign=args.act_sign,
                          unet_split=not args.no_unet_split)


@refusals("passion-import")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..api import import_passionsr
    from ..importers import ImportRefused
    from ..io_utils import writable_file

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ImportRefused(f"--out {out}: the checkpoint is a .safetensors file", out)
    writable_file(out, "--out")  # refused now, not after the whole import
    result = import_passionsr(make_job(args), out, include_fp_weights=not args.no_fp_weights,
                              progress=not args.no_progress)
    print("\n".join(f"passion-import: {line}" if i == 0 else line for i, line in enumerate(result.lines)))
    weights = ("with the merged FP weights" if not args.no_fp_weights else
               "without FP weights: loading it needs the SD checkpoint and LoRA it was made from")
    print(f"passion-import: wrote {out} ({weights})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
