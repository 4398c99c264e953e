"""Config values out of range and unknown keys are reported before any expensive work starts."""
import pytest

from ccdlib.config import CCDConfig, RunConfig, apply_overrides, config_from_dict, config_to_dict, load_config
from ccdlib.errors import ConfigError


def test_defaults_are_the_papers():
    cfg = RunConfig()
    assert (cfg.ccd.r, cfg.ccd.offset, cfg.ccd.bound, cfg.ccd.ls, cfg.ccd.h_max) == (0.2, 80.0, 4.0, 20.0, 2.0)
    assert (cfg.ccd.warmup_steps, cfg.ccd.warmup_epochs, cfg.ccd.resolution, cfg.ccd.cam_threshold) == (628, None, 640, 0.95)
    assert cfg.ccd.box_rule == "minmax" and cfg.ccd.bias_fallback == "mean"
    assert (cfg.cdul.grid, cfg.cdul.theta, cfg.cdul.lam) == (3, 0.0, 0.0)
    assert (cfg.student.batch_size, cfg.student.coeff, cfg.student.lr) == (16, 3.0, 1e-5)
    # budgets in optimiser steps: the released CCD run on VOC07 trainval (10 and 2 epochs of ceil(5011 / 16) steps)
    assert (cfg.steps, cfg.eval_every_steps, cfg.epochs) == (3140, 314, None)
    assert (cfg.cdul.ga_warmup_steps, cfg.cdul.ga_every_steps) == (314, 314)


@pytest.mark.parametrize("override, culprit", [
    ("ccd.r=1.5", "ccd.r"),
    ("ccd.r=-0.1", "ccd.r"),
    ("ccd.offset=-1", "ccd.offset"),
    ("student.batch_size=0", "batch_size"),
    ("student.batch_size=-4", "batch_size"),
    ("epochs=0", "epochs"),
    ("method=magic", "method"),
    ("ccd.box_rule=diagonal", "box_rule"),
    ("teacher.backend=hub", "teacher.backend"),
    ("data.kind=voc2007", "data.root"),
])
def test_out_of_range_values(override, culprit):
    with pytest.raises(ConfigError, match=culprit.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_keys_in_yaml_and_set(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("method: ccd\nccd:\n  r: 0.3\n  radius: 5\n")
    with pytest.raises(ConfigError, match=r"ccd\.radius"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"ccd\.rr"):
        load_config(None, ["ccd.rr=0.5"])
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(None, ["learning_rate=0.1"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["ccd.r"])


def test_missing_config_file_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_round_trip_and_overrides(tmp_path):
    cfg = load_config(None, ["ccd.r=0.5", "method=cdul", "teacher.templates=['a {}', 'the {}']"])
    assert cfg.ccd.r == 0.5 and cfg.method == "cdul" and cfg.teacher.templates == ("a {}", "the {}")
    again = config_from_dict(config_to_dict(cfg))
    assert again == cfg and again.name == cfg.name
    assert cfg.name != RunConfig().name


def test_warmup_must_leave_epochs():
    with pytest.raises(ConfigError, match="warmup"):
        RunConfig(epochs=2, ccd=CCDConfig(warmup_epochs=2))


def test_empty_templates_rejected():
    with pytest.raises(ConfigError, match="template"):
        load_config(None, ["teacher.templates=[]"])
