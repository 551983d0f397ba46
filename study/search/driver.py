"""`python -m study run SPACE`: a search study. Ray Tune schedules the trials, Optuna samples them.

Layout of runs/NAME/ (see docs/ARCHITECTURE.md): study.json, space.yaml, optuna.db, trials/<n>/, references/, ray/.
Running the same command again resumes the study (Tuner.restore), also after the driver was SIGKILLed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from study.core.errors import UserError
from study.core.io import write_json_atomic, write_text_atomic
from study.core.run_dir import RunDir
from study.search.plan import BaselinePlan, Objective, StudyPlan, TrialContext
from study.search.space import SearchSpace, load_space, resolve_space_path
from study.search.summary import print_summary


def set_study_environment() -> None:
    """Process-wide settings of a study run, set by `run_search` before it imports or starts Ray (never at import
    time: importing this module changes nothing, for tests, `import study` and the benchmarks). setdefault: a
    value the user exported wins. RAY_DEDUP_LOGS is read when `ray` is first imported (this module imports Ray
    only inside functions), RAY_USAGE_STATS_ENABLED by ray.init, the others when Tune runs; Tune passes
    RAY_CHDIR_TO_TRIAL_DIR on to its trial processes."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Tune's chdir into each trial folder breaks relative data paths; keep the user's working directory.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Infeasible and failed trials report no val_acc; the searcher tells Optuna FAIL for them itself.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # multivariate/group TPE (and constant_liar) are "experimental" only by label; they are what makes TPE handle
    # conditional parameters and concurrent trials well.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


# ---------------------------------------------------------------------------------------------- Optuna side
def make_searcher(space: SearchSpace, *, objectives, storage_url: str, study_name: str, run_dir: Path,
                  trials: int):
    """The study's searcher: the space's sampler built afresh for every new trial, seeded from (search.seed,
    trial number), so that a killed and resumed study draws what the same study run without a kill draws."""
    import functools

    from study.search.samplers import make_sampler
    from study.search.searcher import AskTellSearcher

    return AskTellSearcher(space.define_by_run(), objectives=objectives, storage_url=storage_url,
                           study_name=study_name, sampler=make_sampler(space.sampler, space.seed), run_dir=run_dir,
                           trials=trials, sampler_factory=functools.partial(make_sampler, space.sampler),
                           seed=space.seed)


# ---------------------------------------------------------------------------------------------- the run
def _versions() -> dict:
    """Versions of what runs the search; torch, torch-pruning and the code itself come from code_version()."""
    import optuna
    import ray

    return {"python": platform.python_version(), "ray": ray.__version__, "optuna": optuna.__version__,
            "platform": platform.platform()}


class _TeacherJob:
    """get_teacher + the teacher-logit cache in a background thread; result() joins and re-raises its error."""

    def __init__(self, base, epochs: int, log):
        import threading

        self._out: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, args=(base, epochs, log), name="kdstudy-teacher",
                                        daemon=True)
        self._thread.start()

    def _run(self, base, epochs: int, log) -> None:
        try:
            self._out["value"] = _prepare_teacher(base, epochs, log)
        except BaseException as exc:  # noqa: BLE001  handed to the main thread by result()
            self._out["error"] = exc

    def result(self) -> tuple[str, dict]:
        self._thread.join()
        if "error" in self._out:
            raise self._out["error"]
        return self._out["value"]


def _prepare_teacher(base, epochs: int, log) -> tuple[str, dict]:
    """(teacher checkpoint path, teacher info for study.json): trained or loaded, and its logit cache built."""
    from study.core.device import resolve_device
    from study.core.io import sha256_file
    from study.teacher.model import get_teacher

    _, info = get_teacher(base, resolve_device(base.device), log=log)
    path = info["path"]
    info = {**info, "sha256": sha256_file(path)}
    if base.teacher_cache:  # teacher logits for every (epoch, image) view of the schedule, shared by all trials
        from study.teacher.cache import ensure_teacher_cache

        t0 = time.time()
        manifest = ensure_teacher_cache(base, path, epochs, log=log)
        info["logit_cache"] = manifest["path"]
        log(f"teacher logit cache: {manifest['path']} ({time.time() - t0:.1f}s)")
    import torch

    if torch.cuda.is_available():  # the driver's teacher and cache pass are done: leave that GPU memory to trials
        torch.cuda.empty_cache()
    log(f"teacher {info['arch']}: val_acc {info['val_acc']:.2f}%  params {info['params']:,}  ({path})")
    return path, info


def _resolve_normalization(base, ds, old: StudyPlan | None, log):
    """(base with normalize resolved, ds normalised so, the record for study.json). A resumed study keeps the
    normalisation it started with (one started before normalize existed: the data's own statistics)."""
    from study.core.device import resolve_device
    from study.teacher.inputs import describe, resolve

    if old is not None and base.normalize == "auto":
        before = (old.normalization or {}).get("normalize", "dataset")
        base, ds, record = resolve(base.replace(normalize=before), ds, resolve_device(base.device), log)
        record["chosen_by"] = "kept from the study's start (resumed)"
    else:
        base, ds, record = resolve(base, ds, resolve_device(base.device), log)
    if not record.get("val_acc_by_candidate"):  # resolve says its own line when it scored the teacher
        log(f"input normalisation: {describe(record)}")
    return base, ds, record


def _teacher_warnings(info: dict, base, ds, run: RunDir | None, log, said: Sequence[str] = ()) -> list[str]:
    """The teacher-looks-wrong warnings (study.teacher.inputs.teacher_warnings), each printed once; with run_dir,
    also against the plain student reference (references/student_ce) once it is trained."""
    from study.teacher.inputs import teacher_warnings

    ref = None
    if run is not None:
        try:
            ref = json.loads((run.reference("student_ce") / "metrics.json").read_text()).get("val_acc")
        except (OSError, ValueError):
            ref = None
    found = teacher_warnings(info, classes=ds.classes, image_size=base.image_size,
                             input_shape=tuple(ds.train_x.shape[1:]), reference_val_acc=ref)
    for w in found:
        if w not in said:
            log(w)
    return found


def _init_ray(address: str | None, cpus_needed: float, side_cpus: float = 0.0) -> None:
    """Join `address`, or start a local Ray with enough logical CPUs for the concurrent trials (at least the
    machine's cores) plus `side_cpus` for the reference task. That one runs beside the trials instead of holding
    a trial's CPU, where Tune, which reuses its trial actors, would run short trials one at a time
    (docs/HOW_IT_RUNS.md)."""
    import ray

    if ray.is_initialized():
        return
    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError) as exc:
            raise UserError(f"--address {address}: cannot join the Ray cluster ({exc}); start one with "
                            "`ray start --head` (see scripts/slurm_study.sh) or drop --address to run "
                            "locally.") from None
    else:
        # address="local": always a fresh, light local Ray, even when a `ray start` cluster runs on this machine
        cpus = max(os.cpu_count() or 1, math.ceil(cpus_needed)) + math.ceil(side_cpus)
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, object_store_memory=200 * 2**20,
                 log_to_driver=False, configure_logging=False)


def _space_and_text(space) -> tuple[SearchSpace, str, str]:
    """(space, its file, the YAML text recorded as runs/NAME/space.yaml) for a path, a shipped space's name or
    a SearchSpace object; an object that differs from its file (dataclasses.replace) is recorded as its own YAML."""
    if isinstance(space, SearchSpace):
        on_disk = Path(space.path)
        if on_disk.is_file() and load_space(str(on_disk)) == space:
            return space, str(on_disk), on_disk.read_text()
        raw = dict(space.raw)  # params, objectives and baselines as loaded; trial, search, resources as now
        raw["name"], raw["trial"] = space.name, dict(space.trial)
        raw["resources"] = {"cpus_per_trial": space.cpus_per_trial, "gpus_per_trial": space.gpus_per_trial}
        raw["search"] = {**(raw.get("search") or {}), "sampler": space.sampler, "seed": space.seed,
                         "trials": space.trials, "concurrent": space.concurrent, "scheduler": space.scheduler,
                         "grace_epochs": space.grace_epochs, "reduction_factor": space.reduction_factor,
                         "confirm_seeds": space.confirm_seeds}
        return space, str(on_disk), yaml.safe_dump(raw, sort_keys=False)
    path = str(resolve_space_path(space))  # a path, or a shipped space's name
    return load_space(path), path, Path(path).read_text()


@dataclass(frozen=True)
class _Settings:
    """A study's settings: its space, name and folder, and the counts after the command line's overrides."""

    space: SearchSpace
    space_file: str
    space_text: str  # the YAML recorded as space.yaml
    name: str
    run: RunDir
    trials: int
    concurrent: int
    cpus: float  # per trial
    gpus: float  # per trial, as asked (0 when the cluster has no GPU: see _Side)


def _settings(space_file, name: str | None, trials: int | None, concurrent: int | None, runs_dir: str,
              gpus_per_trial: float | None, cpus_per_trial: float | None) -> _Settings:
    """The space loaded and the command line's values over its own; UserError for a bad name or count."""
    space, path, text = _space_and_text(space_file)
    name = name or space.name
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UserError(f"--name {name!r}: use letters, digits, '-', '_' and '.' only.")
    s = _Settings(space, path, text, name, RunDir((Path(runs_dir) / name).resolve()),
                  trials if trials is not None else space.trials,
                  concurrent if concurrent is not None else space.concurrent,
                  cpus_per_trial if cpus_per_trial is not None else space.cpus_per_trial,
                  gpus_per_trial if gpus_per_trial is not None else space.gpus_per_trial)
    if s.trials < 1 or s.concurrent < 1:
        raise UserError("--trials and --concurrent must be >= 1.")
    return s


def _resumed_plan(s: _Settings) -> StudyPlan | None:
    """The plan of the study being resumed (None: a new study); UserError when its study.json is unreadable or
    it was started from another space or trial count."""
    path = s.run.study_json
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is unreadable ({exc}); restore it from a backup, or start a new study "
                        "with --name.") from None
    if not isinstance(old, dict):
        raise UserError(f"{path} must hold a JSON object; restore it, or start a new study with --name.")
    if s.run.space_yaml.read_text() != s.space_text:
        raise UserError(f"{s.run.root} was started from a different version of {s.space_file}; "
                        f"restore that file, or start a new study with --name.")
    plan = StudyPlan.from_json(old)
    if plan.trials != s.trials:
        raise UserError(f"{s.run.root} was started with {plan.trials} trials; a resumed study keeps its "
                        f"trial count (drop --trials, or start a new study with --name).")
    return plan


@dataclass(frozen=True)
class _Inputs:
    """The data and settings every trial gets, checked: the space with normalize resolved, its base config."""

    space: SearchSpace
    base: Any  # TrialConfig
    ds: Any  # the loaded data set, normalised as the trials see it
    preflight: dict
    normalization: dict


def _check_inputs(space: SearchSpace, old: StudyPlan | None, log) -> _Inputs:
    """Load the data (a missing data set stops the study with one sentence, before Ray starts), check that the
    user's teacher and student families fit it, and resolve the input normalisation. The checks run in a thread
    that ends (docs/HOW_IT_RUNS.md: torch ops on the main thread slow the teacher thread's training)."""
    from concurrent.futures import ThreadPoolExecutor

    from study.data.datasets import load_dataset_for
    from study.search.preflight import check_study

    base = space.base_config()
    ds = load_dataset_for(base, log)
    with ThreadPoolExecutor(1, thread_name_prefix="kdstudy-preflight") as pool:
        preflight = pool.submit(check_study, space, ds).result()
        # the teacher's input normalisation, found (normalize: auto with a checkpoint: the teacher is scored on the
        # validation split) or as stated; every trial, reference and baseline gets the resolved value
        base, ds, normalization = pool.submit(_resolve_normalization, base, ds, old, log).result()
    space = dataclasses.replace(space, trial={**space.trial, "normalize": base.normalize})
    return _Inputs(space, base, ds, preflight, normalization)


def needs_teacher(space: SearchSpace) -> bool:
    """Whether a study trains (or loads) a teacher: some trial or baseline may use a KD loss. Unlike
    TrialConfig.uses_teacher this ignores alpha: the student_kd reference distils with the default alpha."""
    return (space.base_config().kd_loss != "ce" or any(p.name == "kd_loss" for p in space.params)
            or any(space.baseline_config(n).kd_loss != "ce" for n, _ in space.baselines))


@dataclass
class _Side:
    """What runs beside the trials, prepared before them: the code version, the teacher, the missing reference
    points and baselines, and the Ray resources of one trial."""

    code: dict
    teacher_path: str | None
    teacher_info: dict
    ref_kinds: list[str]
    placed: dict  # baseline name -> (its searched parameters, or None when outside the space; why)
    outside: dict[str, dict]  # the missing baselines trained beside the search
    resources: dict[str, float]


def _prepare_side(s: _Settings, inputs: _Inputs, address: str | None, log) -> _Side:
    """Record the code version, start Ray, and train (or load) the teacher and its logit cache in a thread while
    Ray starts (docs/HOW_IT_RUNS.md). If Ray fails to start, the error stops the study at once; the daemon
    thread dies with the process and leaves no half-written teacher: checkpoints are written atomically."""
    from study.core.io import code_version
    from study.search.references import missing_baselines, missing_references

    # the code that runs, as it is now: taken before the teacher trains (minutes, on a CPU), so that a file edited
    # in the meantime is not recorded as the study's
    code = code_version()
    space, base = inputs.space, inputs.base
    uses_kd = needs_teacher(space)
    ref_kinds = missing_references(s.run.references, has_teacher=uses_kd)
    # A baseline that lies in the space is a search trial (enqueued first); only the others are trained beside it.
    placed = {n: space.baseline_params(n) for n, _ in space.baselines}
    outside = missing_baselines(s.run.baselines, {n: v for n, v in space.baselines if placed[n][0] is None})
    # Ray and Tune are imported before the teacher thread starts, not while it trains: an import holds the GIL,
    # and the teacher's small-batch training loop needs it.
    import ray
    from ray import tune  # noqa: F401

    teacher = _TeacherJob(base, space.total_epochs, log) if uses_kd else None
    _init_ray(address, s.cpus * s.concurrent, side_cpus=s.cpus if ref_kinds or outside else 0.0)
    teacher_path, teacher_info = teacher.result() if teacher else (None, {})
    if teacher_info and base.teacher_checkpoint:  # a user's teacher that looks wrong is said out loud
        teacher_info["warnings"] = _teacher_warnings(teacher_info, base, inputs.ds, None, log)
    gpus = s.gpus
    if gpus > 0 and not ray.cluster_resources().get("GPU", 0) > 0:
        log(f"no GPU in the Ray cluster: running trials on CPUs ({s.cpus:g} per trial) instead of waiting for one")
        gpus = 0.0
    return _Side(code, teacher_path, teacher_info, ref_kinds, placed, outside, {"cpu": s.cpus, "gpu": gpus})


def _study_plan(s: _Settings, inputs: _Inputs, side: _Side, storage_url: str, old: StudyPlan | None) -> StudyPlan:
    """The plan study.json records (the baselines in the space not enqueued yet: trial None)."""
    import torch

    from study.core.io import dataset_sha256

    space, base, ds = inputs.space, inputs.base, inputs.ds
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    baselines = {n: BaselinePlan(v, space.baseline_config(n).to_dict(),
                                 outside_space=None if side.placed[n][0] is not None else side.placed[n][1])
                 for n, v in space.baselines}
    return StudyPlan(
        name=s.name, study_name=s.name, storage=storage_url, space_file=str(s.space_file),
        objectives=tuple(Objective(m, d) for m, d in space.objectives), constraints=space.constraints,
        sampler=space.sampler, seed=space.seed, scheduler=space.scheduler, trials=s.trials,
        confirm_seeds=space.confirm_seeds, concurrent=s.concurrent, resources=side.resources, dataset=base.dataset,
        input_shape=list(ds.train_x.shape[1:]), num_classes=ds.num_classes,
        device="cuda" if side.resources["gpu"] > 0 else "cpu", threads=base.threads or torch.get_num_threads(),
        versions={**_versions(), **side.code}, data_fingerprint=dataset_sha256(ds), data_info=ds.info,
        teacher=side.teacher_info, checks=inputs.preflight, base_config=base.to_dict(), baselines=baselines,
        started=(old.started if old is not None and old.started else now), command=" ".join(sys.argv),
        normalization=inputs.normalization, resumed=now if old is not None else None)


def _shape(ds) -> tuple[int, int, int]:
    """The data set's input shape (channels, height, width)."""
    c, h, w = (int(v) for v in ds.train_x.shape[1:])
    return c, h, w


def _trial_context(s: _Settings, inputs: _Inputs, side: _Side) -> TrialContext:
    """What every search trial gets (study.search.trainable)."""
    space = inputs.space
    return TrialContext(run_dir=str(s.run.root), trial=dict(space.trial), space_file=str(s.space_file),
                        teacher_path=side.teacher_path, constraints=space.constraints,
                        num_classes=inputs.ds.num_classes, input_shape=_shape(inputs.ds),
                        objective_names=tuple(m for m, _ in space.objectives), gpu=side.resources["gpu"] > 0,
                        report_epochs=tuple(report_epochs(space)), report_every_s=space.report_every_s)


def _enqueue(plan: StudyPlan, side: _Side, searcher, log) -> StudyPlan:
    """Create (or check) the Optuna study, enqueue the baselines in the space as its first trials, and return the
    plan with their trial numbers."""
    # created (or checked: directions) and its objectives named now, also when Tune restores its own searcher
    enqueued = enqueue_baselines(searcher.optuna_study(), {n: p for n, (p, _) in side.placed.items() if p is not None})
    baselines = dict(plan.baselines)
    for n, (p, why) in side.placed.items():
        if p is None:
            log(f"baseline {n}: outside the space ({why}); trained beside the search, not as a trial")
        baselines[n] = dataclasses.replace(baselines[n], trial=enqueued.get(n) if p is not None else None)
    if enqueued:
        log("baselines enqueued as the first trials: " + ", ".join(f"{n} = trial {k}" for n, k in enqueued.items()))
    return plan.replace(baselines=baselines)


class _Tune:
    """The study's Ray Tune runs: the trainable, the run and tune configs, a fresh searcher for each run."""

    def __init__(self, s: _Settings, space: SearchSpace, plan: StudyPlan, ctx: TrialContext, on_trial_end):
        from ray import tune

        from study.search.trainable import search_trainable

        self.s, self.space, self.plan, self.on_trial_end = s, space, plan, on_trial_end
        self.trainable = tune.with_resources(tune.with_parameters(search_trainable, ctx=ctx), plan.resources)

    def searcher(self):
        """A fresh searcher over the study's Optuna study."""
        return make_searcher(self.space, objectives=self.plan.objective_pairs, storage_url=str(self.plan.storage),
                             study_name=self.plan.study_name, run_dir=self.s.run.root, trials=self.s.trials)

    def run_config(self, exp_name: str):
        """Where the experiment lives, its progress lines and failure handling."""
        from ray import tune

        from study.search.progress import Progress

        return tune.RunConfig(
            name=exp_name, storage_path=str(self.s.run.ray), verbose=0,
            callbacks=[Progress(self.plan.objective_pairs, self.s.trials, self.s.run.root,
                                fixed=self.plan.base_config, concurrent=self.s.concurrent,
                                on_trial_end=self.on_trial_end)],
            # Trials report no checkpoint to Tune (they keep their own: search_trial.RayHooks); num_to_keep bounds
            # the disk of a study started by an earlier version that did.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=4),
            # a trial's own errors are caught and recorded FAIL by the trainable; retries cover crashed processes
            failure_config=tune.FailureConfig(max_failures=1))

    def tune_config(self, searcher):
        """The searcher, the scheduler and the concurrency. num_samples=-1: the searcher ends the search
        (Searcher.FINISHED) once Optuna holds the study's trials and every asked one is handed out; Tune's own
        count would count Tune trials, which after a restore are not the Optuna trials."""
        from ray import tune

        return tune.TuneConfig(search_alg=searcher, scheduler=_make_scheduler(self.space, self.plan.objective_pairs),
                               num_samples=-1, max_concurrent_trials=self.s.concurrent, reuse_actors=True)

    def tuner(self, searcher, resuming: bool, log):
        """A Tuner for the study: restored from its experiment state when resuming, else new."""
        from ray import tune

        exp_dir = self.s.run.tune
        if not (resuming and tune.Tuner.can_restore(str(exp_dir))):
            return tune.Tuner(self.trainable, run_config=self.run_config("tune"),
                              tune_config=self.tune_config(searcher))
        log(f"resuming {self.s.run.root} (finished trials are kept; interrupted ones continue from their checkpoints)")
        try:
            return tune.Tuner.restore(str(exp_dir), trainable=self.trainable, resume_errored=True)
        except AttributeError as exc:  # tuner.pkl names a class this version does not have (KDOptunaSearch)
            if "Can't get attribute" not in str(exc):
                raise
            raise UserError(f"{exp_dir} was started by an earlier kdstudy version whose Tune state this one cannot "
                            f"load ({exc}); finish it with that version, or start a new study with --name.") from None

    def run_the_rest(self, log) -> None:
        """Run trials asked before a kill that the restored Tune never asked for again (its snapshot of the search
        was newer than its snapshot of the trials: a kill while Tune copied them), in a fresh Tune run in its own
        folder, from their kept checkpoints (trials/<n>/checkpoint/); it also asks what the study still lacks."""
        from ray import tune

        from study.search.searcher import unfinished_trials

        left = unfinished_trials(str(self.plan.storage), self.plan.study_name)
        if not left:
            return
        log(f"trial(s) {left} were asked before the interruption and not run again by the restored Tune run: "
            "running them now")
        shutil.rmtree(self.s.run.tune_rest, ignore_errors=True)
        tune.Tuner(self.trainable, run_config=self.run_config("tune-rest"),
                   tune_config=self.tune_config(self.searcher())).fit()


def run_search(space_file, *, name: str | None = None, trials: int | None = None, concurrent: int | None = None,
               storage: str | None = None, address: str | None = None, runs_dir: str = "runs",
               gpus_per_trial: float | None = None, cpus_per_trial: float | None = None, summary: bool = True,
               log=print, on_trial_end=None) -> Path:
    """Run (or resume) a study's search; returns the run directory. The engine only: summary prints the trial
    counts and the Pareto table from the search's own values; results.csv, the latency re-measurement and
    report.html are the application layer's (study.app.run_study, what the CLI and `from study import run_study`
    call). on_trial_end(run_dir, so_far) runs in this process after each ended trial's progress lines
    (study.search.progress.Progress: it must pickle, and a resumed study runs the one its first run was given)."""
    set_study_environment()  # before anything imports or starts Ray
    s = _settings(space_file, name, trials, concurrent, runs_dir, gpus_per_trial, cpus_per_trial)
    old = _resumed_plan(s)
    if old is not None:
        storage = storage or old.storage
    inputs = _check_inputs(s.space, old, log)  # before anything is written
    s.run.root.mkdir(parents=True, exist_ok=True)
    side = _prepare_side(s, inputs, address, log)
    plan = _study_plan(s, inputs, side, storage or s.run.default_storage_url, old)
    write_text_atomic(s.run.space_yaml, s.space_text)
    write_json_atomic(s.run.study_json, plan.to_json())
    tune_runs = _Tune(s, inputs.space, plan, _trial_context(s, inputs, side), on_trial_end)
    refs = _start_references(side.ref_kinds, side.outside, inputs.space, s.run, side.teacher_path, side.resources,
                             side.resources["gpu"] > 0)
    searcher = tune_runs.searcher()
    plan = _enqueue(plan, side, searcher, log)
    write_json_atomic(s.run.study_json, plan.to_json())
    tuner = tune_runs.tuner(searcher, old is not None, log)
    _say_start(plan, s, log)
    tuner.fit()
    tune_runs.run_the_rest(log)
    plan = _finish(plan, s, inputs, refs, log)
    if summary:
        print_summary(s.run.root, str(plan.storage), plan.study_name, plan.objective_pairs, log)
    return s.run.root


def _say_start(plan: StudyPlan, s: _Settings, log) -> None:
    """The study's one-line description, and how to watch it."""
    objectives = ", ".join(f"{o.direction} {o.name}" for o in plan.objectives)
    log(f"study {s.name}: {s.trials} trials, {s.concurrent} at a time, sampler {plan.sampler}, scheduler "
        f"{plan.scheduler}, objectives {objectives}; results in {s.run.root}")
    log(f"watch it live: optuna-dashboard {dashboard_url(str(plan.storage), s.run.root)}  (pip install "
        "optuna-dashboard, the dashboard extra)")


def _finish(plan: StudyPlan, s: _Settings, inputs: _Inputs, refs, log) -> StudyPlan:
    """After the trials: collect the references and baselines, check the user's teacher against the plain
    student, close orphaned Optuna trials, and write the finished plan."""
    from study.search.searcher import close_orphans

    _finish_references(refs, log)
    teacher = plan.teacher
    if teacher and inputs.base.teacher_checkpoint:  # now also against the plain student reference
        teacher = {**teacher, "warnings": _teacher_warnings(teacher, inputs.base, inputs.ds, s.run, log,
                                                            said=teacher.get("warnings") or [])}
    orphans = close_orphans(str(plan.storage), plan.study_name)
    if orphans:
        log(f"{orphans} Optuna trial(s) left RUNNING by an interrupted driver were marked FAIL")
    plan = plan.replace(teacher=teacher, finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    write_json_atomic(s.run.study_json, plan.to_json())
    return plan


def dashboard_url(storage_url: str, run_dir: Path) -> str:
    """The storage URL for optuna-dashboard, relative to the working directory where the run's own SQLite file is."""
    run = RunDir(run_dir)
    if storage_url != run.default_storage_url:
        return storage_url
    try:
        return f"sqlite:///{run.optuna_db.relative_to(Path.cwd().resolve())}"
    except ValueError:  # the run folder is outside the working directory
        return storage_url


def enqueue_baselines(study: optuna.Study, params: dict[str, dict]) -> dict[str, int]:
    """Enqueue each baseline (name -> its searched parameters) as a trial labelled `baseline: NAME`, unless the
    study already holds it (a resumed study); returns name -> Optuna trial number. Enqueued trials are asked
    before any sampled one, so the search starts from the configurations a user would pick and its front
    can never be worse than them."""
    def labelled() -> dict[str, int]:
        return {t.user_attrs["baseline"]: t.number for t in study.get_trials(deepcopy=False)
                if "baseline" in t.user_attrs}

    have = labelled()
    begun = any(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))
    if not have and not begun:  # only a study that has not begun (trials the user enqueued go first): never mid-way
        for name, values in params.items():
            study.enqueue_trial(values, user_attrs={"baseline": name}, skip_if_exists=False)
        have = labelled()
    return {n: have[n] for n in params if n in have}


def report_epochs(space: SearchSpace) -> list[int]:
    """Epoch counts at which every trial must report to Tune: the early-stopping rungs (none without one)."""
    from study.search.mo_asha import rung_epochs

    if space.scheduler == "none":
        return []
    return rung_epochs(space.grace_epochs, space.reduction_factor, space.total_epochs)


def _make_scheduler(space: SearchSpace, objectives: list[tuple[str, str]]):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from study.search.mo_asha import MOASHAScheduler

    total = space.total_epochs
    if space.scheduler == "asha":
        # stop_last_trials=False: a trial that reaches the last epoch still sends its final metrics.
        return ASHAScheduler(time_attr="epoch", metric="val_acc", mode="max", max_t=total,
                             grace_period=space.grace_epochs, reduction_factor=space.reduction_factor,
                             stop_last_trials=False)
    if space.scheduler == "mo_asha":
        return MOASHAScheduler(objectives, max_t=total, grace_period=space.grace_epochs,
                               reduction_factor=space.reduction_factor)
    return FIFOScheduler()


# ---------------------------------------------------------------------------------------------- references
def _start_references(kinds: list[str], baselines: dict[str, dict], space: SearchSpace, run: RunDir,
                      teacher_path: str | None, resources: dict, gpu: bool):
    """One Ray task computes the missing reference points and then the missing baselines one after another
    (study.search.references), beside the trials: a single worker process that imports neither Optuna nor Ray
    Tune (one task per reference costs a worker start-up each: docs/HOW_IT_RUNS.md)."""
    import ray

    from study.search.references import run_references

    if not kinds and not baselines:
        return None
    remote = ray.remote(num_cpus=resources["cpu"], num_gpus=resources["gpu"])(run_references)
    return remote.remote(kinds, dict(space.trial), teacher_path, str(run.references), gpu,
                         baselines, str(run.baselines))


def _finish_references(ref, log) -> None:
    import ray

    if ref is None:
        return
    try:
        results = ray.get(ref)
    except Exception as exc:  # noqa: BLE001  a reference point is a nice-to-have, never fatal
        log(f"references failed: {exc}")
        return
    for kind, m in results.items():
        if isinstance(m, str):
            log(f"{kind if kind.startswith('baseline ') else 'reference ' + kind} failed: {m}")
        else:
            log(f"{kind if kind.startswith('baseline ') else 'reference ' + kind}: val_acc {m['val_acc']:.2f}%  "
                f"params {m['params']:,} (nonzero {m['nonzero_params']:,})  "
                f"latency {m['latency_ms_bs1']:.3f} ms")
