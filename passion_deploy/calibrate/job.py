"""PassionSR's PTQ YAML (seed README) -> a calibration job: model source, data, quant config, DQC plan.

Every key of the schema is known; an unknown or missing key is one clear error naming the key
and the file. `--preset` / `--weights` on the command line let a config omit the SD paths.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, QuantConfig, from_passion_block, load_yaml
from .dqc import DQCPlan, StageSettings

TOP_KEYS = {"device", "cali_img_path", "basic_config", "quantize_config"}
BASIC_KEYS = {"seed", "precision", "upscale", "process_size", "scale", "lora_weights_path",
              "pretrained_model_name_or_path", "config", "ckpt", "context_embedding_path", "align_method",
              "merge_lora"}
STAGE_KEYS = {"cali_batch_size", "cali_learning_rate", "cali_epochs", "loss_function", "scheduler"}
STAGE_BLOCKS = {"encoder_train": "encoder", "Unet_train": "unet", "decoder_train": "decoder"}


@dataclass
class CalibrationJob:
    source: Path
    device: str
    cali_img_path: Path
    preset: str
    weights: str | None
    lora: str | None
    context: str | None
    process_size: int
    quant: QuantConfig
    plan: DQCPlan
    output: Path | None  # quantize_config.output_modelpath, if any
    random_weights: int | None = None

    def describe(self) -> dict:
        """What identifies the job (a rerun with the same description resumes)."""
        return {"preset": self.preset, "weights": self.weights, "random_weights": self.random_weights, "lora": self.lora, "data": str(self.cali_img_path),
                "process_size": self.process_size, "quant": self.quant.to_dict(), "plan": repr(self.plan)}


def _require(d: dict, key: str, where: str, path: Path):
    if key not in d:
        raise ConfigError(f"{path}: missing key {where + key!r}")
    return d[key]


def _check_keys(d: dict, allowed: set[str], where: str, path: Path) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: {where.rstrip('.') or 'the top level'} must be a mapping")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown key {where + unknown[0]!r}")


def _number(v, key: str, path: Path, kind=float):
    try:
        out = kind(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: key {key!r} must be a number, got {v!r}") from None
    if out <= 0 and key.rsplit(".", 1)[-1] != "gamma":
        raise ConfigError(f"{path}: key {key!r} must be positive, got {v!r}")
    return out


def _stage(block: dict, defaults: StageSettings, where: str, path: Path) -> StageSettings:
    _check_keys(block, STAGE_KEYS, where, path)
    lr = _number(block.get("cali_learning_rate", defaults.lr), where + "cali_learning_rate", path)
    epochs = _number(block.get("cali_epochs", defaults.epochs), where + "cali_epochs", path, int)
    batch = _number(block.get("cali_batch_size", defaults.batch_size), where + "cali_batch_size", path, int)
    loss = str(block.get("loss_function", defaults.loss)).lower()
    if loss not in ("mse", "l1"):
        raise ConfigError(f"{path}: key {where + 'loss_function'!r} must be mse or l1, got {loss!r}")
    sched = block.get("scheduler", {"milestones": list(defaults.milestones), "gamma": defaults.gamma})
    _check_keys(sched, {"milestones", "gamma"}, where + "scheduler.", path)
    milestones = tuple(int(m) for m in sched.get("milestones", defaults.milestones))
    gamma = _number(sched.get("gamma", defaults.gamma), where + "scheduler.gamma", path)
    return StageSettings(lr=lr, epochs=epochs, batch_size=batch, milestones=milestones, gamma=gamma, loss=loss)


def load_job(path: str | Path, preset: str | None = None, weights: str | None = None, device: str | None = None,
             random_weights: int | None = None, lora: str | None = None) -> CalibrationJob:
    path = Path(path)
    data = load_yaml(path)
    _check_keys(data, TOP_KEYS, "", path)
    qc = _require(data, "quantize_config", "", path)
    cali = Path(str(_require(data, "cali_img_path", "", path)))
    if not cali.is_absolute():
        cali = (path.parent / cali) if (path.parent / cali).exists() else cali
    basic = data.get("basic_config", {}) or {}
    _check_keys(basic, BASIC_KEYS, "basic_config.", path)
    quant = from_passion_block(qc, str(path))

    # model source: command-line shortcuts replace basic_config's SD paths (weights, LoRA, context)
    context = None
    if preset is None and weights is None and random_weights is None:
        if lora is None and basic.get("merge_lora", False) and basic.get("lora_weights_path"):
            lora = str(basic["lora_weights_path"])
        context = basic.get("context_embedding_path")
    if preset is None:
        preset = "sd21"
        if weights is None and random_weights is None:
            weights = basic.get("pretrained_model_name_or_path") or basic.get("ckpt")
            if weights is None:
                raise ConfigError(f"{path}: missing key 'basic_config.pretrained_model_name_or_path' "
                                  "(or pass --preset tiny / --weights PATH)")
    size = _number(basic.get("process_size", 512 if preset == "sd21" else 128), "basic_config.process_size", path, int)

    top = StageSettings(
        lr=_number(qc.get("cali_learning_rate", 1e-5), "quantize_config.cali_learning_rate", path),
        epochs=_number(qc.get("cali_epochs", 2), "quantize_config.cali_epochs", path, int),
        batch_size=1,  # DQC trains per sample (spec section 5); cali_batch_size is the statistics batch
        loss=str(qc.get("loss_function", "mse")).lower(),
    )
    top = _stage({k: v for k, v in qc.items() if k == "scheduler"}, top, "quantize_config.", path)
    stages = {part: top for part in ("encoder", "unet", "decoder")}
    for block, part in STAGE_BLOCKS.items():
        if block in qc:
            stages[part] = _stage(qc[block] or {}, top, f"quantize_config.{block}.", path)
    plan = DQCPlan(
        encoder=stages["encoder"], unet=stages["unet"], decoder=stages["decoder"],
        stats_batch_size=_number(qc.get("cali_batch_size", 4), "quantize_config.cali_batch_size", path, int),
        save_interval=_number(qc.get("save_interval", 2), "quantize_config.save_interval", path, int),
        seed=int(basic.get("seed", 42)),
    )
    out = qc.get("output_modelpath")
    return CalibrationJob(
        source=path, device=device or str(data.get("device", "cpu")), cali_img_path=cali, preset=preset,
        weights=None if random_weights is not None else (str(weights) if weights else None),
        lora=lora, context=context, process_size=size, quant=quant, plan=plan,
        output=Path(out) if out else None, random_weights=random_weights,
    )
