"""`python -m study run SPACE`: a search study. Ray Tune schedules the trials, Optuna samples them.

Layout of runs/NAME/ (see docs/INTERFACES.md): study.json, space.yaml, optuna.db, trials/<n>/, references/, ray/.
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
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from study.core.errors import UserError
from study.core.fmt import fmt_value
from study.core.io import write_json_atomic, write_text_atomic
from study.search.space import SearchSpace, load_space, resolve_space_path


def set_study_environment() -> None:
    """Process-wide settings of a study run, set by `run_study` before it imports or starts Ray (never at import
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
def make_sampler(space: SearchSpace):
    from study.search.samplers import make_sampler as build

    return build(space.sampler, space.seed)


def make_searcher(space: SearchSpace, *, objectives, storage_url: str, study_name: str, run_dir: Path,
                  trials: int):
    """The study's searcher: the space's sampler built afresh for every new trial, seeded from (search.seed,
    trial number), so that a killed and resumed study draws what the same study run without a kill draws."""
    import functools

    from study.search.samplers import make_sampler as build
    from study.search.searcher import AskTellSearcher

    return AskTellSearcher(space.define_by_run(), objectives=objectives, storage_url=storage_url,
                           study_name=study_name, sampler=make_sampler(space), run_dir=run_dir, trials=trials,
                           sampler_factory=functools.partial(build, space.sampler), seed=space.seed)


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


def _resolve_normalization(base, ds, old_meta: dict | None, log):
    """(base with normalize resolved, ds normalised so, the record for study.json). A resumed study keeps the
    normalisation it started with (one started before normalize existed: the data's own statistics)."""
    from study.core.device import resolve_device
    from study.teacher.inputs import describe, resolve

    if old_meta is not None and base.normalize == "auto":
        before = (old_meta.get("normalization") or {}).get("normalize", "dataset")
        base, ds, record = resolve(base.replace(normalize=before), ds, resolve_device(base.device), log)
        record["chosen_by"] = "kept from the study's start (resumed)"
    else:
        base, ds, record = resolve(base, ds, resolve_device(base.device), log)
    if not record.get("val_acc_by_candidate"):  # resolve says its own line when it scored the teacher
        log(f"input normalisation: {describe(record)}")
    return base, ds, record


def _teacher_warnings(info: dict, base, ds, run_dir: Path | None, log, said: list[str] = ()) -> list[str]:
    """The teacher-looks-wrong warnings (study.teacher.inputs.teacher_warnings), each printed once; with run_dir,
    also against the plain student reference (references/student_ce) once it is trained."""
    from study.teacher.inputs import teacher_warnings

    ref = None
    if run_dir is not None:
        try:
            ref = json.loads((run_dir / "references" / "student_ce" / "metrics.json").read_text()).get("val_acc")
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
    a trial's CPU: Tune, which reuses its trial actors, then keeps running one trial at a time on short trials
    (measured on the default study: 40 trials one by one, 42 s instead of 30 s)."""
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


def run_study(space_file: str, *, name: str | None = None, trials: int | None = None, concurrent: int | None = None,
              storage: str | None = None, address: str | None = None, runs_dir: str = "runs",
              gpus_per_trial: float | None = None, cpus_per_trial: float | None = None, summary: bool = True,
              log=print, on_trial_end=None) -> Path:
    """Run (or resume) a study; returns the run directory. The engine only: summary prints the trial counts and
    the Pareto table from the search's own values; results.csv, the latency re-measurement and report.html are
    the application layer's (study.app.run_study, what the CLI and `from study import run_study` call).
    on_trial_end(run_dir, so_far) runs in this process after each ended trial's progress lines
    (study.search.progress.Progress: it must pickle, and a resumed study runs the one its first run was given)."""
    set_study_environment()  # before anything imports or starts Ray
    space, space_file, space_text = _space_and_text(space_file)
    name = name or space.name
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UserError(f"--name {name!r}: use letters, digits, '-', '_' and '.' only.")
    run_dir = (Path(runs_dir) / name).resolve()
    n_trials = trials if trials is not None else space.trials
    n_conc = concurrent if concurrent is not None else space.concurrent
    cpus = cpus_per_trial if cpus_per_trial is not None else space.cpus_per_trial
    gpus = gpus_per_trial if gpus_per_trial is not None else space.gpus_per_trial
    if n_trials < 1 or n_conc < 1:
        raise UserError("--trials and --concurrent must be >= 1.")

    meta_path = run_dir / "study.json"
    resuming = meta_path.exists()
    if resuming:
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{meta_path} is unreadable ({exc}); restore it from a backup, or start a new study "
                            "with --name.") from None
        if not isinstance(old, dict):
            raise UserError(f"{meta_path} must hold a JSON object; restore it, or start a new study with --name.")
        if (run_dir / "space.yaml").read_text() != space_text:
            raise UserError(f"{run_dir} was started from a different version of {space_file}; "
                            f"restore that file, or start a new study with --name.")
        if old.get("trials") != n_trials:
            raise UserError(f"{run_dir} was started with {old.get('trials')} trials; a resumed study keeps its "
                            f"trial count (drop --trials, or start a new study with --name).")
        storage = storage or old["storage"]

    # The data is checked here, before Ray starts (a missing data set stops the study with one sentence).
    from study.data.datasets import load_dataset_for

    base = space.base_config()
    ds = load_dataset_for(base, log)
    input_shape = tuple(ds.train_x.shape[1:])
    # The user's teacher and student families fit the data: checked before anything is written. In a thread that
    # ends: torch ops on the main thread before the teacher thread trains made every teacher epoch of the default
    # study twice as slow (29 epochs: 15-17 s instead of 7.5-9 s, 2 runs each, AMD EPYC Zen 4, 2 cores), an
    # interaction of the two threads' OpenMP pools; a finished worker thread leaves none behind.
    from concurrent.futures import ThreadPoolExecutor

    from study.search.preflight import check_study

    with ThreadPoolExecutor(1, thread_name_prefix="kdstudy-preflight") as pool:
        preflight = pool.submit(check_study, space, ds).result()
        # the teacher's input normalisation, found (normalize: auto with a checkpoint: the teacher is scored on the
        # validation split) or as stated; every trial, reference and baseline gets the resolved value
        base, ds, normalization = pool.submit(_resolve_normalization, base, ds, old if resuming else None,
                                              log).result()
    space = dataclasses.replace(space, trial={**space.trial, "normalize": base.normalize})
    run_dir.mkdir(parents=True, exist_ok=True)
    storage_url = storage or f"sqlite:///{run_dir / 'optuna.db'}"

    import torch

    from study.core.io import code_version, dataset_sha256
    from study.search.references import missing_baselines, missing_references

    # the code that runs, as it is now: taken before the teacher trains (minutes, on a CPU), so that a file edited
    # in the meantime is not recorded as the study's
    code = code_version()

    uses_kd = (base.kd_loss != "ce" or any(p.name == "kd_loss" for p in space.params)
               or any(space.baseline_config(n).kd_loss != "ce" for n, _ in space.baselines))

    ref_kinds = missing_references(run_dir / "references", has_teacher=uses_kd)
    # A baseline that lies in the space is a search trial (enqueued first, below); only the others are trained
    # beside the search.
    placed = {n: space.baseline_params(n) for n, _ in space.baselines}
    outside = {n: v for n, v in space.baselines if placed[n][0] is None}
    baselines = missing_baselines(run_dir / "baselines", outside)
    # The teacher (trained once, or loaded) and its logit cache are prepared in a thread while Ray starts: the
    # overlap saved about 1.5 s of the default study (5-6 s teacher, 3 s Ray start) on the 2-core CPU.
    # (If Ray fails to start, the error stops the study at once; the daemon thread dies with the process and
    # leaves no half-written teacher: checkpoints are written atomically.)
    # Ray and Tune are imported before the teacher thread starts, not by _init_ray while it trains: an import holds
    # the GIL, and the teacher's small-batch training loop needs it. Measured on the default study (AMD EPYC Zen
    # 3, 2 cores, 2 runs each): teacher training 34.4 / 35.3 s with the import during it, 32.2 / 31.0 s without.
    import ray
    from ray import tune

    teacher = _TeacherJob(base, space.total_epochs, log) if uses_kd else None
    _init_ray(address, cpus * n_conc, side_cpus=cpus if ref_kinds or baselines else 0.0)
    teacher_path, teacher_info = teacher.result() if teacher else (None, {})
    if teacher_info and base.teacher_checkpoint:  # a user's teacher that looks wrong is said out loud
        teacher_info["warnings"] = _teacher_warnings(teacher_info, base, ds, None, log)

    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    if gpus > 0 and not has_gpu:
        log(f"no GPU in the Ray cluster: running trials on CPUs ({cpus:g} per trial) instead of waiting for one")
        gpus = 0.0
    resources = {"cpu": cpus, "gpu": gpus}
    objectives = list(space.objectives)
    study_name = name
    meta = {
        "name": name, "study_name": study_name, "storage": storage_url, "space_file": str(space_file),
        "objectives": [{"name": m, "direction": d} for m, d in objectives], "constraints": space.constraints,
        "sampler": space.sampler, "seed": space.seed, "scheduler": space.scheduler, "trials": n_trials,
        "confirm_seeds": space.confirm_seeds,
        "concurrent": n_conc, "resources": resources, "dataset": base.dataset, "input_shape": list(input_shape),
        "num_classes": ds.num_classes, "device": "cuda" if gpus > 0 else "cpu",
        "threads": base.threads or torch.get_num_threads(), "versions": {**_versions(), **code},
        "data_fingerprint": dataset_sha256(ds), "data_info": ds.info,
        "teacher": teacher_info, "checks": preflight, "base_config": base.to_dict(),
        "baselines": {n: {"values": v, "config": space.baseline_config(n).to_dict(),
                          **({"trial": None} if placed[n][0] is not None else {"outside_space": placed[n][1]})}
                      for n, v in space.baselines},
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv),
    }
    meta["normalization"] = normalization  # the teacher's input normalisation: what, values, how it was chosen
    if resuming:
        meta["started"] = old.get("started", meta["started"])
        meta["resumed"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_text_atomic(run_dir / "space.yaml", space_text)
    write_json_atomic(meta_path, meta)

    ctx = {"run_dir": str(run_dir), "trial": dict(space.trial), "space_file": str(space_file),
           "teacher_path": teacher_path, "constraints": space.constraints, "num_classes": ds.num_classes,
           "input_shape": list(input_shape), "objective_names": [m for m, _ in objectives], "gpu": gpus > 0,
           "report_epochs": report_epochs(space), "report_every_s": space.report_every_s}

    from study.search.progress import Progress
    from study.search.searcher import close_orphans, unfinished_trials
    from study.search.trainable import search_trainable

    trainable = tune.with_resources(tune.with_parameters(search_trainable, ctx=ctx), resources)
    refs = _start_references(ref_kinds, baselines, space, run_dir, teacher_path, resources, gpus > 0)

    searcher = make_searcher(space, objectives=objectives, storage_url=storage_url, study_name=study_name,
                             run_dir=run_dir, trials=n_trials)
    # created (or checked: directions) and its objectives named now, also when Tune restores its own searcher
    enqueued = enqueue_baselines(searcher.optuna_study(), {n: p for n, (p, _) in placed.items() if p is not None})
    for n, (p, why) in placed.items():
        if p is None:
            log(f"baseline {n}: outside the space ({why}); trained beside the search, not as a trial")
        meta["baselines"][n]["trial"] = enqueued.get(n) if p is not None else None
    if enqueued:
        log("baselines enqueued as the first trials: " + ", ".join(f"{n} = trial {k}" for n, k in enqueued.items()))
    write_json_atomic(meta_path, meta)
    exp_dir = run_dir / "ray" / "tune"
    def run_config(exp_name: str):
        return tune.RunConfig(
            name=exp_name, storage_path=str(run_dir / "ray"), verbose=0,
            callbacks=[Progress(objectives, n_trials, run_dir, fixed=base.to_dict(), concurrent=n_conc,
                                on_trial_end=on_trial_end)],
            # Trials report no checkpoint to Tune (they keep their own: search_trial.RayHooks); num_to_keep bounds
            # the disk of a study started by an earlier version that did.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=4),
            # a trial's own errors are caught and recorded FAIL by the trainable; retries cover crashed processes
            failure_config=tune.FailureConfig(max_failures=1))

    def tune_config(searcher):
        # num_samples=-1: the searcher ends the search (Searcher.FINISHED) once Optuna holds n_trials trials and
        # every asked one is handed out; Tune's own count would count Tune trials, which after a restore are not
        # the Optuna trials (one asked after Tune's last snapshot is handed out again, not counted twice).
        return tune.TuneConfig(search_alg=searcher, scheduler=_make_scheduler(space, objectives), num_samples=-1,
                               max_concurrent_trials=n_conc, reuse_actors=True)
    if resuming and tune.Tuner.can_restore(str(exp_dir)):
        log(f"resuming {run_dir} (finished trials are kept; interrupted ones continue from their checkpoints)")
        try:
            tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_errored=True)
        except AttributeError as exc:  # tuner.pkl names a class this version does not have (KDOptunaSearch)
            if "Can't get attribute" not in str(exc):
                raise
            raise UserError(f"{exp_dir} was started by an earlier kdstudy version whose Tune state this one cannot "
                            f"load ({exc}); finish it with that version, or start a new study with --name.") from None
    else:
        tuner = tune.Tuner(trainable, run_config=run_config("tune"), tune_config=tune_config(searcher))
    log(f"study {name}: {n_trials} trials, {n_conc} at a time, sampler {space.sampler}, scheduler "
        f"{space.scheduler}, objectives {', '.join(f'{d} {m}' for m, d in objectives)}; results in {run_dir}")
    log(f"watch it live: optuna-dashboard {dashboard_url(storage_url, run_dir)}  (pip install optuna-dashboard, "
        "the dashboard extra)")
    tuner.fit()
    left = unfinished_trials(storage_url, study_name)
    if left:
        # Asked before a kill, and the restored Tune never asked for them again (its snapshot of the search was
        # newer than its snapshot of the trials: a kill while Tune copied them). A fresh Tune run in its own folder
        # runs them, from their kept checkpoints (trials/<n>/checkpoint/), and asks what the study still lacks.
        log(f"trial(s) {left} were asked before the interruption and not run again by the restored Tune run: "
            "running them now")
        shutil.rmtree(run_dir / "ray" / "tune-rest", ignore_errors=True)
        tune.Tuner(trainable, run_config=run_config("tune-rest"), tune_config=tune_config(
            make_searcher(space, objectives=objectives, storage_url=storage_url, study_name=study_name,
                          run_dir=run_dir, trials=n_trials))).fit()
    _finish_references(refs, log)
    if teacher_info and base.teacher_checkpoint:  # now also against the plain student reference
        teacher_info["warnings"] = _teacher_warnings(teacher_info, base, ds, run_dir, log,
                                                     said=teacher_info.get("warnings") or [])
    orphans = close_orphans(storage_url, study_name)
    if orphans:
        log(f"{orphans} Optuna trial(s) left RUNNING by an interrupted driver were marked FAIL")

    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_json_atomic(meta_path, meta)
    if summary:
        print_summary(run_dir, storage_url, study_name, objectives, log)
    return run_dir


def dashboard_url(storage_url: str, run_dir: Path) -> str:
    """The storage URL for optuna-dashboard, relative to the working directory where the run's own SQLite file is."""
    own = f"sqlite:///{run_dir / 'optuna.db'}"
    if storage_url != own:
        return storage_url
    try:
        return f"sqlite:///{(run_dir / 'optuna.db').relative_to(Path.cwd().resolve())}"
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
def _start_references(kinds: list[str], baselines: dict[str, dict], space: SearchSpace, run_dir: Path,
                      teacher_path: str | None, resources: dict, gpu: bool):
    """One Ray task computes the missing reference points and then the missing baselines one after another
    (study.search.references), beside the trials: a single worker process that imports neither Optuna nor Ray Tune (one
    task per reference cost three worker start-ups, a quarter of the default study's wall time on the 2-core CPU)."""
    import ray

    from study.search.references import run_references

    if not kinds and not baselines:
        return None
    remote = ray.remote(num_cpus=resources["cpu"], num_gpus=resources["gpu"])(run_references)
    return remote.remote(kinds, dict(space.trial), teacher_path, str(run_dir / "references"), gpu,
                         baselines, str(run_dir / "baselines"))


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


# ---------------------------------------------------------------------------------------------- summary
def print_summary(run_dir: Path, storage_url: str, study_name: str, objectives: list[tuple[str, str]],
                  log=print, quiet_latency: dict | None = None) -> None:
    """Trial counts, failed trials with their reasons, and the Pareto table. quiet_latency (trial number -> ms):
    the front's batch-1 latency re-measured after the search; shown instead of the search's values."""
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        s = t.user_attrs.get("status") or t.state.name.lower()
        counts[s] = counts.get(s, 0) + 1
    log("trials: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    for t in trials:
        if t.user_attrs.get("status") == "failed" or (t.state == TrialState.FAIL and "status" not in t.user_attrs):
            log(f"  trial {t.number} failed: {t.user_attrs.get('error') or 'no reason recorded'}")
    from study.search.results import front_trials

    front = front_trials(study)  # the one front rule (study.core.dominance), as reproduce ranks it
    front.sort(key=lambda t: -t.values[0])
    cols = ["trial", *[m for m, _ in objectives], "test_acc", "width_mult", "prune_method", "prune_ratio",
            "kd_loss", "temperature", "alpha"]
    quiet = quiet_latency or {}
    swap = [m == "latency_ms_bs1" and any(t.number in quiet for t in front) for m, _ in objectives]
    cols = [f"{c}*" if i and swap[i - 1] else c for i, c in enumerate(cols[:len(objectives) + 1])] + \
        cols[len(objectives) + 1:]
    rows = []
    for t in front:
        m = t.user_attrs.get("metrics", {})
        values = [quiet.get(t.number, v) if sw else v for v, sw in zip(t.values, swap, strict=True)]
        label = str(t.number) + (f" ({t.user_attrs['baseline']})" if "baseline" in t.user_attrs else "")
        rows.append([label, *[fmt_value(v) for v in values], fmt_value(m.get("test_acc")),
                     *[fmt_value(t.params.get(k, m.get(k))) for k in cols[len(objectives) + 2:]]])
    base_rows = _baseline_rows(run_dir, objectives, swap, quiet, cols)
    widths = [max(len(c), *(len(r[i]) for r in rows + base_rows)) if rows + base_rows else len(c)
              for i, c in enumerate(cols)]
    log(f"Pareto-optimal trials ({len(front)}), objectives on the validation split; test_acc for reference only:")
    log("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for r in rows:
        log("  ".join(v.rjust(w) for v, w in zip(r, widths)))
    if base_rows:
        log("baselines (configurations picked by hand, trained by the trial rules; those in the space are "
            "enqueued search trials):")
        for r in base_rows:
            log("  ".join(v.rjust(w) for v, w in zip(r, widths)))
    if any(swap):
        log("* re-measured after the search with no trial training (interleaved, median of rounds; "
            "benchmarks.latency); the search's own values are in results.csv")
    _print_baselines(run_dir, log)
    log(f"results: {run_dir}  (Optuna: {storage_url}, study '{study_name}'; "
        f"optuna-dashboard {storage_url})")


def _baseline_rows(run_dir: Path, objectives: list[tuple[str, str]], swap: list[bool], quiet: dict,
                   cols: list[str]) -> list[list[str]]:
    """The baselines as rows of the Pareto table (from their metrics.json), labelled by name."""
    try:
        entries = json.loads((run_dir / "study.json").read_text()).get("baselines") or {}
    except (OSError, ValueError):
        return []
    rows = []
    for name, entry in entries.items():
        number = entry.get("trial") if isinstance(entry, dict) else None
        folder = run_dir / "trials" / str(number) if number is not None else run_dir / "baselines" / name
        try:
            m = json.loads((folder / "metrics.json").read_text())
        except (OSError, ValueError):
            continue
        key = number if number is not None else f"baseline {name}"
        values = [quiet.get(key, m.get(k)) if sw else m.get(k) for (k, _), sw in zip(objectives, swap, strict=True)]
        label = f"{name} (trial {number})" if number is not None else name
        rows.append([label, *[fmt_value(v) for v in values], fmt_value(m.get("test_acc")),
                     *[fmt_value(m.get(k)) for k in cols[len(objectives) + 2:]]])
    return rows


def _print_baselines(run_dir: Path, log) -> None:
    """The baselines' one-line comparisons with the front and the knee, from benchmark.json (when written)."""
    try:
        bench = json.loads((run_dir / "benchmark.json").read_text())
    except (OSError, ValueError):
        return
    for b in bench.get("baselines") or []:
        log(f"baseline {b['line']}" + (f" [{b['latency']} latency]" if b.get("latency") else ""))
    confirmed = bench.get("confirmed") or {}
    if confirmed.get("baselines"):
        log(f"confirmed with seeds {confirmed['seeds']} beside the search's own run ({confirmed['accuracy']}, "
            f"{confirmed['latency']} latency):")
        for v in confirmed["baselines"]:
            log(f"  {v['line']}")
    if bench.get("compute"):
        log(bench["compute"]["line"])
    if bench.get("knee"):
        log(f"knee of the front: trial {bench['knee']['trial']} ({bench['knee']['rule']})")
