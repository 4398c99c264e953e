"""Issue 23 §2.9: the library's defaults are the study's where they are safe, and every run says what it used.

- ``teacher.conse_hierarchy`` unset (``None``) is on for the ConSE teacher and off for open_clip (resolved in
  ``TeacherConfig.__post_init__``, so an open_clip config stays valid and keeps its run name);
- ``teacher.dtype`` and ``student.head_dtype`` default to ``"auto"``: bfloat16 where the device runs it natively
  (:mod:`ccdlib.precision`: ``torch.cuda.is_bf16_supported`` on CUDA, the ``avx512_bf16`` / ``amx_bf16`` CPU flags),
  resolved when the teacher / trainer is built; the resolved value is in the teacher's cache key and in
  ``result.json`` (``info.precision``);
- a run prints one line before its work: teacher, precision (resolved, auto or set), schedule;
- ``notebooks/params/default.yaml`` sets all three explicitly, so ``make reproduce``'s run names are unchanged.

CPU flags and CUDA support are monkeypatched (``ccdlib.precision.CPUINFO``, ``torch.cuda.is_bf16_supported``).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

import ccdlib.precision as precision
from ccdlib.config import RunConfig, config_to_dict, load_config, run_config_from_params
from ccdlib.datasets import ClassList, MultiLabelDataset
from ccdlib.errors import ConfigError
from ccdlib.precision import bfloat16_support, cpu_bf16_flags, resolve_precision
from ccdlib.run_setup import precision_info, schedule_description, setup_line
from ccdlib.schedule import training_schedule
from ccdlib.student import StudentConfig
from ccdlib.tables import config_params
from ccdlib.teachers import ConSETeacher, Teacher, TeacherConfig, build_teacher

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "notebooks" / "params"


def _cpuinfo(tmp_path: Path, monkeypatch, flags: str | None, name: str = "cpuinfo") -> Path:
    """Point ccdlib.precision at a cpuinfo file whose every processor has ``flags`` (None: no file at all)."""
    p = tmp_path / name
    if flags is not None:
        p.write_text("".join(f"processor\t: {i}\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 {flags}\n\n"
                             for i in range(2)))
    monkeypatch.setattr(precision, "CPUINFO", str(p))
    return p


@pytest.fixture
def bf16_cpu(tmp_path, monkeypatch):
    _cpuinfo(tmp_path, monkeypatch, "avx512f avx512_bf16", name="bf16_cpuinfo")


@pytest.fixture
def plain_cpu(tmp_path, monkeypatch):
    _cpuinfo(tmp_path, monkeypatch, "avx512f avx512_vnni", name="plain_cpuinfo")


# --------------------------------------------------------------------------------------------- detection
@pytest.mark.parametrize("flags, found", [("avx512f avx512_bf16", ["avx512_bf16"]), ("amx_tile amx_bf16", ["amx_bf16"]),
                                          ("avx512_bf16 amx_bf16", ["avx512_bf16", "amx_bf16"]),
                                          ("avx512f avx512_vnni avx512_bf16x", []), (None, [])])
def test_cpu_bfloat16_is_detected_from_the_cpu_flags(tmp_path, monkeypatch, flags, found):
    _cpuinfo(tmp_path, monkeypatch, flags)
    assert cpu_bf16_flags() == found
    ok, why = bfloat16_support("cpu")
    assert ok is bool(found)
    assert why == ("CPU flag " + "+".join(found) if found else "no avx512_bf16/amx_bf16 CPU flag")
    assert resolve_precision("auto", "cpu") == ("bfloat16" if found else "float32")
    # explicit values are kept whatever the CPU
    assert resolve_precision("float32", "cpu") == "float32" and resolve_precision("bfloat16", "cpu") == "bfloat16"


@pytest.mark.parametrize("supported", [True, False])
def test_cuda_bfloat16_is_asked_of_torch_without_emulation(monkeypatch, supported):
    seen = []

    def fake(**kw):
        seen.append(kw)
        return supported
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", fake)
    assert bfloat16_support(torch.device("cuda")) == (supported, "CUDA bfloat16" if supported
                                                      else "no native bfloat16 on this GPU")
    assert resolve_precision("auto", "cuda") == ("bfloat16" if supported else "float32")
    assert seen and all(kw == {"including_emulation": False} for kw in seen)   # emulated bfloat16 is not fast


def test_other_devices_resolve_to_float32():
    assert bfloat16_support(torch.device("meta"))[0] is False
    assert resolve_precision("auto", torch.device("meta")) == "float32"


# --------------------------------------------------------------------------------------------- the defaults
def test_the_library_defaults_are_auto_precision_and_the_hierarchy_for_conse():
    cfg = RunConfig()
    assert (cfg.teacher.backend, cfg.teacher.conse_hierarchy, cfg.teacher.dtype) == ("conse", True, "auto")
    assert cfg.student.head_dtype == "auto"
    assert load_config(None, []).teacher.conse_hierarchy is True                     # the CLI's config, no file
    assert TeacherConfig(conse_hierarchy=False).conse_hierarchy is False             # explicit off is kept
    assert load_config(None, ["teacher.conse_hierarchy=null"]).teacher.conse_hierarchy is True   # null = auto
    # the resolved default hashes as the explicit setting: one run, one name
    assert RunConfig().name == RunConfig(teacher=TeacherConfig(conse_hierarchy=True)).name


def test_open_clip_configs_stay_valid_with_the_hierarchy_off():
    t = TeacherConfig(backend="open_clip", arch="RN50")
    assert t.conse_hierarchy is False and t.dtype == "auto"
    cfg = load_config(None, ["teacher.backend=open_clip", "teacher.arch=RN50"])
    assert cfg.teacher.conse_hierarchy is False
    # its run name is the one it had when False was the default
    assert cfg.name == load_config(None, ["teacher.backend=open_clip", "teacher.arch=RN50",
                                          "teacher.conse_hierarchy=false"]).name
    with pytest.raises(ConfigError, match="conse_hierarchy needs teacher.backend='conse'"):
        TeacherConfig(backend="open_clip", arch="RN50", conse_hierarchy=True)
    with pytest.raises(ConfigError, match="conse_hierarchy"):
        load_config(None, ["teacher.backend=open_clip", "teacher.arch=RN50", "teacher.conse_hierarchy=true"])


@pytest.mark.parametrize("name", ["voc2007", "voc2012", "coco2014", "nuswide"])
def test_the_papers_configs_keep_float32_and_no_hierarchy(name):
    cfg = run_config_from_params(config_params(yaml.safe_load((PARAMS / f"{name}.yaml").read_text())))
    assert (cfg.teacher.backend, cfg.teacher.conse_hierarchy, cfg.teacher.dtype) == ("open_clip", False, "float32")
    assert (cfg.student.mode, cfg.student.head_dtype) == ("finetune", "float32")


def test_precision_values_are_checked():
    for bad in ("float16", "half", "AUTO"):
        with pytest.raises(ConfigError, match="teacher.dtype must be one of"):
            TeacherConfig(dtype=bad)
        with pytest.raises(ConfigError, match="head_dtype must be one of"):
            StudentConfig(head_dtype=bad)
    StudentConfig(mode="finetune", head_dtype="auto")                   # auto is fine in finetune mode (float32)
    with pytest.raises(ConfigError, match="frozen mode only"):
        StudentConfig(mode="finetune", head_dtype="bfloat16")


def test_head_auto_resolves_on_the_device_and_float32_in_finetune(bf16_cpu):
    assert StudentConfig().resolved_head_dtype("cpu") == "bfloat16"
    assert StudentConfig(head_dtype="float32").resolved_head_dtype("cpu") == "float32"
    assert StudentConfig(mode="finetune").resolved_head_dtype("cpu") == "float32"


def test_head_auto_resolves_to_float32_without_the_flags(plain_cpu):
    assert StudentConfig().resolved_head_dtype("cpu") == "float32"
    assert StudentConfig(head_dtype="bfloat16").resolved_head_dtype("cpu") == "bfloat16"   # as asked


@pytest.mark.parametrize("flags, head", [("avx512_bf16", "bfloat16"), ("avx2", "float32")])
def test_the_trainer_resolves_auto_when_built(tmp_path, monkeypatch, flags, head):
    from ccdlib.trainer import StudentTrainer
    _cpuinfo(tmp_path, monkeypatch, flags)
    kw = dict(trunk_weights="random", image_size=64, batch_size=2, device="cpu")
    tr = StudentTrainer(StudentConfig(**kw), ["a.jpg", "b.jpg"], 3, progress=False)
    assert (tr.config.head_dtype, tr.head_dtype_auto) == (head, True)
    set_ = StudentTrainer(StudentConfig(head_dtype="float32", **kw), ["a.jpg", "b.jpg"], 3, progress=False)
    assert (set_.config.head_dtype, set_.head_dtype_auto) == ("float32", False)


# --------------------------------------------------------------------------------------------- teacher and cache keys
@pytest.mark.parametrize("flags, resolved", [("avx512_bf16", "bfloat16"), ("avx2 avx512f", "float32")])
def test_teacher_auto_resolves_when_built_and_keys_the_cache_as_the_resolved_dtype(tmp_path, monkeypatch, flags,
                                                                                    resolved):
    _cpuinfo(tmp_path, monkeypatch, flags)
    auto = build_teacher(TeacherConfig(arch="efficientnet-lite0", device="cpu"))          # the defaults
    assert isinstance(auto, ConSETeacher) and auto.hierarchy is True                       # hierarchy on for conse
    assert (auto.dtype, auto.dtype_auto) == (resolved, True)
    explicit = ConSETeacher("efficientnet-lite0", hierarchy=True, device="cpu", dtype=resolved)
    assert explicit.dtype_auto is False
    assert auto.fingerprint() == explicit.fingerprint()      # auto reuses the cache entries of the explicit dtype
    assert ("dtype" in auto.fingerprint()) is (resolved == "bfloat16")   # float32 keeps its pre-"auto" keys


# --------------------------------------------------------------------------------------------- make reproduce
def test_default_yaml_sets_the_teacher_and_both_precisions_explicitly():
    data = yaml.safe_load((PARAMS / "default.yaml").read_text())
    assert (data["teacher_conse_hierarchy"], data["teacher_dtype"], data["student_head_dtype"]) == (
        True, "bfloat16", "bfloat16")
    d = config_to_dict(run_config_from_params(config_params(data)))
    assert (d["teacher"]["conse_hierarchy"], d["teacher"]["dtype"], d["student"]["head_dtype"]) == (
        True, "bfloat16", "bfloat16")


def test_default_yaml_run_names_are_the_committed_runs():
    """The names of notebook 04's shared-protocol runs (every seed and method) built from default.yaml are folders
    of the committed reports/runs/: the new library defaults did not move make reproduce's runs."""
    runs = ROOT / "reports" / "runs"
    if not runs.is_dir():
        pytest.skip("no committed reports/runs/")
    data = yaml.safe_load((PARAMS / "default.yaml").read_text())
    base = run_config_from_params(config_params(data), out_dir="runs")
    proto = dataclasses.replace(base, data=dataclasses.replace(base.data, stamps="shared"))
    names = [dataclasses.replace(proto, method=m, seed=s).name for s in data["seeds"]
             for m in ("teacher_global", "cdul", "ccd", "supervised")]
    missing = [n for n in names if not (runs / n).is_dir()]
    assert not missing, missing


# --------------------------------------------------------------------------------------------- the printed line
def test_schedule_description_names_steps_checkpoints_warmup_and_alignments():
    ccd = RunConfig(method="ccd")
    s = training_schedule(ccd, 320)
    text = schedule_description(ccd, s)
    assert text.startswith("3140 steps (157 passes of 20), checkpoints every 320 steps (10), CCD warm-up ")
    assert text.endswith(f"CCD warm-up {s.steps_before_update} steps ({s.warmup_passes} passes)")
    cdul = RunConfig(method="cdul")
    s = training_schedule(cdul, 320)
    assert f"CDUL alignments {len(s.align_passes)} (passes ending at steps " in schedule_description(cdul, s)
    sup = run_config_from_params(dict(method="supervised", epochs=3))
    assert schedule_description(sup, training_schedule(sup, 32)) == "6 steps (3 passes of 2), a checkpoint every " \
                                                                      "pass (3)"


def test_setup_line_says_teacher_precision_and_schedule(bf16_cpu):
    cfg = RunConfig(method="ccd")
    line = setup_line(cfg, 320)
    assert line.startswith(f"run {cfg.name}: teacher conse efficientnet-lite2, hierarchy on; ")
    assert "; precision teacher bfloat16 (auto: CPU flag avx512_bf16), head bfloat16 (auto: CPU flag avx512_bf16); " \
           in line
    assert "; schedule 3140 steps (157 passes of 20)" in line and "\n" not in line
    clip = run_config_from_params(dict(method="supervised", teacher_backend="open_clip", teacher_arch="RN50",
                                       teacher_dtype="float32", student_mode="finetune"))
    line = setup_line(clip, 320)
    assert "teacher open_clip RN50; precision teacher float32 (set), head float32 (auto: finetune trains in float32)" \
           in line


class _ColourTeacher(Teacher):
    """A fast stand-in teacher (the mean colour of a view) whose precision is resolved as a real one's."""

    def __init__(self, dtype: str):
        self.image_size, self.logit_scale, self.device = 8, 10.0, torch.device("cpu")
        self._mean, self._std, self._pixel_range = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0
        self.dtype, self.dtype_auto = resolve_precision(dtype, self.device), dtype == "auto"

    def fingerprint(self) -> dict:
        return {"backend": "colour-test", **self._dtype_key()}

    @torch.no_grad()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        return F.normalize(batch.mean((2, 3)) + 1e-3, dim=-1)


def _tiny_context(tmp_path: Path, cfg: RunConfig):
    from ccdlib.context import Context
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for i in range(6):
        arr = np.full((48, 48, 3), 20, np.uint8)
        arr[4:24, 4:24, i % 3] = 250
        arr += rng.integers(0, 5, arr.shape, dtype=np.uint8)
        p = tmp_path / f"img{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
        labels.append(np.eye(3, dtype=np.uint8)[i % 3])
    classes = ClassList(("red", "green", "blue"), ("red", "green", "blue"))
    train = MultiLabelDataset("tiny", [f"i{i}" for i in range(6)], paths, np.stack(labels), classes)
    test = MultiLabelDataset("tiny-test", [f"t{i}" for i in range(3)], paths[3:], np.stack(labels[3:]), classes)
    return Context(cfg=cfg, train=train, test=test, teacher=_ColourTeacher(cfg.teacher.dtype),
                   classifier=torch.eye(3), cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("flags, resolved", [("avx512_bf16", "bfloat16"), ("avx2", "float32")])
def test_a_run_prints_its_setup_and_records_the_resolved_precision(tmp_path, monkeypatch, capsys, flags, resolved):
    from ccdlib.runs import run
    _cpuinfo(tmp_path, monkeypatch, flags)
    student = StudentConfig(trunk_weights="random", image_size=64, batch_size=3, device="cpu", n_aug_views=1)
    cfg = RunConfig(method="supervised", epochs=1, student=student, teacher=TeacherConfig(device="cpu"),
                    out_dir=str(tmp_path / "results"), cache_dir=str(tmp_path / "cache"))
    ctx = _tiny_context(tmp_path, cfg)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = run(cfg, ctx=ctx)
    finally:
        torch.set_num_threads(n)
    why = "CPU flag avx512_bf16" if resolved == "bfloat16" else "no avx512_bf16/amx_bf16 CPU flag"
    expected = {"teacher": resolved, "teacher_auto": True, "teacher_detected": why,
                "head": resolved, "head_auto": True, "head_detected": why}
    assert res["info"]["precision"] == expected
    saved = json.loads((tmp_path / "results" / cfg.name / "result.json").read_text())
    assert saved["info"]["precision"] == expected and saved["config"]["teacher"]["dtype"] == "auto"
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith(f"run {cfg.name}: ")]
    assert lines == [f"run {cfg.name}: teacher conse efficientnet-lite2, hierarchy on; precision teacher {resolved} "
                     f"(auto: {why}), head {resolved} (auto: {why}); schedule 2 steps (1 pass of 2), a checkpoint "
                     f"every pass (1)"]
    assert out.index(lines[0]) < out.index("checkpoint 1/1")                  # before the work
    # reused results print no setup line (no work is done)
    again = run(cfg, ctx=ctx)
    assert again["info"]["precision"] == expected
    out = capsys.readouterr().out
    assert f"reusing results of {cfg.name}" in out and f"run {cfg.name}: " not in out


def test_precision_info_with_explicit_values_says_set(plain_cpu):
    cfg = run_config_from_params(dict(teacher_dtype="bfloat16", student_head_dtype="float32"))
    assert precision_info(cfg) == {"teacher": "bfloat16", "teacher_auto": False, "head": "float32",
                                   "head_auto": False}
