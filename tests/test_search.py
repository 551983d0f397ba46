"""Search studies with real Ray and real Optuna (SQLite) storage, on digits with a tiny budget."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import TINY_TRIAL, write_space
from optuna.trial import TrialState

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def load(run_dir: Path) -> optuna.Study:
    meta = json.loads((run_dir / "study.json").read_text())
    return optuna.load_study(study_name=meta["study_name"], storage=meta["storage"])


@pytest.fixture(scope="module")
def small_study(tmp_path_factory, ray_session):
    from study.search.driver import run_search

    tmp = tmp_path_factory.mktemp("study")
    # both built-ins (width 1.0: outside this space's widths, so trained beside the search) and one of the user's
    # that lies in the space (enqueued as the first trial)
    search = {"sampler": "tpe", "seed": 0, "trials": 4, "concurrent": 2, "scheduler": "none", "confirm_seeds": 1}
    space = write_space(tmp / "tiny.yaml", search=search, baselines=[
        "seed_recipe", "no_kd", {"name": "mine", "width_mult": 0.5, "prune_method": "none"}])
    run_dir = run_search(str(space), name="small", runs_dir=str(tmp / "runs"))  # the engine: no results.csv yet
    return run_dir


def test_small_study_end_to_end(small_study):
    study = load(small_study)
    assert len(study.directions) == 3  # multi-objective stays multi-objective
    trials = study.get_trials()
    assert len(trials) == 4
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete, [t.user_attrs for t in trials]
    for t in complete:
        assert len(t.values) == 3
        m = json.loads((small_study / t.user_attrs["trial_dir"] / "metrics.json").read_text())
        assert m["epochs_done"] == m["epochs"] + m["finetune_epochs"]  # fully trained
        assert t.values[0] == pytest.approx(m["val_acc"])
        assert t.values[1] == m["nonzero_params"]
    assert study.best_trials
    for ref in ("teacher", "student_ce", "student_kd"):
        assert (small_study / "references" / ref / "metrics.json").exists(), ref
    # no early stopping and trials far shorter than report_every_s: one report per trial, its final result
    assert all(r == [(4, "complete")] for r in tune_reports(small_study).values()), tune_reports(small_study)


def test_built_in_baselines_are_trained_labelled_and_compared(small_study):
    from benchmarks.collect import read_results, run_benchmarks

    meta = json.loads((small_study / "study.json").read_text())
    assert list(meta["baselines"]) == ["seed_recipe", "no_kd", "mine"]
    assert "width_mult 1.0 is outside params.width_mult" in meta["baselines"]["seed_recipe"]["outside_space"]
    recipe = json.loads((small_study / "baselines" / "seed_recipe" / "metrics.json").read_text())
    assert (recipe["kd_loss"], recipe["temperature"], recipe["alpha"], recipe["width_mult"]) == ("kd", 4.0, 0.3, 1.0)
    assert (recipe["prune_method"], recipe["prune_ratio"], recipe["finetune_epochs"]) == ("l1_structured", 0.3, 5)
    assert recipe["epochs"] == TINY_TRIAL["epochs"] and recipe["params_reduction"] > 0.3  # the study's protocol
    no_kd = json.loads((small_study / "baselines" / "no_kd" / "metrics.json").read_text())
    assert no_kd["kd_loss"] == "ce" and no_kd["prune_method"] == "none" and no_kd["teacher_mode"] == "none"
    bench = run_benchmarks(small_study, remeasure=False, log=lambda _: None)
    df = read_results(small_study)
    rows = df[df["state"] == "BASELINE"].set_index("baseline")
    assert sorted(rows.index) == ["no_kd", "seed_recipe"]
    assert rows.loc["seed_recipe", "val_acc"] == pytest.approx(recipe["val_acc"])
    assert rows["number"].isna().all() and not rows["on_front"].any()
    from study.search.summary import print_summary

    printed: list[str] = []
    print_summary(small_study, meta["storage"], meta["study_name"],
                  [(o["name"], o["direction"]) for o in meta["objectives"]], log=printed.append)
    at = printed.index(next(p for p in printed if p.startswith("baselines (")))
    assert [p.split()[0] for p in printed[at + 1:at + 4]] == ["seed_recipe", "no_kd", "mine"]  # labelled rows
    assert "mine (trial 0)" in printed[at + 3]
    assert any(p.startswith("baseline seed_recipe: ") for p in printed)  # the comparison line (benchmark.json)
    lines = {b["name"]: b for b in json.loads((small_study / "benchmark.json").read_text())["baselines"]}
    assert lines.keys() == {"seed_recipe", "no_kd", "mine"} and bench["knee"]["trial"] in bench["pareto_trials"]
    assert lines["mine"]["trial"] == 0 and lines["seed_recipe"]["trial"] is None
    searched = {int(n) for n in df.loc[(df["state"] == "COMPLETE") & df["baseline"].isna(), "number"]}
    for b in lines.values():
        assert b["line"].startswith(f"{b['name']}: ") and ("dominated by searched trial" in b["line"]
                                                           or "not dominated by any searched trial" in b["line"])
        assert set(b["dominated_by"]) <= searched and set(b["dominates"]) <= searched


def test_a_baseline_in_the_space_is_the_first_trial_and_never_trained_twice(small_study):
    meta = json.loads((small_study / "study.json").read_text())
    assert meta["baselines"]["mine"]["trial"] == 0 and "outside_space" not in meta["baselines"]["mine"]
    first = load(small_study).trials[0]
    assert first.user_attrs["baseline"] == "mine" and first.params["width_mult"] == 0.5
    assert first.params["prune_method"] == "none" and "prune_ratio" not in first.params
    cfg = yaml.safe_load((small_study / "trials" / "0" / "config.yaml").read_text())
    assert cfg == meta["baselines"]["mine"]["config"]  # exactly the baseline, by the trial rules
    assert not (small_study / "baselines" / "mine").exists()  # trained once: as the trial
    assert (small_study / "baselines" / "seed_recipe" / "metrics.json").is_file()  # outside: trained beside


def test_confirmation_seeds_and_verdicts_on_seed_means(small_study):
    from benchmarks.collect import run_benchmarks
    from study.app import confirm_front
    from study.search.results import load_study_plan

    meta = load_study_plan(small_study)
    printed: list[str] = []
    confirm_front(small_study, meta, log=printed.append)
    plan = json.loads((small_study / "confirm" / "plan.json").read_text())
    assert plan["seeds"] == [1]
    labels = [c["label"] for c in plan["candidates"]]
    assert {"trial 0 (baseline mine)", "baseline seed_recipe", "baseline no_kd"} <= set(labels)
    assert len(labels) == len(set(labels))
    for c in plan["candidates"]:
        key = f"trial-{c['trial']}" if c["trial"] is not None else f"baseline-{c['baseline']}"
        m = json.loads((small_study / "confirm" / key / "seed_1" / "metrics.json").read_text())
        assert m["seed"] == 1 and m["split_seed"] == 0  # another seed, the study's validation split
    done = json.loads((small_study / "confirm" / "done.json").read_text())
    assert done["seeds"] == done["seeds_trained_now"] == len(labels) and not done["errors"]
    confirm_front(small_study, meta, log=printed.append)  # a rerun keeps every finished seed
    again = json.loads((small_study / "confirm" / "done.json").read_text())
    assert again["seeds_trained_now"] == 0 and again["epochs"] == done["epochs"]
    bench = run_benchmarks(small_study, remeasure=False, log=lambda _: None)
    conf = bench["confirmed"]
    assert {v["baseline"] for v in conf["baselines"]} == {"seed_recipe", "no_kd", "mine"}
    for v in conf["baselines"]:
        assert "(2 seeds: test " in v["line"] and "trial-epochs" in v["line"], v["line"]
    rows = {r["label"]: r for r in conf["candidates"]}
    recipe = rows["baseline seed_recipe"]
    assert recipe["n_seeds"] == 2 and recipe["test_acc_std"] >= 0
    assert recipe["test_acc_mean"] == pytest.approx(sum(s["test_acc"] for s in recipe["seeds"]) / 2)
    compute = bench["compute"]
    complete = [t for t in load(small_study).trials if t.user_attrs.get("status") == "complete"]
    assert compute["trial_epochs"] == len(complete) * (TINY_TRIAL["epochs"] + TINY_TRIAL["finetune_epochs"])
    assert compute["one_baseline_epochs"] == TINY_TRIAL["epochs"] + 5  # seed_recipe fine-tunes 5 epochs
    assert compute["confirm_epochs"] == done["epochs"] > 0


def test_conditional_parameter_absent_when_off(small_study):
    for t in load(small_study).get_trials():
        assert ("prune_ratio" in t.params) == (t.params["prune_method"] != "none"), t.params


def run_enqueued(tmp_path: Path, name: str, space: Path, queue: list[dict]) -> Path:
    """Run a study whose first trials are the given configurations, in order (Optuna's enqueue_trial)."""
    from study.search.driver import run_search

    run_dir = tmp_path / "runs" / name
    run_dir.mkdir(parents=True)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{run_dir / 'optuna.db'}",
                                directions=["maximize", "minimize"])
    for params in queue:
        study.enqueue_trial(params)
    run_search(str(space), name=name, runs_dir=str(tmp_path / "runs"))
    return run_dir


def test_early_stopped_infeasible_and_failing_trials(tmp_path, ray_session):
    """Enqueued configurations make every case deterministic: a good trial, two dominated slow learners (MO-ASHA
    stops them: PRUNED), a model over the params constraint (never trained: FAIL/infeasible) and a NaN loss (FAIL),
    after which the study still goes on."""
    space = write_space(
        tmp_path / "s.yaml", trial={k: v for k, v in TINY_TRIAL.items() if k != "lr"},
        params={"lr": {"type": "categorical", "choices": [0.1, 1.0e-6, 1.0e9]},
                "width_mult": {"type": "categorical", "choices": [0.25, 1.0]}},
        objectives={"val_acc": "maximize", "params": "minimize"},
        constraints={"max_params": 20000},
        search={"sampler": "random", "trials": 6, "concurrent": 1, "scheduler": "mo_asha", "grace_epochs": 1,
                "reduction_factor": 3})
    run_dir = run_enqueued(tmp_path, "cases", space, [
        {"lr": 0.1, "width_mult": 0.25}, {"lr": 1e-6, "width_mult": 0.25}, {"lr": 1e-6, "width_mult": 0.25},
        {"lr": 0.1, "width_mult": 1.0}, {"lr": 1e9, "width_mult": 0.25}, {"lr": 0.1, "width_mult": 0.25}])

    trials = sorted(load(run_dir).get_trials(), key=lambda t: t.number)
    status = [t.user_attrs.get("status") for t in trials]
    assert status[0] == "complete" and status[5] == "complete"  # the study went on after the failure
    # the space says `baselines: []`: none trained, none recorded
    assert not (run_dir / "baselines").exists()
    assert json.loads((run_dir / "study.json").read_text())["baselines"] == {}
    assert status[1] == status[2] == "early_stopped"
    assert trials[1].state == trials[2].state == TrialState.PRUNED
    assert trials[1].values is None  # never COMPLETE with partial values
    assert status[3] == "infeasible" and trials[3].state == TrialState.FAIL
    assert "params" in trials[3].user_attrs["error"] and "max_params" in trials[3].user_attrs["error"]
    assert not (run_dir / "trials" / "3" / "model.pt").exists()  # never trained
    assert not (run_dir / "trials" / "3" / "epochs.csv").exists()
    assert status[4] == "failed" and trials[4].state == TrialState.FAIL
    assert "loss became" in trials[4].user_attrs["error"]
    front = load(run_dir).best_trials
    assert {t.number for t in front} <= {0, 5}
    # Trials report to Tune only at the rung epochs (1 and 3 of 4), not after every epoch; progress.json has all.
    reports = tune_reports(run_dir)
    assert reports[0] == [(1, "running"), (3, "running"), (4, "complete")]
    assert reports[1] == reports[2] == [(1, "running")]
    assert json.loads((run_dir / "trials" / "0" / "progress.json").read_text())["epoch"] == 4


def tune_reports(run_dir: Path) -> dict[int, list[tuple[int, str]]]:
    """Optuna trial number -> [(epoch, status)] of every result the trial reported to Ray Tune."""
    out: dict[int, list[tuple[int, str]]] = {}
    for path in (run_dir / "ray" / "tune").glob("*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_number"]] = [(r["epoch"], r["status"]) for r in rows]
    return out


def _kill_tree(proc: subprocess.Popen | None, marker: str) -> None:
    """SIGKILL the driver, then the Ray processes it started (they ignore SIGTERM), found by an env marker."""
    if proc is not None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(1)
    needle = f"KDSTUDY_TEST_MARKER={marker}".encode()
    for pid_dir in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (pid_dir / "environ").read_bytes().split(b"\0"):
                os.kill(int(pid_dir.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def sampler_draws(space_path: Path, n: int, tmp: Path) -> list[dict]:
    """The parameters the study's searcher draws for trials 0..n-1 when nothing is killed and no trial has ended
    (every one of them a startup draw of the seed): a searcher over a fresh storage, as run_search builds it."""
    from study.search.driver import enqueue_baselines, make_searcher
    from study.search.space import load_space

    space = load_space(str(space_path))
    tmp.mkdir(parents=True, exist_ok=True)
    s = make_searcher(space, objectives=list(space.objectives), storage_url=f"sqlite:///{tmp / 'draws.db'}",
                      study_name="draws", run_dir=tmp, trials=n)
    placed = {name: space.baseline_params(name)[0] for name, _ in space.baselines}
    enqueue_baselines(s.optuna_study(), {name: p for name, p in placed.items() if p is not None})
    return [{k: v for k, v in s.suggest(f"d{i}").items() if k != "trial_number"} for i in range(n)]


def check_exact_trials(run_dir: Path, space_path: Path, n: int) -> None:
    """The study holds exactly the n trials asked, all finished for real reasons (none orphaned, none left RUNNING
    or WAITING), each in its own folder, with the parameters the seeded sampler draws without a kill: no parameter
    set asked twice unless the sampler drew it twice."""
    trials = sorted(load(run_dir).get_trials(), key=lambda t: t.number)
    described = [(t.number, t.state.name, t.user_attrs.get("status"), t.user_attrs.get("error"), t.params)
                 for t in trials]
    assert len(trials) == n, described  # trial count exactly as asked
    assert all(t.user_attrs.get("status") in ("complete", "early_stopped", "infeasible") for t in trials), described
    assert not [t for t in trials if str(t.user_attrs.get("error", "")).startswith("orphaned")], described
    assert len({t.user_attrs["trial_dir"] for t in trials}) == n  # no duplicates
    drawn = sampler_draws(space_path, n, run_dir.parent / "draws")
    asked = [t.params for t in trials]
    assert asked == drawn, described  # seeded: the same configurations as the same study without a kill
    key = [json.dumps(p, sort_keys=True) for p in asked]
    assert len(set(key)) == len({json.dumps(p, sort_keys=True) for p in drawn})  # no set asked twice


def test_sigkilled_study_resumes_without_duplicates_or_losses(tmp_path):
    """The driver SIGKILLed (its whole process group, and the Ray processes it started) while a trial is finished
    and another is mid-way, with Tune's default snapshot period (at most every 10 s: its snapshot is then usually
    older than the trials the searcher asked), then the same command run again. The study ends with exactly the 5
    trials asked, the seeded sampler's own draws (none drawn again), no orphan, the finished trial kept and the
    interrupted one continued from its newest checkpoint.

    Before storage-first resume this failed 2 runs in 8 (marked xfail): the restored searcher drew the seed's
    first configurations again and the trial asked last was closed as an orphan."""
    # long enough trials (40 epochs of ~0.05 s) that one is caught mid-way
    space = write_space(tmp_path / "s.yaml", trial={**TINY_TRIAL, "epochs": 36, "finetune_epochs": 4},
                        search={"sampler": "tpe", "seed": 1, "trials": 5, "concurrent": 2, "scheduler": "none",
                                "report_every_s": 0})  # a report + checkpoint after every epoch
    marker = f"kdtest-{os.getpid()}-{time.time_ns()}"
    import tempfile

    # a short temp dir: Ray's unix socket paths must stay under ~107 characters. Tune's snapshot period is left
    # at its default: whether its last snapshot names the newest trials and checkpoints is timing luck, and resume
    # must not depend on it.
    env = {**os.environ, "KDSTUDY_TEST_MARKER": marker, "RAY_TMPDIR": tempfile.mkdtemp(prefix="kr", dir="/tmp")}
    env.pop("TUNE_GLOBAL_CHECKPOINT_S", None)
    cmd = [sys.executable, "-m", "study", "run", str(space), "--name", "killed", "--runs-dir",
           str(tmp_path / "runs"), "--no-report"]
    run_dir = tmp_path / "runs" / "killed"
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    done_before: dict[str, float] = {}
    in_flight: set[str] = set()
    while time.time() < deadline:
        done_before = {p.parent.name: p.stat().st_mtime for p in run_dir.glob("trials/*/metrics.json")
                       if '"status": "complete"' in p.read_text()}
        # a trial that reported a checkpoint but has not finished: it must continue from it after the kill
        in_flight = {p.parent.name for p in run_dir.glob("trials/*/progress.json")
                     if 2 <= json.loads(p.read_text())["epoch"] <= 20} - set(done_before)
        if done_before and in_flight:  # killed at once: the trial's own kept checkpoint is what it resumes from
            break
        time.sleep(0.2)
    assert done_before, "no trial finished before the deadline: " + (tmp_path / "first.log").read_text()[-3000:]
    _kill_tree(proc, marker)

    t0 = time.time()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    _kill_tree(None, marker)
    (tmp_path / "second.log").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(f"resumed run: {time.time() - t0:.0f} s")
    print(r.stdout[-4000:])  # shown when a check below fails
    check_exact_trials(run_dir, space, 5)
    # Tune is handed no checkpoint (the trial keeps its own), so it never restores one its snapshot named and
    # num_to_keep deleted since: that failed the interrupted trial ("does not exist on storage anymore") 1 run in 5
    assert not list(run_dir.glob("ray/tune*/*/checkpoint_*"))
    for name, mtime in done_before.items():  # completed before the kill: not rerun
        assert (run_dir / "trials" / name / "metrics.json").stat().st_mtime == mtime
    resumed = [json.loads((run_dir / "trials" / n / "resumed.json").read_text()) for n in in_flight
               if (run_dir / "trials" / n / "resumed.json").exists()]
    assert resumed and all(r["done"] >= 1 or r["phase"] == "finetune" for r in resumed), (in_flight, resumed)
    # progress lines of the resumed run count on from the trials finished before the kill
    counts = [int(m.group(1)) for m in re.finditer(r"^\[(\d+)/5 ", r.stdout, re.MULTILINE)]  # Progress lines only
    assert counts and counts[-1] == 5 and counts == sorted(counts), r.stdout[-3000:]


def _finished_files(run_dir: Path) -> dict[str, int]:
    """mtime (ns) of every finished trial's metrics.json and every finished confirmation seed's files."""
    files = [p for p in run_dir.glob("trials/*/metrics.json") if '"status": "complete"' in p.read_text()]
    files += [p for p in run_dir.glob("confirm/*/seed_*/*.json") if (p.parent / "reproduce.json").is_file()]
    files += [p for p in run_dir.glob("references/*/metrics.json")] + list(run_dir.glob("baselines/*/metrics.json"))
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in files}


def test_killed_at_moments_of_its_own_progress_ends_with_exactly_the_trials_asked(tmp_path):
    """The driver SIGKILLed (process group and Ray processes) at moments read from the study's own progress, not
    after fixed sleeps: while the teacher trains, while the teacher-logit cache is built, while the first trial is
    mid-way (references and an outside baseline beside it), when trials have finished and one is mid-way, and
    while the end-of-study work trains the confirmation seeds; then the same command once more. The study ends
    with exactly the trials asked (the enqueued baseline first, then the seed's own draws, none drawn twice, none
    orphaned), nothing that had finished before a kill was trained again, the confirmation keeps its finished
    seeds, and the references, the baseline, results and report are all there."""
    import tempfile

    space = write_space(tmp_path / "s.yaml", trial={**TINY_TRIAL, "epochs": 20, "finetune_epochs": 4},
                        search={"sampler": "tpe", "seed": 3, "trials": 4, "concurrent": 2, "scheduler": "none",
                                "report_every_s": 0, "confirm_seeds": 1},
                        baselines=["seed_recipe", {"name": "mine", "width_mult": 0.5, "prune_method": "none"}])
    marker = f"kdtest-{os.getpid()}-{time.time_ns()}"
    env = {**os.environ, "KDSTUDY_TEST_MARKER": marker, "RAY_TMPDIR": tempfile.mkdtemp(prefix="kr", dir="/tmp"),
           "KDSTUDY_CACHE": str(tmp_path / "cache")}  # its own teacher cache: the teacher trains in this test
    env.pop("TUNE_GLOBAL_CHECKPOINT_S", None)
    cmd = [sys.executable, "-m", "study", "run", str(space), "--name", "moments", "--runs-dir",
           str(tmp_path / "runs")]
    run_dir = tmp_path / "runs" / "moments"

    def progress() -> list[int]:
        return [json.loads(p.read_text())["epoch"] for p in run_dir.glob("trials/*/progress.json")
                if not (p.parent / "metrics.json").exists()]

    def complete() -> int:
        return len([p for p in run_dir.glob("trials/*/metrics.json") if '"status": "complete"' in p.read_text()])

    def seeds_done() -> int:
        return len(list(run_dir.glob("confirm/*/seed_*/reproduce.json")))

    moments = [  # (name, is it now?) in the order a study passes them
        ("teacher", lambda log: "teacher epoch 2/" in log),
        ("teacher-logit cache", lambda log: "caching teacher logits" in log),
        ("first trial mid-way", lambda log: complete() == 0 and any(e >= 3 for e in progress())),
        ("trials finished, one mid-way", lambda log: complete() >= 2 and any(e >= 3 for e in progress())),
        ("confirmation seeds", lambda log: seeds_done() >= 1 and not (run_dir / "confirm" / "done.json").exists()),
    ]
    kept: dict[str, int] = {}
    for i, (name, now) in enumerate(moments):
        log_path = tmp_path / f"run{i}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=log,
                                    stderr=subprocess.STDOUT)
            deadline = time.time() + 420
            while time.time() < deadline and proc.poll() is None and not now(log_path.read_text()):
                time.sleep(0.1)
            hit = proc.poll() is None and now(log_path.read_text())
            kept = _finished_files(run_dir) if run_dir.exists() else {}
            _kill_tree(proc, marker)
            _kill_tree(None, marker)
        assert hit, f"the study passed '{name}' without the test seeing it: " + log_path.read_text()[-3000:]
        for path, mtime in kept.items():  # what had finished before this kill is still the same file
            assert (run_dir / path).stat().st_mtime_ns == mtime, (name, path)

    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    _kill_tree(None, marker)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    check_exact_trials(run_dir, space, 4)
    assert load(run_dir).trials[0].user_attrs["baseline"] == "mine"
    for path, mtime in kept.items():  # trials, references, baseline and confirmation seeds finished: not redone
        assert (run_dir / path).stat().st_mtime_ns == mtime, path
    done = json.loads((run_dir / "confirm" / "done.json").read_text())
    plan = json.loads((run_dir / "confirm" / "plan.json").read_text())
    kept_seeds = len([p for p in kept if p.startswith("confirm/") and p.endswith("reproduce.json")])
    assert kept_seeds >= 1 and done["seeds"] == len(plan["candidates"]) and not done["errors"]
    assert done["seeds_trained_now"] == done["seeds"] - kept_seeds  # only the missing seeds were trained
    for ref in ("teacher", "student_ce", "student_kd"):
        assert (run_dir / "references" / ref / "metrics.json").is_file(), ref
    assert (run_dir / "baselines" / "seed_recipe" / "metrics.json").is_file()
    assert (run_dir / "report.html").is_file() and (run_dir / "results.csv").is_file()
    assert not list(run_dir.glob("trials/*/checkpoint"))  # kept checkpoints go once their trial is trained


def test_a_trial_asked_but_never_asked_for_again_by_the_restored_tune_is_run_after_it(tmp_path, ray_session):
    """The rare leftover: Tune's restored search is finished (its saved search newer than its saved trials, a kill
    while it copied them) while Optuna holds an asked, unfinished trial. Made here by asking one more trial in a
    finished study's storage; the resumed study runs it (in ray/tune-rest when the restored Tune does not ask),
    under its own number and parameters, and closes nothing as an orphan."""
    from study.search.driver import make_searcher, run_search
    from study.search.space import load_space

    space = write_space(tmp_path / "s.yaml", search={"sampler": "random", "seed": 0, "trials": 2, "concurrent": 1,
                                                    "scheduler": "none"})
    run_dir = run_search(str(space), name="left", runs_dir=str(tmp_path / "runs"), summary=False)
    meta = json.loads((run_dir / "study.json").read_text())
    extra = make_searcher(load_space(str(space)), objectives=[(o["name"], o["direction"]) for o in meta["objectives"]],
                          storage_url=meta["storage"], study_name=meta["study_name"], run_dir=run_dir, trials=None)
    asked = extra.suggest("by-a-killed-driver")
    assert asked["trial_number"] == 2
    run_search(str(space), name="left", runs_dir=str(tmp_path / "runs"), summary=False)
    trials = sorted(load(run_dir).get_trials(), key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, [(t.number, t.user_attrs) for t in trials]
    assert trials[2].params == {k: v for k, v in asked.items() if k != "trial_number"}
    assert (run_dir / "trials" / "2" / "told.json").is_file()


def test_postgresql_storage(tmp_path, ray_session):
    """--storage with a PostgreSQL URL keeps the Optuna study there (for multi-node studies)."""
    url = os.environ.get("KDSTUDY_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("no PostgreSQL: run `.ci/postgres.sh` as root and export KDSTUDY_TEST_POSTGRES_URL to its output")
    from study.search.driver import run_search

    name = f"pg{os.getpid()}{time.time_ns() % 10**6}"
    space = write_space(tmp_path / "s.yaml", search={"sampler": "random", "trials": 2, "concurrent": 2,
                                                    "scheduler": "none"})
    run_dir = run_search(str(space), name=name, runs_dir=str(tmp_path / "runs"), storage=url)
    assert json.loads((run_dir / "study.json").read_text())["storage"] == url
    assert not (run_dir / "optuna.db").exists()
    study = optuna.load_study(study_name=name, storage=url)
    assert len(study.directions) == 3
    assert len(study.get_trials()) == 2
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials())


def test_ray_asha_stops_slow_learners_as_pruned(tmp_path, ray_session):
    """Ray's own ASHA (accuracy only) through the same searcher: stopped trials reach Optuna as PRUNED."""
    space = write_space(
        tmp_path / "s.yaml", trial={k: v for k, v in TINY_TRIAL.items() if k != "lr"},
        params={"lr": {"type": "categorical", "choices": [0.1, 1.0e-6]}},
        objectives={"val_acc": "maximize", "params": "minimize"},
        search={"sampler": "random", "trials": 3, "concurrent": 1, "scheduler": "asha", "grace_epochs": 2,
                "reduction_factor": 2})
    run_dir = run_enqueued(tmp_path, "asha", space, [{"lr": 0.1}, {"lr": 1e-6}, {"lr": 1e-6}])
    trials = sorted(load(run_dir).get_trials(), key=lambda t: t.number)
    assert trials[0].state == TrialState.COMPLETE
    assert [t.state for t in trials[1:]] == [TrialState.PRUNED, TrialState.PRUNED]
    assert all(t.user_attrs["early_stopped_at_epoch"] == 2 for t in trials[1:])


def test_a_running_study_shows_its_progress_and_rewrites_its_report(tmp_path):
    """`python -m study run` as a user starts it: while it runs, report.html is there, complete (written
    atomically) and counts the finished trials before the last trial ends; the progress lines carry kd_loss,
    quantize and the running summary; the run names the dashboard command and, at the end, which model to take."""
    import tempfile

    space = write_space(tmp_path / "live.yaml", search={"sampler": "tpe", "seed": 0, "trials": 3, "concurrent": 1,
                                                        "scheduler": "none", "confirm_seeds": 0})
    run_dir = tmp_path / "runs" / "live"
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="kl", dir="/tmp")}
    cmd = [sys.executable, "-m", "study", "run", str(space), "--name", "live", "--runs-dir", str(tmp_path / "runs"),
           "--live-report-s", "0"]
    out = open(tmp_path / "run.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    seen: dict[int, str] = {}  # finished trials (told.json files) when the report was read -> its text
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        report, told = run_dir / "report.html", len(list(run_dir.glob("trials/*/told.json")))
        if report.is_file() and told < 3:
            seen.setdefault(told, report.read_text())
        time.sleep(0.2)
    assert proc.wait(timeout=max(1, deadline - time.time())) == 0
    log = (tmp_path / "run.log").read_text()
    mid = {n: text for n, text in seen.items() if 1 <= n < 3}
    assert mid, f"report.html never seen while trials were still running: {sorted(seen)}\n{log[-3000:]}"
    for n, text in mid.items():  # never half-written; counts at least the trials finished when it was written
        assert text.endswith("</html>\n")
        complete = int(re.search(r"COMPLETE: (\d+)", text).group(1)) if "COMPLETE: " in text else 0
        assert 1 <= complete + text.count("INFEASIBLE: ") <= n, text[:2000]
    assert "Study live" in (run_dir / "report.html").read_text()

    assert "watch it live: optuna-dashboard sqlite:///" in log
    lines = [line for line in log.splitlines() if re.match(r"^\[\d+/3 ", line)]
    assert len(lines) == 3 and all(" kd=" in line and " q=" in line for line in lines), log[-3000:]
    so_far = [line for line in log.splitlines() if line.startswith("  so far: ")]
    assert len(so_far) == 3 and "trials 3 done / 0 running / 0 left" in so_far[-1], so_far
    assert "report: " in log and "rewritten as trials end" in log
    assert "Which model to take:" in log and f"kdstudy reproduce {run_dir} --knee" in log
    complete = [t for t in load(run_dir).get_trials() if t.state == TrialState.COMPLETE]
    assert complete and all(len(t.user_attrs["val_acc_by_epoch"]) == TINY_TRIAL["epochs"] +
                            TINY_TRIAL["finetune_epochs"] for t in complete)
