"""Train the `tiny` one-step SR model on scikit-image's bundled colour photographs (CPU, minutes).

    python -m passion_deploy.models.train_tiny        # the exact recipe of the shipped weights

Writes passion_deploy/assets/tiny/{tiny_fp32.safetensors, metrics.json, MODEL_CARD.md} and the
held-out HR crops passion_deploy/assets/photos/<name>.png, then evaluates the 4x output on those
crops (clean bicubic x4 LR) against bicubic upscaling.

The model is the `tiny` preset run through `OneStepSR.forward` unchanged (encode with the latent
mean, UNet at t=999 with the fixed SD2.1 empty-prompt context, z0 = (z - sqrt(1-a) eps)/sqrt(a),
decode). Training is staged:

1. autoencoder: encoder + decoder on HR and bicubic-upscaled LR crops, reconstructing their
   input through the pipeline's own z0 formula with eps = 0, i.e. decode(z / sqrt(a)). The UNet
   is untouched.
2. end to end: the UNet's conv_out is zeroed, so the whole pipeline starts out as the stage-1
   autoencoder (eps = 0 gives z0 = z / sqrt(a)); then UNet, encoder and decoder are trained
   together on (degraded LR, bicubic x4 up) -> HR with an L1 image loss. The UNet learns eps
   as a correction in latent units, amplified by sqrt(1-a)/sqrt(a) ~ 14.6 in z0, so it gets a
   modest learning rate and gradient clipping.

Why eps = 0 rather than eps ~ z at the start: with a = alphas_cumprod[999] ~ 0.0047, an
SD-style "z0 lives in the encoder's latent space" solution needs eps = 0.934 z to ~0.3%, which a
UNet whose last layers are GroupNorm -> SiLU -> conv cannot represent (GroupNorm discards each
image's per-group scale and mean); a short CPU run leaves z0 errors above 100%. The decoder's
latent space is therefore the encoder's scaled by 1/sqrt(a).

Everything is seeded (torch and numpy, seed 0 by default); runs with the same torch version and
thread count reproduce the weights.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import assets
from ..images import downscale_bicubic, psnr, read_image, upscale_bicubic

SCALE = 4

# scikit-image's colour photographs that load without a download (skimage.data, offline).
# Synthetic images (colorwheel, logo) and grayscale ones are not used.
TRAIN_PHOTOS = ("rocket", "motorcycle_left", "motorcycle_right", "hubble_deep_field", "immunohistochemistry", "retina")
# Never seen in training; their HR crops (y, x, h, w) ship as assets/photos/<name>.png.
HELDOUT_CROPS = {
    "astronaut": (0, 128, 256, 256),
    "chelsea": (20, 96, 256, 256),
    "coffee": (24, 160, 256, 256),
}
HELDOUT_PHOTOS = tuple(HELDOUT_CROPS)

WEIGHTS = "tiny/tiny_fp32.safetensors"
METRICS = "tiny/metrics.json"
CARD = "tiny/MODEL_CARD.md"


# ----------------------------------------------------------------------------------------- data
def load_photo(name: str) -> np.ndarray:
    """A scikit-image photograph as H x W x 3 uint8 (the stereo pair's views are named motorcycle_left/right)."""
    import skimage.data as data

    if name.startswith("motorcycle_"):
        left, right, _ = data.stereo_motorcycle()
        return left if name.endswith("left") else right
    return getattr(data, name)()


def to_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float() / 255.0


def heldout_crop(name: str) -> np.ndarray:
    y, x, h, w = HELDOUT_CROPS[name]
    return load_photo(name)[y : y + h, x : x + w]


def write_heldout_photos(folder: Path) -> list[Path]:
    """The bundled HR crops of the held-out photos (deterministic PNGs)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in HELDOUT_PHOTOS:
        path = folder / f"{name}.png"
        buf = io.BytesIO()
        Image.fromarray(heldout_crop(name), "RGB").save(buf, format="PNG", optimize=True)
        if not path.is_file() or path.read_bytes() != buf.getvalue():
            from ..io_utils import atomic_path

            with atomic_path(path) as tmp:
                tmp.write_bytes(buf.getvalue())
        paths.append(path)
    return paths


def training_images(scales=(1.0, 0.75, 0.5)) -> list[torch.Tensor]:
    """Every training photo at a few resolutions (PIL bicubic, antialiased) as 3 x H x W in [0, 1]."""
    out = []
    for name in TRAIN_PHOTOS:
        im = Image.fromarray(load_photo(name), "RGB")
        for s in scales:
            w, h = round(im.width * s), round(im.height * s)
            out.append(to_tensor(np.asarray(im if s == 1.0 else im.resize((w, h), Image.BICUBIC))))
    return out


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    from scipy.ndimage import gaussian_filter  # scipy comes with scikit-image

    return torch.from_numpy(gaussian_filter(x.numpy(), (0, sigma, sigma), mode="reflect", truncate=3.0))


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    arr = (x.clamp(0, 1).numpy().transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return to_tensor(np.asarray(Image.open(buf).convert("RGB")))


def degrade_lr(hr: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """HR crop -> LR (x4 smaller) with mild, randomly chosen blur / noise / JPEG (each often absent)."""
    x = hr
    if rng.random() < 0.4:
        x = gaussian_blur(x, float(rng.uniform(0.3, 1.0)))
    lr = downscale_bicubic(x, SCALE)
    if rng.random() < 0.3:
        lr = lr + torch.from_numpy(rng.normal(0.0, rng.uniform(0.002, 0.015), lr.shape).astype(np.float32))
    if rng.random() < 0.3:
        lr = jpeg(lr, int(rng.integers(75, 96)))
    return lr.clamp(0, 1)


class Crops:
    """Random augmented HR crops of the training photos and their degraded LR, bicubic-upscaled."""

    def __init__(self, images: list[torch.Tensor], rng: np.random.Generator):
        self.images = images
        self.rng = rng

    def hr(self, size: int) -> torch.Tensor:
        rng = self.rng
        im = self.images[rng.integers(len(self.images))]
        h, w = im.shape[1:]
        y, x = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
        c = im[:, y : y + size, x : x + size]
        if rng.random() < 0.5:
            c = c.flip(2)
        c = torch.rot90(c, int(rng.integers(4)), (1, 2))
        if rng.random() < 0.5:  # colour variety: the training set has few natural scenes
            c = c[torch.from_numpy(rng.permutation(3))]
        return c.contiguous()

    def batch(self, n: int, size: int, degrade: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        hrs, ups = [], []
        for _ in range(n):
            hr = self.hr(size)
            hrs.append(hr)
            lr = degrade_lr(hr, self.rng) if degrade else downscale_bicubic(hr, SCALE)
            ups.append(upscale_bicubic(lr, SCALE))
        return torch.stack(ups), torch.stack(hrs)


# ------------------------------------------------------------------------------------- training
def cosine_lr(step: int, total: int, warmup: int = 50) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# ------------------------------------------------------------------------------ initialisation
# Signal layout of the near-identity start (channel indices in the residual streams).
_INIT_CONST = 4.0  # +-C constant channels: they set GroupNorm's variance, so the signal passes almost linearly
_INIT_LATENT_GAIN = 4.0  # latent mean = 4 x (area-downsampled image in [-1, 1]); z = 0.18215 x that


@torch.no_grad()
def near_identity_init(pipe, smooth_upsampling: bool = True) -> None:
    """Set the VAE so the whole pipeline starts as "area-downsample, then upsample" of its input.

    A randomly initialised encoder/decoder takes thousands of CPU steps to learn even the
    identity, mostly because GroupNorm removes each image's per-group mean and scale (colour
    and brightness). Here every residual branch starts at zero (conv2 of each ResnetBlock2D,
    the attention output projection), so the residual streams carry the signal unchanged;
    downsamplers average 2x2, upsamplers smooth the nearest-neighbour copy. The two GroupNorms
    that sit on the main path (before conv_out of encoder and decoder) see each colour as a
    mirrored pair (x, -x) beside constant channels (+C, -C): the group mean is then exactly 0
    and the variance ~C^2, so normalisation is nearly linear and the colour survives; the pair
    then passes SiLU exactly, since silu(u) - silu(-u) = u. (A large GroupNorm shift into SiLU's
    linear range would do too, but leaves a DC of that size at conv_out's input, where weight
    rounding times the DC becomes a colour shift once the model is quantized.) Training
    then starts from a blurry-but-faithful image instead of noise. The UNet's conv_out is zeroed
    (eps = 0, so z0 = z / sqrt(a)); post_quant_conv undoes that 1/sqrt(a).
    """
    vae, unet = pipe.vae, pipe.unet
    enc, dec = vae.encoder, vae.decoder
    c, gain = _INIT_CONST, _INIT_LATENT_GAIN

    def clear(conv):
        conv.weight.zero_()
        if conv.bias is not None:
            conv.bias.zero_()

    def identity_residuals(module):
        for m in module.modules():
            if type(m).__name__ == "ResnetBlock2D":
                clear(m.conv2)
                if m.conv_shortcut is not None:  # channel change: keep the first channels
                    clear(m.conv_shortcut)
                    for i in range(min(m.conv_shortcut.in_channels, m.conv_shortcut.out_channels)):
                        m.conv_shortcut.weight[i, i, 0, 0] = 1.0
            elif type(m).__name__ == "Attention":
                clear(m.to_out[0])

    def centre(conv, out_ch, in_ch, value):
        conv.weight[out_ch, in_ch, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = value

    def gn_pass(gn, channels, sigma):
        gn.weight.fill_(1.0)
        gn.bias.zero_()
        for ch in channels:
            gn.weight[ch] = sigma

    # encoder: channels 2k / 2k+1 carry colour k as (x, -x); channels 6 / 7 are +C / -C
    clear(enc.conv_in)
    for k in range(3):
        centre(enc.conv_in, 2 * k, k, 1.0)
        centre(enc.conv_in, 2 * k + 1, k, -1.0)
    enc.conv_in.bias[6], enc.conv_in.bias[7] = c, -c
    identity_residuals(enc)
    for block in enc.down_blocks:
        for ds in block.downsamplers or []:  # VAE downsamplers pad (0, 1, 0, 1): taps 0..1 are a 2x2 window
            clear(ds.conv)
            for i in range(ds.conv.out_channels):
                ds.conv.weight[i, i, :2, :2] = 0.25
    group = enc.conv_norm_out.num_channels // enc.conv_norm_out.num_groups
    assert group >= 8, "near_identity_init needs 8 channels per group before the encoder's conv_out"
    sigma = math.sqrt((2 * 0.75 + 2 * c * c) / group)  # typical colour energy 0.75
    gn_pass(enc.conv_norm_out, range(6), sigma)
    clear(enc.conv_out)
    for k in range(3):  # silu(u) - silu(-u) = u exactly: the pair passes SiLU linearly, with no offset
        centre(enc.conv_out, k, 2 * k, gain)
        centre(enc.conv_out, k, 2 * k + 1, -gain)
    clear(vae.quant_conv)
    for i in range(vae.quant_conv.out_channels):
        vae.quant_conv.weight[i, i, 0, 0] = 1.0

    # decoder: post_quant_conv undoes z0's 1/sqrt(a) and the gain; channels 4k..4k+3 = (x, -x, +C, -C)
    clear(vae.post_quant_conv)
    for i in range(vae.post_quant_conv.out_channels):
        vae.post_quant_conv.weight[i, i, 0, 0] = pipe.sqrt_a / gain
    clear(dec.conv_in)
    for k in range(3):
        centre(dec.conv_in, 4 * k, k, 1.0)
        centre(dec.conv_in, 4 * k + 1, k, -1.0)
        dec.conv_in.bias[4 * k + 2], dec.conv_in.bias[4 * k + 3] = c, -c
    identity_residuals(dec)
    kernel = torch.tensor([1.0, 2.0, 1.0]) / 4.0
    kernel = torch.outer(kernel, kernel) if smooth_upsampling else torch.tensor([[0.0, 0, 0], [0, 1, 0], [0, 0, 0]])
    for block in dec.up_blocks:
        for us in block.upsamplers or []:
            clear(us.conv)
            for i in range(us.conv.out_channels):
                us.conv.weight[i, i] = kernel
    group = dec.conv_norm_out.num_channels // dec.conv_norm_out.num_groups
    assert group == 4, "near_identity_init needs 4 channels per group before the decoder's conv_out"
    sigma = math.sqrt((2 * 0.25 + 2 * c * c) / group)
    gn_pass(dec.conv_norm_out, [4 * k for k in range(3)] + [4 * k + 1 for k in range(3)], sigma)
    clear(dec.conv_out)
    for k in range(3):
        centre(dec.conv_out, k, 4 * k, 1.0)
        centre(dec.conv_out, k, 4 * k + 1, -1.0)
    clear(unet.conv_out)


def train_end_to_end(pipe, data: Crops, args, progress) -> float:
    groups = [
        {"params": list(pipe.unet.parameters()), "lr": args.lr_unet},
        {"params": list(pipe.vae.encoder.parameters()) + list(pipe.vae.quant_conv.parameters()), "lr": args.lr_vae},
        {"params": list(pipe.vae.decoder.parameters()) + list(pipe.vae.post_quant_conv.parameters()), "lr": args.lr_vae},
    ]
    base = [g["lr"] for g in groups]
    opt = torch.optim.Adam(groups)
    params = [p for g in groups for p in g["params"]]
    pipe.train()
    ema = None
    for step in progress(range(args.sr_steps), desc="end-to-end 4x SR"):
        f = cosine_lr(step, args.sr_steps)
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * f
        up, hr = data.batch(args.batch, args.crop)
        sr = pipe(up)
        loss = (sr - hr).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if hasattr(progress, "set"):
            progress.set(loss=ema)
    pipe.eval()
    return float(ema)


class _Progress:
    """tqdm with a running-loss postfix (plain iteration when tqdm is missing)."""

    def __init__(self):
        self.bar = None

    def __call__(self, it, desc):
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover
            return it
        self.bar = tqdm(it, desc=desc, mininterval=2.0, dynamic_ncols=True)
        return self.bar

    def set(self, **kw):
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in kw.items()}, refresh=False)


# ----------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(pipe, photos: list[Path]) -> dict:
    """4x SR of each bundled HR crop's clean bicubic LR: PSNR (RGB, [0, 1]) of the model and of bicubic."""
    rows = {}
    for path in photos:
        hr = read_image(path)
        up = upscale_bicubic(downscale_bicubic(hr, SCALE), SCALE)
        sr = pipe(up[None])[0]
        finite = bool(torch.isfinite(sr).all())
        sr = sr.clamp(0, 1)
        rows[path.stem] = {
            "size": list(hr.shape[1:]),
            "bicubic_psnr": round(psnr(up, hr), 3),
            "model_psnr": round(psnr(sr, hr), 3),
            "gray_psnr": round(psnr(torch.full_like(hr, 0.5), hr), 3),
            "finite": finite,
        }
    mean = {k: round(float(np.mean([r[k] for r in rows.values()])), 3) for k in ("bicubic_psnr", "model_psnr", "gray_psnr")}
    return {"photos": rows, "mean": mean, "all_finite": all(r["finite"] for r in rows.values())}


def format_table(ev: dict) -> str:
    lines = ["| photo (HR crop) | bicubic PSNR (dB) | tiny model PSNR (dB) | model - bicubic (dB) |", "|---|---|---|---|"]
    for name, r in list(ev["photos"].items()) + [("**mean**", ev["mean"])]:
        d = r["model_psnr"] - r["bicubic_psnr"]
        size = f" {r['size'][0]}x{r['size'][1]}" if "size" in r else ""
        lines.append(f"| {name}{size} | {r['bicubic_psnr']:.2f} | {r['model_psnr']:.2f} | {d:+.2f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m passion_deploy.models.train_tiny", description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sr-steps", type=int, default=1500, help="training steps (whole pipeline end to end)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=64, help="HR crop side (multiple of 16)")
    ap.add_argument("--lr-unet", type=float, default=2e-4)
    ap.add_argument("--lr-vae", type=float, default=2e-4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the weights depend on it; 1 leaves a core free)")
    ap.add_argument("--out", type=Path, default=None, help="weights file (default: the package's assets/tiny/tiny_fp32.safetensors)")
    ap.add_argument("--no-card", action="store_true", help="do not write MODEL_CARD.md / metrics.json beside the weights")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    from .build import build_pipeline, save_project_weights

    photos = write_heldout_photos(assets.path("photos"))
    pipe = build_pipeline("tiny", random_weights=args.seed)
    for p in pipe.parameters():
        p.requires_grad_(True)
    data = Crops(training_images(), rng)
    progress = _Progress()
    t_init = time.time()

    near_identity_init(pipe)
    init_eval = evaluate(pipe, photos)
    print("start (near-identity VAE, eps = 0):\n" + format_table(init_eval), flush=True)
    t_eval = time.time()
    sr_loss = train_end_to_end(pipe, data, args, progress)
    train_s = time.time() - t0 - (t_eval - t_init)
    for p in pipe.parameters():
        p.requires_grad_(False)

    ev = evaluate(pipe, photos)
    out = Path(args.out) if args.out else assets.path(WEIGHTS)
    meta = {
        "preset": "tiny",
        "recipe": "python -m passion_deploy.models.train_tiny",
        "seed": args.seed,
        "sr_steps": args.sr_steps,
        "train_seconds": round(train_s, 1),
        "heldout": ",".join(HELDOUT_PHOTOS),
    }
    save_project_weights(pipe.unet, pipe.vae, out, metadata=meta)
    metrics = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "train_photos": list(TRAIN_PHOTOS),
        "heldout_photos": list(HELDOUT_PHOTOS),
        "heldout_crops_yxhw": {k: list(v) for k, v in HELDOUT_CROPS.items()},
        "train_seconds": round(train_s, 1),
        "final_loss_l1": round(sr_loss, 5),
        "machine": machine(args.threads),
        "weights_bytes": out.stat().st_size,
        "eval_at_start": init_eval,
        "eval": ev,
    }
    if not args.no_card:
        from ..io_utils import atomic_write_text

        atomic_write_text(out.parent / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        atomic_write_text(out.parent / "MODEL_CARD.md", model_card(metrics))
    print(format_table(ev))
    gap = ev["mean"]["model_psnr"] - ev["mean"]["bicubic_psnr"]
    print(
        f"trained in {train_s / 60:.1f} min ({args.threads} threads); weights {out} ({out.stat().st_size / 1e6:.2f} MB); "
        f"mean model - bicubic = {gap:+.2f} dB; output finite: {ev['all_finite']}"
    )
    return metrics


def machine(threads: int) -> dict:
    import os

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": threads, "torch": torch.__version__, "python": platform.python_version()}


def model_card(m: dict) -> str:
    a = m["args"]
    ev = m["eval"]
    return f"""# tiny one-step SR model (`tiny` preset, FP32)

A small stand-in for OSEDiff/SD2.1 so that demos, tests, calibration and export run on real
trained weights with no download. Same diffusers classes and block types as SD2.1
(`UNet2DConditionModel` with cross-attention to the SD2.1 empty-prompt context,
`AutoencoderKL` with mid-block attention), small widths; the VAE downsamples by 4.
Inference is `OneStepSR.forward` unchanged: encode with the latent mean, UNet at t=999,
z0 = (z - sqrt(1-a) eps) / sqrt(a), decode.

- weights: `tiny_fp32.safetensors` ({m['weights_bytes'] / 1e6:.2f} MB, float32, keys `unet.*` / `vae.*`);
  `build_pipeline("tiny")` loads them by default
- recipe: `python -m passion_deploy.models.train_tiny` with its default arguments (this file and
  `metrics.json` are written by that run)

## Data

- training photos (scikit-image {_skimage_version()}, `skimage.data`, bundled in the wheel, no download):
  {", ".join(m['train_photos'])} (the two views of `stereo_motorcycle` are one scene), each at
  scales 1, 0.75 and 0.5 (PIL bicubic)
- **held-out photos, never seen in training: {", ".join(m['heldout_photos'])}**; their HR crops
  (y, x, h, w) {", ".join(f"{k} {tuple(v)}" for k, v in m['heldout_crops_yxhw'].items())} ship as
  `passion_deploy/assets/photos/<name>.png` for demos and tests
- random {a['crop']}x{a['crop']} HR crops, random flips / 90-degree rotations, random RGB channel permutation (p=0.5)
- LR: PIL bicubic x4 downscale (`images.downscale_bicubic`) with mild degradations, each
  independently: Gaussian blur of the HR before downscaling (p=0.4, sigma 0.3-1.0 px), Gaussian
  noise on the LR (p=0.3, sigma 0.002-0.015), JPEG of the LR (p=0.3, quality 75-95); the model input
  is the LR upscaled x4 with PIL bicubic (`images.upscale_bicubic`)

## Training

seed {a['seed']}, batch {a['batch']}, Adam, cosine learning-rate decay with 50 warm-up steps, gradient clipping at 1.

1. start: `near_identity_init` sets the VAE so the pipeline begins as "2x2-average down twice, then
   nearest + [1 2 1] smoothing up twice" of its input: every residual branch (ResnetBlock2D conv2,
   attention output) starts at zero, and the two GroupNorms on the main path see each colour as a
   mirrored pair (x, -x) beside constant channels (+4, -4), which makes them nearly linear, and
   silu(u) - silu(-u) = u carries the pair through SiLU exactly. The
   UNet's conv_out starts at zero (eps = 0, z0 = z / sqrt(a)); post_quant_conv undoes the 1/sqrt(a).
   This start scores {m['eval_at_start']['mean']['model_psnr']:.2f} dB mean on the held-out photos (bicubic
   {m['eval_at_start']['mean']['bicubic_psnr']:.2f} dB). A random start instead needs thousands of CPU
   steps to learn even the identity: GroupNorm removes each image's colour and brightness.
2. end to end, {a['sr_steps']} steps: UNet (lr {a['lr_unet']}), encoder and decoder (lr {a['lr_vae']}) trained
   together on degraded-LR-upscaled -> HR with an L1 image loss through `OneStepSR.forward`.

The decoder's latent space is the encoder's scaled by 1/sqrt(a) ~ 14.6 (not SD2.1's, where z0 and
z share one space and the UNet predicts eps ~ 0.934 z): the UNet predicts a correction in latent
units. The VAE keeps its +-4 constant channels as outliers in a few activations, as SD's VAE has
outlier channels.

Final running L1: {m['final_loss_l1']:.4f}.

Wall time: **{m['train_seconds'] / 60:.1f} min** for the whole training ({m['train_seconds']:.0f} s,
data preparation included, evaluation excluded) on {m['machine']['cpu']} ({m['machine']['cpu_count']} cores),
torch {m['machine']['torch']} with {m['machine']['torch_threads']} threads, Python {m['machine']['python']}.

## Metrics

4x SR of the held-out HR crops: LR = clean `downscale_bicubic(hr)` (no degradation), model output
clamped to [0, 1], PSNR on RGB in [0, 1] against the HR crop; bicubic = `upscale_bicubic(lr)`.
Output finite (no NaN/Inf) on every photo: {ev['all_finite']}.

{format_table(ev)}

A constant 0.5-gray output scores {ev['mean']['gray_psnr']:.2f} dB on average.

This is a toy model for exercising the deployment pipeline (calibration, export, verification),
not a useful super-resolution model.
"""


def _skimage_version() -> str:
    try:
        import skimage

        return skimage.__version__
    except Exception:  # pragma: no cover
        return "?"


if __name__ == "__main__":
    main()
