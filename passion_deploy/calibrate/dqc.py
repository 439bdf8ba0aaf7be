"""Distributed Quantization Calibration (DQC), spec section 5.

All FP weights stay frozen. After the statistics pass, each quantized part is calibrated in
order, first its LET parameters (s, o, s_qk, s_vw) and then its LBQ boundaries:

    UNet only:   unet.let -> unet.lbq                      loss on z0 vs the FP UNet's z0
    UNet + VAE:  encoder.let -> encoder.lbq                loss on the latent vs FP latent
                 unet.let -> unet.lbq                      inputs: the quantized encoder's latents
                 decoder.let -> decoder.lbq                inputs: the quantized UNet's z0;
                                                           loss on the image vs the HR image
During a LET stage the quantizer ranges follow each batch's min/max (as PassionSR's reference
re-initialises them every step); when it ends, activation ranges are re-estimated by EMA under
the final LET parameters, and the LBQ stage then learns the boundaries from there.

Progress is saved to `<out>.partial.safetensors` (atomically) every `save_interval` epochs and
at the end of each stage, with the optimiser state; rerunning the same job resumes from it.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..checkpoint import apply_tensors, read_checkpoint, save_checkpoint
from ..quant.attention import QuantAttnProcessor
from ..quant.layers import QuantLayer
from ..quant.wrap import quantizers, set_observers
from .stats import statistics_pass

LOSSES = {"mse": torch.nn.functional.mse_loss, "l1": torch.nn.functional.l1_loss}


@dataclass(frozen=True)
class StageSettings:
    lr: float = 1e-5
    epochs: int = 2
    batch_size: int = 1
    milestones: tuple[int, ...] = (1,)
    gamma: float = 0.1
    loss: str = "mse"


@dataclass(frozen=True)
class DQCPlan:
    encoder: StageSettings = field(default_factory=StageSettings)
    unet: StageSettings = field(default_factory=StageSettings)
    decoder: StageSettings = field(default_factory=StageSettings)
    stats_batch_size: int = 4
    save_interval: int = 2
    train_let: bool = True
    train_lbq: bool = True
    seed: int = 42


@dataclass(frozen=True)
class Stage:
    part: str  # encoder | unet | decoder
    kind: str  # let | lbq
    settings: StageSettings

    @property
    def name(self) -> str:
        return f"{self.part}.{self.kind}"


def plan_stages(pipe, plan: DQCPlan) -> list[Stage]:
    parts = ["encoder", "unet", "decoder"] if pipe.quant_config.vae is not None else ["unet"]
    if pipe.quant_config.unet is None:
        parts.remove("unet")
    kinds = [k for k, on in (("let", plan.train_let), ("lbq", plan.train_lbq)) if on]
    return [Stage(p, k, getattr(plan, p)) for p in parts for k in kinds]


def part_modules(pipe, part: str) -> list[torch.nn.Module]:
    return {
        "encoder": [pipe.vae.encoder, pipe.vae.quant_conv],
        "unet": [pipe.unet],
        "decoder": [pipe.vae.post_quant_conv, pipe.vae.decoder],
    }[part]


def part_forward(pipe, part: str):
    return {"encoder": pipe.encode, "unet": pipe.denoise, "decoder": pipe.decode}[part]


def let_parameters(modules) -> list[torch.nn.Parameter]:
    out = []
    for m in modules:
        for sub in m.modules():
            if isinstance(sub, QuantLayer) and sub.use_let:
                out += [sub.let_scale, sub.let_offset]
            elif isinstance(sub, QuantAttnProcessor):
                out += [sub.s_qk, sub.s_vw]
    return out


def lbq_parameters(modules) -> list[torch.nn.Parameter]:
    return [p for m in modules for _, q in quantizers(m) for p in (q.x_min, q.x_max)]


def _batches(xs: list[torch.Tensor], size: int) -> list[torch.Tensor]:
    return [torch.cat(xs[i:i + size]) for i in range(0, len(xs), size)]


@torch.no_grad()
def refresh_activation_ranges(pipe, part: str, inputs: list[torch.Tensor], batch_size: int) -> None:
    """Re-estimate activation ranges (EMA from scratch) and weight ranges under fixed LET parameters."""
    mods = part_modules(pipe, part)
    for m in mods:
        for _, q in quantizers(m):
            if q.channels is None:
                q.initialized.fill_(False)
        set_observers(m, act="ema", weight="minmax", let=False)
    try:
        for x in _batches(inputs, batch_size):
            part_forward(pipe, part)(x)
    finally:
        for m in mods:
            set_observers(m, act=None, weight=None, let=False)


class DQC:
    """Runs the DQC stages on a fake-quant pipeline `q` against its FP twin `fp`."""

    def __init__(self, fp, q, pairs: list[tuple[torch.Tensor, torch.Tensor, str]], plan: DQCPlan,
                 out: Path | None, job: dict, progress: bool = True, eval_fn=None):
        self.fp, self.q, self.pairs, self.plan = fp, q, pairs, plan
        self.partial = None if out is None else Path(str(out).removesuffix(".safetensors") + ".partial.safetensors")
        self.job_hash = hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.progress = progress
        self.eval_fn = eval_fn
        self.state = {"job": self.job_hash, "stats_done": False, "init_eval": None, "stages": [], "current": None}
        self._cache: dict[str, list[torch.Tensor]] = {}

    # -- progress file -------------------------------------------------------------------
    def _save(self, opt: torch.optim.Optimizer | None = None) -> None:
        if self.partial is None:
            return
        more = {}
        if opt is not None:
            for i, st in opt.state_dict()["state"].items():
                for k, v in st.items():
                    more[f"optim.{i}.{k}"] = torch.as_tensor(v).detach().clone().contiguous()
        save_checkpoint(self.q, self.partial, extra={"dqc_progress": self.state}, more_tensors=more)

    def try_resume(self) -> dict[str, torch.Tensor]:
        """Load a matching progress file; returns saved optimiser tensors (empty when starting fresh)."""
        if self.partial is None or not self.partial.is_file():
            return {}
        meta, tensors = read_checkpoint(self.partial)
        state = json.loads(meta.get("extra", "{}")).get("dqc_progress")
        if not state or state.get("job") != self.job_hash:
            print(f"passion-calibrate: {self.partial} belongs to a different job; starting over")
            return {}
        optim = {k: v for k, v in tensors.items() if k.startswith("optim.")}
        apply_tensors(self.q, {k: v for k, v in tensors.items() if not k.startswith("optim.")}, self.partial)
        self.q.latent_tile = tuple(json.loads(meta["latent_tile"]))
        self.state = state
        done = [s["name"] for s in state["stages"]]
        cur = state["current"]
        where = f", {cur['name']} after epoch {cur['epochs_done']}" if cur else ""
        print(f"passion-calibrate: resuming from {self.partial} (done: stats{', ' if done else ''}{', '.join(done)}{where})")
        return optim

    # -- stage inputs ----------------------------------------------------------------------
    @torch.no_grad()
    def inputs_and_targets(self, part: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-sample inputs/targets of a part, computed with the parts calibrated before it."""
        xs = [lr for lr, _, _ in self.pairs]
        vae_quantized = self.q.quant_config.vae is not None
        if part == "encoder":
            return xs, [self.fp.encode(x) for x in xs]
        zs = [(self.q if vae_quantized else self.fp).encode(x) for x in xs]
        if part == "unet":
            return zs, [self.fp.denoise(z) for z in zs]
        z0s = [self.q.denoise(z) for z in zs]
        return z0s, [hr for _, hr, _ in self.pairs]

    # -- running ---------------------------------------------------------------------------
    def run(self) -> dict:
        optim_saved = self.try_resume()
        if not self.state["stats_done"]:
            xs = [lr for lr, _, _ in self.pairs]
            t0 = time.perf_counter()
            statistics_pass(self.q, _batches(xs, self.plan.stats_batch_size), progress=self.progress)
            self.state["stats_seconds"] = round(time.perf_counter() - t0, 2)
            self.state["stats_done"] = True
            if self.eval_fn is not None:
                self.state["init_eval"] = self.eval_fn(self.q)
            self._save()
        done = {s["name"] for s in self.state["stages"]}
        for stage in plan_stages(self.q, self.plan):
            if stage.name in done:
                continue
            cur = self.state["current"]
            resume = cur if cur and cur["name"] == stage.name else None
            self._run_stage(stage, resume, optim_saved if resume else {})
        return self.state

    def _run_stage(self, stage: Stage, resume: dict | None, optim_saved: dict) -> None:
        s = stage.settings
        if s.loss not in LOSSES:
            raise ValueError(f"unknown loss function {s.loss!r}; choose one of {', '.join(LOSSES)}")
        loss_fn = LOSSES[s.loss]
        mods = part_modules(self.q, stage.part)
        forward = part_forward(self.q, stage.part)
        inputs, targets = self.inputs_and_targets(stage.part)
        params = let_parameters(mods) if stage.kind == "let" else lbq_parameters(mods)
        for p in self.q.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=s.lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(s.milestones), gamma=s.gamma)
        rec = resume or {"name": stage.name, "epochs_done": 0, "seconds": 0.0, "epoch_losses": []}
        if resume:
            self._restore_optimizer(opt, optim_saved)
            with warnings.catch_warnings():  # fast-forwarding the schedule, not skipping a step
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(rec["epochs_done"]):
                    sched.step()
        if stage.kind == "let":  # ranges follow each batch while the transformation moves
            for m in mods:
                set_observers(m, act="minmax", weight="minmax", let=False)
        n_params = sum(p.numel() for p in params)
        bar = tqdm(total=s.epochs * len(inputs), initial=rec["epochs_done"] * len(inputs),
                   desc=f"{stage.name} ({n_params} params)", disable=not self.progress, leave=False)
        try:
            for epoch in range(rec["epochs_done"], s.epochs):
                t0 = time.perf_counter()
                g = torch.Generator().manual_seed(self.plan.seed * 1000 + epoch)
                order = torch.randperm(len(inputs), generator=g).tolist()
                losses = []
                for i in range(0, len(order), s.batch_size):
                    idx = order[i:i + s.batch_size]
                    x = torch.cat([inputs[j] for j in idx])
                    y = torch.cat([targets[j] for j in idx])
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(forward(x).float(), y.float())
                    loss.backward()
                    opt.step()
                    losses.append(loss.item())
                    bar.update(len(idx))
                    bar.set_postfix(loss=f"{loss.item():.4g}")
                sched.step()
                rec["epochs_done"] = epoch + 1
                rec["epoch_losses"].append(sum(losses) / len(losses))
                rec["seconds"] += time.perf_counter() - t0
                self.state["current"] = rec
                if rec["epochs_done"] % self.plan.save_interval == 0 and rec["epochs_done"] < s.epochs:
                    self._save(opt)
        finally:
            bar.close()
            for p in params:
                p.requires_grad_(False)
            for m in mods:
                set_observers(m, act=None, weight=None, let=False)
        if stage.kind == "let":
            t0 = time.perf_counter()
            refresh_activation_ranges(self.q, stage.part, inputs, self.plan.stats_batch_size)
            rec["seconds"] += time.perf_counter() - t0
        losses = rec["epoch_losses"]
        self.state["stages"].append({
            "name": stage.name, "params": n_params, "epochs": s.epochs, "lr": s.lr,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "seconds": round(rec["seconds"], 2),
        })
        self.state["current"] = None
        self._save()

    @staticmethod
    def _restore_optimizer(opt: torch.optim.Optimizer, saved: dict[str, torch.Tensor]) -> None:
        if not saved:
            return
        sd = opt.state_dict()
        n = len(sd["param_groups"][0]["params"])
        state = {}
        for i in range(n):
            entry = {k.split(".", 2)[2]: v for k, v in saved.items() if k.startswith(f"optim.{i}.")}
            if entry:
                state[i] = entry
        sd["state"] = state
        opt.load_state_dict(sd)
