"""passion-calibrate: PassionSR YAML parsing, DQC stages, resume after interruption, clear errors."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from passion_deploy.calibrate.dqc import DQC, DQCPlan, StageSettings, plan_stages
from passion_deploy.calibrate.job import load_job
from passion_deploy.checkpoint import quant_state_dict
from passion_deploy.cli.calibrate import main as calibrate_main
from passion_deploy.config import NAMED_CONFIGS, ConfigError
from passion_deploy.models import build_pipeline
from passion_deploy.quant import quantize_pipeline

SEED = Path(__file__).parents[1] / "data" / "passionsr_ptq_seed.yaml"


def test_seed_readme_config_becomes_a_job():
    job = load_job(SEED, preset="tiny")
    assert job.device == "cuda:0" and job.cali_img_path.name == "cali_dataset"
    assert job.quant.vae is None and job.quant.unet.weight_bits == 8
    assert job.plan.unet == StageSettings(lr=1e-5, epochs=2, batch_size=1, milestones=(1,), gamma=0.1, loss="mse")
    assert job.plan.stats_batch_size == 4 and job.plan.save_interval == 2
    assert job.output == Path("results/quantize/saw_sep/U/W8A8")
    # without the shortcut, the SD paths of basic_config are the model source
    job = load_job(SEED)
    assert job.preset == "sd21" and job.weights == "hf-models/sd21"


def write_cfg(tmp_path, mutate):
    cfg = yaml.safe_load(SEED.read_text())
    mutate(cfg)
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.parametrize("mutate,fragment", [
    (lambda c: c.update(colour="red"), "unknown key 'colour'"),
    (lambda c: c.pop("cali_img_path"), "missing key 'cali_img_path'"),
    (lambda c: c["basic_config"].update(proces_size=3), "'basic_config.proces_size'"),
    (lambda c: c["quantize_config"].update(cali_epochs="two"), "'quantize_config.cali_epochs' must be a number"),
    (lambda c: c["quantize_config"]["Unet"].pop("act_quant_bits"), "'act_quant_bits'"),
    (lambda c: c["quantize_config"].update(Unet_train={"cali_learning_rte": 1}), "'quantize_config.Unet_train.cali_learning_rte'"),
    (lambda c: c["quantize_config"].update(scheduler={"milestones": [1], "gama": 0.1}), "'quantize_config.scheduler.gama'"),
])
def test_bad_configs_name_the_key_and_file(tmp_path, capsys, mutate, fragment):
    p = write_cfg(tmp_path, mutate)
    with pytest.raises(ConfigError) as e:
        load_job(p, preset="tiny")
    assert str(p) in str(e.value) and fragment in str(e.value)
    assert calibrate_main(["--config", str(p), "--preset", "tiny", "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_unet_vae_mode_stage_blocks(tmp_path):
    def mutate(c):
        q = c["quantize_config"]
        q["only_Unet"] = False
        q["Vae"] = dict(q["Unet"])
        q["encoder_train"] = {"cali_learning_rate": 1e-4, "cali_epochs": 1}
        q["decoder_train"] = {"loss_function": "l1"}

    job = load_job(write_cfg(tmp_path, mutate), preset="tiny")
    assert job.plan.encoder.lr == 1e-4 and job.plan.encoder.epochs == 1
    assert job.plan.decoder.loss == "l1" and job.plan.decoder.lr == 1e-5
    pipe = quantize_pipeline(build_pipeline("tiny"), job.quant)
    assert [s.name for s in plan_stages(pipe, job.plan)] == [
        "encoder.let", "encoder.lbq", "unet.let", "unet.lbq", "decoder.let", "decoder.lbq"]


def test_missing_images_and_cuda_are_clear(tmp_path, capsys):
    p = write_cfg(tmp_path, lambda c: c.update(cali_img_path=str(tmp_path / "none")))
    assert calibrate_main(["--config", str(p), "--preset", "tiny", "--device", "cpu", "--out", str(tmp_path / "o.safetensors")]) == 2
    assert "calibration image folder does not exist" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert calibrate_main(["--config", str(p), "--preset", "tiny", "--out", str(tmp_path / "o.safetensors")]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_job():
    g = torch.Generator().manual_seed(3)
    xs = torch.nn.functional.interpolate(torch.rand(3, 3, 6, 6, generator=g), size=(32, 32), mode="bicubic").clamp(0, 1)
    pairs = [(x[None], x[None], f"img{i}") for i, x in enumerate(xs)]
    plan = DQCPlan(unet=StageSettings(lr=1e-3, epochs=2), stats_batch_size=2, save_interval=1)
    return build_pipeline("tiny"), pairs, plan


def run_dqc(small_job, out, interrupt_after=None):
    fp, pairs, plan = small_job
    q = quantize_pipeline(copy.deepcopy(fp), NAMED_CONFIGS["w8a8-unet"])
    dqc = DQC(fp, q, pairs, plan, out, {"test": 1}, progress=False)
    if interrupt_after is not None:
        calls = {"n": 0}
        real = dqc._save

        def save_then_die(*a, **k):
            real(*a, **k)
            calls["n"] += 1
            if calls["n"] == interrupt_after:
                raise KeyboardInterrupt

        dqc._save = save_then_die
    return q, dqc.run()


def test_dqc_trains_and_resume_after_interruption_is_exact(small_job, tmp_path):
    ref_q, ref_state = run_dqc(small_job, tmp_path / "ref.safetensors")
    assert [s["name"] for s in ref_state["stages"]] == ["unet.let", "unet.lbq"]
    assert all(s["epochs"] == 2 and s["loss_last"] is not None for s in ref_state["stages"])
    # interrupted right after the mid-stage save of unet.let (saves: stats, let epoch 1, ...)
    out = tmp_path / "run.safetensors"
    with pytest.raises(KeyboardInterrupt):
        run_dqc(small_job, out, interrupt_after=2)
    partial = tmp_path / "run.partial.safetensors"
    assert partial.is_file() and not list(tmp_path.glob(".*tmp"))  # no half-written temp file left
    q, state = run_dqc(small_job, out)
    a, b = quant_state_dict(ref_q.unet), quant_state_dict(q.unet)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed calibration differs from an uninterrupted one"
    # training moved the LET parameters away from their statistics init
    fresh = quantize_pipeline(copy.deepcopy(small_job[0]), NAMED_CONFIGS["w8a8-unet"])
    assert not torch.equal(a["conv_in.let_offset"], quant_state_dict(fresh.unet)["conv_in.let_offset"])


def test_cli_end_to_end_stats_only(tmp_path):
    cali = tmp_path / "cali" / "hr"
    cali.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(cali / f"{i}.png")
    p = write_cfg(tmp_path, lambda c: (c.update(cali_img_path=str(cali.parent), device="cpu"),
                                       c["basic_config"].update(process_size=32)))
    out = tmp_path / "ck.safetensors"
    assert calibrate_main(["--config", str(p), "--preset", "tiny", "--out", str(out), "--stats-only", "--no-progress"]) == 0
    import json

    rep = json.loads((tmp_path / "ck.report.json").read_text())
    assert rep["stages"] == [] and rep["config"]["preset"] == "tiny"
    from passion_deploy.checkpoint import load_checkpoint

    assert load_checkpoint(out).latent_tile == (8, 8)
