"""The search space file is validated as a whole; every mistake names the file, the key and the fix."""

from pathlib import Path

import pytest
import yaml
from conftest import TINY_TRIAL, write_space

from study.cli import main
from study.core.errors import SpaceError
from study.search.space import DefineByRun, load_space

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("space", sorted((REPO / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_spaces_are_valid(space):
    s = load_space(space)
    assert s.objectives[0] == ("val_acc", "maximize")
    assert s.trials >= 1


def test_demo_space_defaults():
    s = load_space(REPO / "search_spaces" / "demo.yaml")
    assert s.dataset if hasattr(s, "dataset") else True
    assert s.base_config().dataset == "digits"
    assert s.scheduler == "none" and s.trials >= 16 and s.concurrent == 2 and s.confirm_seeds == 2
    assert len(s.objectives) == 3


BAD = [
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"trial": {**TINY_TRIAL, "tempreature": 3}}, "Did you mean 'temperature'"),
    ({"trial": {**TINY_TRIAL, "alpha": 2.0}}, "alpha must be in [0, 1]"),
    ({"trial": {**TINY_TRIAL, "student_arch": "resnet9"}}, "student_arch: Unknown model 'resnet9'"),
    ({"trial": {**TINY_TRIAL, "teacher_precision": "fp8"}}, "teacher_precision must be auto, fp32 or bf16"),
    ({"params": {"alpha": {"type": "float", "low": 0.9, "high": 0.1}}}, "low (0.9) is greater than high (0.1)"),
    ({"params": {"alpha": {"type": "float", "low": 0.0, "high": 1.5}}}, "params.alpha: value 1.5 is invalid"),
    ({"params": {"temperature": {"type": "float", "low": 0, "high": 4, "log": True}}}, "log scale needs low > 0"),
    ({"params": {"prune_method": {"type": "categorical", "choices": ["none", "l3_magic"]}}}, "unknown choice 'l3_magic'"),
    ({"params": {"width_mult": {"type": "categorical", "choices": []}}}, "non-empty list"),
    ({"params": {"alpha": {"type": "gaussian", "low": 0, "high": 1}}}, "must be float, int or categorical"),
    ({"params": {"alfa": {"type": "float", "low": 0, "high": 1}}}, "Did you mean 'alpha'"),
    ({"params": {"alpha": {"type": "float", "low": 0, "high": 1, "lowe": 2}}}, "unknown key 'lowe'"),
    ({"params": {"prune_ratio": {"type": "float", "low": 0.1, "high": 0.5, "when": {"prune_method": ["l1_structured"]}}}},
     "'prune_method' must be a searched parameter listed before"),
    ({"params": {"prune_method": {"type": "categorical", "choices": ["none", "l1_structured"]},
                 "prune_ratio": {"type": "float", "low": 0.1, "high": 0.5, "when": {"prune_method": ["l2_structured"]}}}},
     "not among prune_method's choices"),
    ({"objectives": {"val_acc": "maximize", "flops": "minimize"}}, "objectives: unknown key 'flops'"),
    ({"objectives": {"val_acc": "maximize", "params": "smallest"}}, "direction must be maximize or minimize"),
    ({"objectives": {"test_acc": "maximize"}}, "the test split is for final numbers only"),
    ({"objectives": {"params": "minimize"}}, "must include val_acc"),
    ({"constraints": {"max_params": -3}}, "must be a positive number"),
    ({"constraints": {"max_flops": 3}}, "unknown key 'max_flops'"),
    ({"search": {"sampler": "cmaes"}}, "Unknown sampler 'cmaes'"),
    ({"search": {"scheduler": "hyperband"}}, "unknown scheduler 'hyperband'"),
    ({"search": {"trials": 0}}, "search.trials: must be a positive integer"),
    ({"search": {"reduction_factor": 1}}, "must be >= 2"),
    ({"search": {"report_every_s": -1}}, "search.report_every_s: must be a number of seconds >= 0"),
    ({"resources": {"cpus_per_trial": -1}}, "must be a number >= 0"),
    ({"params": {"alpha": None}}, "params.alpha: give a mapping"),
    ({"params": {"prune_method": {"type": "categorical", "choices": ["none", "l1_structured"]},
                 "prune_ratio": {"type": "float", "low": 0.1, "high": 0.5, "when": ["prune_method"]}}},
     "params.prune_ratio.when: must be a mapping"),
    ({"trial": {**TINY_TRIAL, "lr": -0.1}}, "lr must be > 0"),
    ({"trial": {**TINY_TRIAL, "finetune_lr": 0}}, "finetune_lr must be > 0"),
    ({"trial": {**TINY_TRIAL, "weight_decay": -1}}, "weight_decay must be >= 0"),
    ({"params": {"label_smoothing": {"type": "float", "low": 0.0, "high": 1.5}}}, "label_smoothing must be in [0, 1)"),
    ({"trial": {**TINY_TRIAL, "epochs": True}}, "'epochs' must be an int (got True)"),
    ({"trial": {**TINY_TRIAL, "val_size": 1.5}}, "val_size must be a fraction in (0, 1) or a whole number"),
    ({"trial": {**TINY_TRIAL, "student_arch": "torchvision:resnet18"},
      "params": {"width_mult": {"type": "categorical", "choices": [0.5, 1.5]}}}, "has no width knob"),
]


@pytest.mark.parametrize("sections,message", BAD, ids=[m for _, m in BAD])
def test_every_mistake_is_reported_with_file_and_key(tmp_path, sections, message):
    path = write_space(tmp_path / "bad.yaml", **sections)
    with pytest.raises(SpaceError) as err:
        load_space(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_param_fixed_and_searched_is_an_error(tmp_path):
    path = write_space(tmp_path / "bad.yaml")
    raw = yaml.safe_load(path.read_text())
    raw["trial"]["alpha"] = 0.5
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpaceError, match="also fixed under trial"):
        load_space(path)


def test_invalid_yaml_and_missing_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("trial: [unclosed\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(p)
    with pytest.raises(SpaceError, match="no such search space file"):
        load_space(tmp_path / "nope.yaml")


def test_cli_reports_one_sentence_and_exit_2(tmp_path, capsys):
    path = write_space(tmp_path / "bad.yaml", search={"sampler": "cmaes"})
    assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and str(path) in err
    assert not (tmp_path / "runs").exists()  # nothing started, nothing half-written


class FakeTrial:
    """Records suggestions like an Optuna trial; the define-by-run logic is what is under test."""

    number = 7

    def __init__(self, picks):
        self.picks, self.asked = picks, []

    def suggest_categorical(self, name, choices):
        self.asked.append(name)
        return self.picks.get(name, choices[0])

    def suggest_float(self, name, low, high, step=None, log=False):
        self.asked.append(name)
        return self.picks.get(name, low)

    def suggest_int(self, name, low, high, step=1, log=False):
        self.asked.append(name)
        return self.picks.get(name, low)


def test_conditional_parameter_absent_when_condition_off(tiny_space):
    fn = load_space(tiny_space).define_by_run()
    assert isinstance(fn, DefineByRun)
    off = FakeTrial({"prune_method": "none"})
    assert fn(off) == {"trial_number": 7}
    assert "prune_ratio" not in off.asked
    on = FakeTrial({"prune_method": "l1_structured"})
    fn(on)
    assert "prune_ratio" in on.asked


def test_define_by_run_is_picklable(tiny_space):
    import pickle

    fn = load_space(tiny_space).define_by_run()
    assert pickle.loads(pickle.dumps(fn)).params == fn.params


@pytest.mark.parametrize("name,spec", [
    ("seed", {"type": "int", "low": 0, "high": 3}),
    ("val_size", {"type": "float", "low": 0.1, "high": 0.3}),
    ("teacher_arch", {"type": "categorical", "choices": ["resnet14", "resnet20"]}),
    ("dataset", {"type": "categorical", "choices": ["digits"]}),
])
def test_study_level_fields_cannot_be_searched(tmp_path, name, spec):
    """One teacher and one split per study: searching them would leak validation images or mislabel trials."""
    trial = {k: v for k, v in TINY_TRIAL.items() if k != name}
    path = write_space(tmp_path / "bad.yaml", trial=trial, params={name: spec})
    with pytest.raises(SpaceError, match=f"params.{name}: cannot be searched"):
        load_space(path)


def test_int_step_must_be_a_positive_integer(tmp_path):
    path = write_space(tmp_path / "bad.yaml", params={"epochs": {"type": "int", "low": 2, "high": 4, "step": 0.5}})
    raw = yaml.safe_load(path.read_text())
    raw["trial"].pop("epochs")
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpaceError, match="step: must be a positive integer"):
        load_space(path)


@pytest.mark.parametrize("override,message", [
    ("prune_method=l2_structrued", "Did you mean 'l2_structured'"),
    ("device=gpu", "device must be auto, cpu, cuda or cuda:N"),
    ("teacher_cache=flase", "'teacher_cache' must be a bool"),
    ("threads=-1", "threads must be >= 0"),
])
def test_bad_set_values_fail_before_anything_is_written(tmp_path, capsys, override, message):
    space = write_space(tmp_path / "s.yaml")
    out = tmp_path / "out"
    assert main(["trial", str(space), "--set", override, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_epoch_choices_given_as_numbers_and_strings_give_the_longest_budget(tmp_path):
    path = write_space(tmp_path / "s.yaml", trial={k: v for k, v in TINY_TRIAL.items() if k != "epochs"},
                       params={"epochs": {"type": "categorical", "choices": [2, "4"]}})
    space = load_space(path)
    assert space.total_epochs == 4 + space.base_config().finetune_epochs


def test_resuming_a_run_with_a_broken_study_json_is_one_sentence(tmp_path, capsys):
    path = write_space(tmp_path / "s.yaml")
    run = tmp_path / "runs" / "broken"
    run.mkdir(parents=True)
    (run / "study.json").write_text("")  # e.g. emptied by a crash on a file system without ordered writes
    assert main(["run", str(path), "--name", "broken", "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "study.json is unreadable" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["run", "trial"])
def test_a_binary_space_file_is_one_sentence(tmp_path, capsys, command):
    path = tmp_path / "space.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    out = ["--runs-dir", str(tmp_path / "runs")] if command == "run" else ["--out", str(tmp_path / "out")]
    assert main([command, str(path), *out]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {path}: not a text YAML file (it holds bytes that are not UTF-8 text, such as an " \
                  "image's); give the path of the search space's .yaml file.\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]
