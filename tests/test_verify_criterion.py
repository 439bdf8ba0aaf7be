"""--verify's pass criterion: components at the bar, end to end at the bar or within 1 dB of the
fake-quant model's own sensitivity when that is lower."""
from passion_deploy.export.verify import judge, verdict_line


def report(unet, e2e, sens):
    return {"components": {"unet": {"psnr_vs_fakequant_db": unet}, "vae_decoder": {"psnr_vs_fakequant_db": "inf"}},
            "end_to_end": {"psnr_vs_fakequant_db": e2e}, "reference_sensitivity_db": {"per_probe": sens}}


def test_absolute_bar_when_the_reference_is_stable():
    assert judge(report(50.0, 46.0, ["inf", 48.0]), 45.0)["passed"]
    c = judge(report(50.0, 44.0, ["inf", "inf"]), 45.0)
    assert not c["passed"] and c["end_to_end_bar_db"] == 45.0 and not c["end_to_end_bar_from_reference_sensitivity"]


def test_end_to_end_bar_follows_a_less_stable_reference():
    c = judge(report(47.3, 37.3, [36.66, 37.5, 36.79]), 45.0)
    assert c["passed"] and c["end_to_end_bar_db"] == 35.66 and c["end_to_end_bar_from_reference_sensitivity"]
    assert not judge(report(47.3, 35.5, [36.66, 37.5]), 45.0)["passed"]  # more than 1 dB below the reference's own level


def test_every_component_must_reach_the_bar():
    r = report(44.9, 46.0, ["inf"])
    r["criterion"] = c = judge(r, 45.0)
    assert not c["passed"] and c["components_below_bar"] == ["unet"]
    assert "FAIL" in verdict_line(r) and "unet" in verdict_line(r)
