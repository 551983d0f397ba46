"""study.search.searcher.AskTellSearcher against a real Optuna SQLite storage, called as Tune calls it (suggest,
on_trial_complete, save, restore) but without Ray running trials; and what importing study.search.driver changes."""

from __future__ import annotations

import functools
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import write_space
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from ray.tune.search import Searcher

from study.core.errors import UserError
from study.search.samplers import make_sampler
from study.search.searcher import AskTellSearcher, close_orphans
from study.search.space import load_space
from study.search.told import write_told

REPO = Path(__file__).resolve().parents[1]
OBJECTIVES = [("val_acc", "maximize"), ("nonzero_params", "minimize"), ("latency_ms_bs1", "minimize")]


@pytest.fixture
def space(tmp_path):
    """The test suite's tiny space: three objectives and a conditional prune_ratio."""
    return load_space(str(write_space(tmp_path / "tiny.yaml")))


def make(tmp_path: Path, space, *, sampler=None, objectives=OBJECTIVES, name: str = "s") -> AskTellSearcher:
    return AskTellSearcher(space.define_by_run() if hasattr(space, "define_by_run") else space,
                           objectives=objectives, storage_url=f"sqlite:///{tmp_path / 'optuna.db'}",
                           study_name=name, sampler=sampler or optuna.samplers.RandomSampler(seed=0),
                           run_dir=tmp_path)


def trials(tmp_path: Path, name: str = "s") -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    return sorted(study.get_trials(), key=lambda t: t.number)


def complete(number: int, val_acc: float = 90.0, **extra) -> dict:
    return {"trial_number": number, "trial_dir": f"trials/{number}", "status": "complete", "epoch": 4,
            "val_acc": val_acc, "nonzero_params": 1000 + number, "latency_ms_bs1": 0.05, "test_acc": 88.0, **extra}


def test_suggest_asks_optuna_one_trial_per_tune_trial(tmp_path, space):
    s = make(tmp_path, space)
    configs = [s.suggest(f"t{i}") for i in range(12)]
    assert [c["trial_number"] for c in configs] == list(range(12))
    stored = trials(tmp_path)
    assert [t.state for t in stored] == [TrialState.RUNNING] * 12
    for c, t in zip(configs, stored, strict=True):
        assert {k: v for k, v in c.items() if k != "trial_number"} == t.params
        assert ("prune_ratio" in c) == (c["prune_method"] != "none")  # the condition holds in Optuna's trials
    assert {c["prune_method"] for c in configs} > {"none"}
    assert s.suggest("t3") == configs[3]  # asked again for the same Tune trial: the same trial, nothing new
    assert len(trials(tmp_path)) == 12
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_acc", "nonzero_params", "latency_ms_bs1"]


def test_complete_pruned_and_fail_states_values_and_attrs(tmp_path, space):
    s = make(tmp_path, space)
    for i in range(6):
        s.suggest(f"t{i}")
    # the trial's resolved config comes in its result, flattened as Tune hands results to the searcher
    s.on_trial_complete("t0", complete(0, 91.5, **{"trial_config/width_mult": 0.5, "trial_config/epochs": 3}))
    # stopped by the scheduler: its last result was a "running" report with partial accuracy
    s.on_trial_complete("t1", {"trial_number": 1, "status": "running", "epoch": 1, "val_acc": 99.0,
                               "nonzero_params": 5, "params": 5, "loss": 0.1})
    s.on_trial_complete("t2", {"trial_number": 2, "status": "infeasible", "error": "infeasible: params 9 > max_params 1",
                               "params": 9, "nonzero_params": 9, "epoch": 0})
    s.on_trial_complete("t3", {"trial_number": 3, "status": "failed", "error": "RuntimeError: loss became nan"})
    s.on_trial_complete("t4", None, error=True)  # the process died twice: Tune gives no result
    s.on_trial_complete("t5")  # a pending trial Tune removed

    t = trials(tmp_path)
    assert [x.state for x in t] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.FAIL,
                                    TrialState.FAIL, TrialState.PRUNED]
    assert t[0].values == [91.5, 1000.0, 0.05]  # in the objectives' order
    assert t[0].user_attrs["status"] == "complete" and t[0].user_attrs["trial_dir"] == "trials/0"
    assert t[0].user_attrs["metrics"]["test_acc"] == 88.0
    assert t[0].user_attrs["config"] == {"width_mult": 0.5, "epochs": 3}
    assert not any(k.startswith("trial_config") for k in t[0].user_attrs["metrics"])  # the config, not a metric
    assert t[1].values is None  # never COMPLETE with partial values
    assert t[1].user_attrs["status"] == "early_stopped" and t[1].user_attrs["early_stopped_at_epoch"] == 1
    assert t[1].user_attrs["metrics"] == {"val_acc": 99.0, "epoch": 1, "params": 5, "nonzero_params": 5}
    assert t[2].user_attrs["status"] == "infeasible" and "max_params" in t[2].user_attrs["error"]
    assert t[2].user_attrs["metrics"] == {"params": 9, "nonzero_params": 9}
    assert t[3].user_attrs["status"] == "failed" and t[3].user_attrs["error"] == "RuntimeError: loss became nan"
    assert t[4].user_attrs["status"] == "failed" and "process died" in t[4].user_attrs["error"]
    assert t[5].user_attrs["status"] == "early_stopped"
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [x.number for x in study.best_trials] == [0]

    s.on_trial_complete("t0", complete(0, 10.0))  # told once: a second completion changes nothing
    assert trials(tmp_path)[0].values == [91.5, 1000.0, 0.05]


@pytest.mark.parametrize("bad", [None, float("nan")])
def test_complete_without_a_usable_objective_is_fail_not_a_crash(tmp_path, space, bad):
    s = make(tmp_path, space)
    s.suggest("t0")
    result = complete(0)
    if bad is None:
        del result["latency_ms_bs1"]  # reportable() drops NaN metrics from Tune results
    else:
        result["latency_ms_bs1"] = bad
    s.on_trial_complete("t0", result)
    t = trials(tmp_path)[0]
    assert t.state == TrialState.FAIL and t.user_attrs["status"] == "failed"
    assert "latency_ms_bs1" in t.user_attrs["error"]


def test_single_objective(tmp_path, space):
    s = make(tmp_path, space, objectives=[("val_acc", "maximize")])
    s.suggest("a")
    s.suggest("b")
    s.on_trial_complete("a", complete(0, 80.0))
    s.on_trial_complete("b", complete(1, 85.0))
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert study.best_trial.number == 1 and study.best_value == 85.0


def test_fixed_distributions_space(tmp_path):
    dists = {"alpha": FloatDistribution(0.0, 1.0), "width_mult": CategoricalDistribution([0.25, 0.5])}
    s = make(tmp_path, dists, objectives=[("val_acc", "maximize"), ("nonzero_params", "minimize")])
    c = s.suggest("a")
    assert set(c) == {"alpha", "width_mult", "trial_number"} and 0.0 <= c["alpha"] <= 1.0
    s.on_trial_complete("a", complete(0, 70.0))
    t = trials(tmp_path)[0]
    assert t.state == TrialState.COMPLETE and t.values == [70.0, 1000.0]
    assert t.distributions == dists


def test_enqueued_trials_come_first(tmp_path, space):
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                                directions=[d for _, d in OBJECTIVES])
    study.enqueue_trial({"width_mult": 0.25, "prune_method": "none", "temperature": 2.0, "alpha": 0.5})
    s = make(tmp_path, space)
    c = s.suggest("a")
    assert c == {"temperature": 2.0, "alpha": 0.5, "width_mult": 0.25, "prune_method": "none", "trial_number": 0}


def test_a_study_with_other_directions_is_refused(tmp_path, space):
    optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                        directions=["minimize", "minimize", "minimize"])
    with pytest.raises(UserError, match=r"directions .*--name"):
        make(tmp_path, space).suggest("a")


def seeded(tmp_path: Path, space, sampler: str = "tpe", trials: int | None = None, seed: int = 1) -> AskTellSearcher:
    """The searcher as run_search builds it: the sampler made afresh for each new trial from (seed, number)."""
    return AskTellSearcher(space.define_by_run(), objectives=OBJECTIVES, storage_url=f"sqlite:///{tmp_path / 'optuna.db'}",
                           study_name="s", run_dir=tmp_path, trials=trials, seed=seed,
                           sampler_factory=functools.partial(make_sampler, sampler))


def params_of(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "trial_number"}


def test_restore_rebuilds_from_storage_not_from_an_older_snapshot(tmp_path, space, monkeypatch):
    """A driver killed mid-study (the issue's race). Its last snapshot was taken after t0 was told, with t1 and t2
    in flight; after it, t1 was told and t3 and t4 were asked. Tune restores its trials from that snapshot (t0
    finished, t1 and t2 to run again) and never heard of t3 and t4. The resumed searcher hands out trials 3 and 4
    again (same parameters, same numbers) before it asks anything new, asks exactly as many as the study lacks,
    draws what the same study draws without a kill, and leaves nothing to close as an orphan."""
    (tmp_path / "killed").mkdir()
    (tmp_path / "calm").mkdir()
    calm = seeded(tmp_path / "calm", space, trials=6)  # the same study, never killed
    expected = [params_of(calm.suggest(f"c{i}")) for i in range(6)]
    assert calm.suggest("c6") == Searcher.FINISHED
    assert len({json.dumps(p, sort_keys=True) for p in expected}) == 6  # the seed's draws differ

    a = seeded(tmp_path / "killed", space, trials=6)
    a.optuna_study()  # run_search opens the study before Tune pickles the searcher into tuner.pkl, as it starts
    pickled = pickle.dumps(a)
    a.set_max_concurrency(2)
    for i in range(3):
        a.suggest(f"t{i}")
    a.on_trial_complete("t0", complete(0, 90.0))
    a.save(str(tmp_path / "killed" / "searcher-state.pkl"))
    a.on_trial_complete("t1", complete(1, 80.0))
    a.suggest("t3")
    a.on_trial_complete("t2", complete(2, 70.0))
    a.suggest("t4")
    # killed here: Optuna holds 0-2 finished and 3, 4 RUNNING; Tune's snapshot names t0 (done), t1 and t2 (running)

    b = pickle.loads(pickled)
    monkeypatch.setattr("study.search.searcher.read_tune_trials",
                        lambda d: {"t0": (0, False), "t1": (1, True), "t2": (2, True)})
    b.restore(str(tmp_path / "killed" / "searcher-state.pkl"))
    b.set_max_concurrency(2)
    assert b.numbers == {"t0": 0, "t1": 1, "t2": 2} and b.told == {"t0", "t1", "t2"}
    assert b.suggest("n0") is None  # Tune's restored t1 and t2 hold both slots until they end
    b.on_trial_complete("t1", complete(1, 2.0))  # replayed: Optuna already knows, nothing changes
    b.on_trial_complete("t2", complete(2, 3.0))
    handed = [b.suggest(f"n{i}") for i in range(2)]
    assert [c["trial_number"] for c in handed] == [3, 4]  # asked before the kill: handed out again, not redrawn
    assert [params_of(c) for c in handed] == expected[3:5]
    b.on_trial_complete("n0", complete(3, 60.0))
    t5 = b.suggest("n2")
    assert t5["trial_number"] == 5 and params_of(t5) == expected[5]  # the draw the unkilled study made
    b.on_trial_complete("n1", complete(4, 50.0))
    b.on_trial_complete("n2", complete(5, 40.0))
    assert b.suggest("n3") == Searcher.FINISHED  # exactly the trials asked

    t = trials(tmp_path / "killed")
    assert [x.number for x in t] == [0, 1, 2, 3, 4, 5]
    assert [x.state for x in t] == [TrialState.COMPLETE] * 6
    assert [x.values[0] for x in t] == [90.0, 80.0, 70.0, 60.0, 50.0, 40.0]  # told once each, the first time
    assert [x.params for x in t] == expected
    assert close_orphans(f"sqlite:///{tmp_path / 'killed' / 'optuna.db'}", "s") == 0


def test_a_study_with_no_tune_snapshot_hands_out_its_asked_trials_first(tmp_path, space):
    """Killed before Tune wrote any snapshot: the next run starts a fresh Tune, whose searcher finds the trials
    the killed driver asked in the storage and hands them out before asking new ones."""
    a = seeded(tmp_path, space, sampler="random", trials=4)
    first = [a.suggest(f"t{i}") for i in range(2)]
    b = seeded(tmp_path, space, sampler="random", trials=4)  # a new driver, a new Tune run
    again = [b.suggest(f"u{i}") for i in range(4)]
    assert again[:2] == first and [c["trial_number"] for c in again] == [0, 1, 2, 3]
    assert b.suggest("u4") == Searcher.FINISHED
    assert len(trials(tmp_path)) == 4


def test_an_end_written_but_not_told_is_told_on_resume(tmp_path, space, monkeypatch):
    """told.json is written before Optuna is told: a kill between the two leaves the trial RUNNING in Optuna;
    the resumed searcher tells it as recorded (and never hands it out to be trained again)."""
    a = seeded(tmp_path, space, sampler="random", trials=2)
    a.suggest("t0")
    a.suggest("t1")
    write_told(tmp_path / "trials" / "1", "early_stopped",
               {"trial_number": 1, "status": "running", "epoch": 2, "val_acc": 55.0}, False)
    monkeypatch.setattr("study.search.searcher.read_tune_trials", lambda d: {"t0": (0, True)})
    a.save(str(tmp_path / "state.pkl"))
    b = seeded(tmp_path, space, sampler="random", trials=2)
    b.restore(str(tmp_path / "state.pkl"))
    t = trials(tmp_path)
    assert t[1].state == TrialState.PRUNED and t[1].user_attrs["early_stopped_at_epoch"] == 2
    assert t[0].state == TrialState.RUNNING  # Tune runs it again
    assert b.suggest("n0") == Searcher.FINISHED


def test_a_trial_tune_finished_but_optuna_did_not_is_handed_out_again(tmp_path, space, monkeypatch):
    a = seeded(tmp_path, space, sampler="random", trials=1)
    a.suggest("t0")
    a.save(str(tmp_path / "state.pkl"))
    monkeypatch.setattr("study.search.searcher.read_tune_trials", lambda d: {"t0": (0, False)})  # TERMINATED in Tune
    b = seeded(tmp_path, space, sampler="random", trials=1)
    b.restore(str(tmp_path / "state.pkl"))
    assert b.suggest("n0")["trial_number"] == 0
    assert b.suggest("n1") == Searcher.FINISHED


def test_a_format_1_snapshot_resumes(tmp_path, space, monkeypatch):
    """A study started by the searcher before storage-first resume (it pickled a map and the sampler): only its
    study name is read."""
    (tmp_path / "old.pkl").write_bytes(pickle.dumps({"format": 1, "study_name": "s", "numbers": {"x": 0},
                                                     "told": [], "sampler": None}))
    monkeypatch.setattr("study.search.searcher.read_tune_trials", lambda d: {})
    b = seeded(tmp_path, space, sampler="random", trials=1)
    b.restore(str(tmp_path / "old.pkl"))
    assert b.numbers == {} and b.suggest("n0")["trial_number"] == 0


def test_restore_refuses_another_studys_state(tmp_path, space):
    a = make(tmp_path, space, name="one")
    a.suggest("x")
    a.save(str(tmp_path / "state.pkl"))
    with pytest.raises(UserError, match="'one', not 'two'"):
        make(tmp_path, space, name="two").restore(str(tmp_path / "state.pkl"))
    (tmp_path / "junk.pkl").write_bytes(pickle.dumps({"format": 0}))
    with pytest.raises(UserError, match="not a searcher state"):
        make(tmp_path, space, name="one").restore(str(tmp_path / "junk.pkl"))


def test_close_orphans_also_closes_waiting_trials(tmp_path):
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    study.enqueue_trial({"x": 1.0})
    study.ask()
    study.enqueue_trial({"x": 2.0})  # never asked for
    assert close_orphans(f"sqlite:///{tmp_path / 'optuna.db'}", "s") == 2
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.FAIL]
    assert all(t.user_attrs["status"] == "failed" for t in study.get_trials())


def test_importing_study_search_changes_no_environment():
    """Ray's settings are set by run_search (set_study_environment), not at import; and the import does not import
    Ray, so that they are in place before Ray reads them (RAY_DEDUP_LOGS when ray is imported)."""
    code = ("import json, os, sys; before = dict(os.environ); import study.search.driver; "
            "print(json.dumps({'same': dict(os.environ) == before, 'ray': 'ray' in sys.modules}))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TUNE_"))}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"same": True, "ray": False}


def test_run_search_sets_the_environment_before_ray_starts(tmp_path):
    """run_search calls set_study_environment before Ray is imported or started (a user's own value wins): the
    environment is checked at the moment `ray` is first imported, and again when Ray would start."""
    space = write_space(tmp_path / "s.yaml", trial={"dataset": "digits", "kd_loss": "ce", "epochs": 1,
                                                    "finetune_epochs": 0, "device": "cpu"},
                        params={"width_mult": {"type": "categorical", "choices": [0.25, 0.5]}})
    code = f"""
import json, os, sys
names = ["RAY_USAGE_STATS_ENABLED", "RAY_DEDUP_LOGS", "RAY_CHDIR_TO_TRIAL_DIR", "RAY_AIR_NEW_OUTPUT",
         "TUNE_DISABLE_STRICT_METRIC_CHECKING", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"]
at_import = {{}}
class Watch:  # records the environment when `ray` is first imported
    def find_spec(self, name, path=None, target=None):
        if name == "ray" and not at_import:
            at_import.update({{n: os.environ.get(n) for n in names}})
        return None
sys.meta_path.insert(0, Watch())
import study.search.driver as search
assert "ray" not in sys.modules
class Stop(Exception):
    pass
def init_ray(*args, **kwargs):
    print(json.dumps({{"env": {{n: os.environ.get(n) for n in names}}, "at_import": at_import}}))
    raise Stop
search._init_ray = init_ray
try:
    search.run_search({str(space)!r}, name="env", runs_dir={str(tmp_path / "runs")!r}, summary=False)
except Stop:
    pass
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TUNE_"))}
    env["RAY_DEDUP_LOGS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["env"] == {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "1", "RAY_CHDIR_TO_TRIAL_DIR": "0",
                           "RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
                           "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
    assert seen["at_import"] == seen["env"]
