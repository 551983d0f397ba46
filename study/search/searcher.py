"""The study's Ray Tune searcher: Tune asks it for configurations, it asks Optuna (ask-and-tell) and tells Optuna
how each trial ended.

Why our own and not Ray's `OptunaSearch`: telling Optuna the truth (COMPLETE only for fully trained trials,
PRUNED for early-stopped ones, FAIL with the reason for infeasible and failed ones) and finding a trial again
after a driver kill needed OptunaSearch's private fields (`_ot_trials`, `_ot_study`, `_completed_trials`), which
any Ray release may rename. This searcher uses only Ray's public `Searcher` interface and Optuna's public
ask-and-tell API (`study.ask`, `study.tell`, `BaseStorage`'s documented methods).

The Optuna storage (SQLite in the run folder, or a PostgreSQL URL) is the source of truth: one Optuna trial per
Tune trial, with the study's directions, user attrs and states. Nothing the searcher needs on resume comes from a
pickled snapshot (Tune writes its snapshot at most every 10 s, and the storage can be newer): after `Tuner.restore`
the searcher rebuilds from the storage and from the trials Tune itself restored which Tune trial is which Optuna
trial, which trials are finished, and which were asked but are neither finished nor run by the restored Tune
(those are handed out again, with their stored parameters and number, before anything new is asked). The sampler
is built afresh for every new trial, seeded from (the study's seed, the trial's number), so its draws depend on
the seed, the trial number and the stored history only, never on how often the driver was restarted.

Each trial's end is also written to `trials/<n>/told.json` before Optuna is told: the trainable reports it again
instead of training a trial Optuna already knows finished (Tune can restore one as running), and an end written
but not yet told (a kill in between) is told on resume.
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState
from ray.tune.search import Searcher

from study.core.errors import UserError
from study.core.run_dir import RunDir, trial_name
from study.search.crash import crash_reason
from study.search.plan import split_config
from study.search.space import COST_METRICS
from study.search.told import drop_kept_checkpoint, read_told, write_told

# Bumped when the state `save` writes changes shape; `restore` refuses other versions with one sentence. Format 1
# (the searcher before storage-first resume) is read too: only its study name is used.
STATE_FORMAT = 2
READABLE_FORMATS = (1, 2)
DIRECTIONS = ("maximize", "minimize")

Space = Callable[[Any], "dict[str, Any] | None"] | Mapping[str, BaseDistribution]


class AskTellSearcher(Searcher):
    """A Tune searcher over one Optuna study, through ask-and-tell.

    space: a define-by-run function (`search_spaces.DefineByRun`: conditional parameters exist only when their
        condition holds; it must be picklable, Tune pickles the searcher) or a mapping name ->
        `optuna.distributions.BaseDistribution` (`study.ask(fixed_distributions=...)`, no conditions).
    objectives: (metric, "maximize" | "minimize") in the order of the study's values.
    storage_url: an RDB URL (`sqlite:///...`, `postgresql+psycopg://...`); opened here, never pickled.
    run_dir: the run folder, where each trial's `stderr.log` (the reason a crashed trial gives), `epochs.csv`
        (its val_acc curve) and `told.json` live. A trial's resolved config comes in its reported results
        (`trial_config`); only for a trial whose process died before its first report is it read from its
        config.yaml.
    trials: the study's trial count. Once Optuna holds that many asked trials and every asked, unfinished one is
        handed to Tune, `suggest` returns `Searcher.FINISHED`: Tune's own count (`num_samples`) counts Tune trials,
        which after a restore are not the Optuna trials, so run_search gives Tune no count of its own. None: Tune's
        `num_samples` alone ends the search.
    sampler_factory, seed: each new trial is sampled by `sampler_factory(draw_seed(seed, number))`, a sampler
        built for it from the study's seed and the trial's number (its history comes from the storage); without a
        factory, `sampler` (or Optuna's default) is used as it is, with its own random state.

    Each configuration Tune gets is the sampled parameters plus `trial_number`, the Optuna trial number: it names
    `trials/<n>/`, and every result the trial reports carries it.
    """

    def __init__(self, space: Space, *, objectives: Sequence[tuple[str, str]], storage_url: str, study_name: str,
                 sampler: optuna.samplers.BaseSampler | None = None, run_dir: str | Path | None = None,
                 trials: int | None = None,
                 sampler_factory: Callable[[int], optuna.samplers.BaseSampler] | None = None, seed: int = 0):
        bad = [d for _, d in objectives if d not in DIRECTIONS]
        if not objectives or bad:
            raise UserError(f"objectives must be (metric, maximize|minimize) pairs (got {list(objectives)!r}); "
                            "fix the space's objectives: section.")
        # Ray's Searcher takes a list of metrics and modes for a multi-objective search; its stubs say str
        super().__init__(metric=cast(str, [m for m, _ in objectives]),
                         mode=cast(str, ["max" if d == "maximize" else "min" for _, d in objectives]))
        self.space = space
        self.objectives = [(m, d) for m, d in objectives]
        self.storage_url = storage_url
        self.study_name = study_name
        self.sampler = sampler
        self.sampler_factory = sampler_factory
        self.seed = int(seed)
        self.trials = trials
        self.run_dir = str(run_dir) if run_dir is not None else None
        self.max_concurrent: int | None = None  # set by Tune (max_concurrent_trials): this searcher limits itself
        self.numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number
        self.told: set[str] = set()  # Tune trial ids whose end Optuna already knows
        self._live: set[str] = set()  # Tune trial ids handed out (or restored by Tune) and not complete yet
        self._backlog: list[int] | None = None  # asked, unfinished Optuna trials no Tune trial runs (None: not read)
        self._study: optuna.Study | None = None  # opened lazily, once per process (not pickled)
        self._storage: optuna.storages.BaseStorage | None = None

    # ------------------------------------------------------------------------------------------ the Optuna study
    def optuna_study(self) -> optuna.Study:
        """The study, created with the objectives' directions on first use (and named, for optuna-dashboard).

        A study of that name with other directions (a reused --name on a shared PostgreSQL, say) is refused: its
        trials would be told values in the wrong order or number."""
        if self._study is None:
            storage = optuna.storages.RDBStorage(self.storage_url)
            wanted = [d for _, d in self.objectives]
            study = optuna.create_study(storage=storage, sampler=self.sampler, pruner=optuna.pruners.NopPruner(),
                                        study_name=self.study_name, directions=cast(list[Any], wanted),
                                        load_if_exists=True)
            have = [d.name.lower() for d in study.directions]
            if have != wanted:
                raise UserError(f"the Optuna study '{self.study_name}' in {self.storage_url} has directions {have}, "
                                f"not the space's {wanted}; start a new study with --name.")
            if not study.metric_names:
                with warnings.catch_warnings():  # "experimental" since Optuna 3.2, stable in use
                    warnings.simplefilter("ignore")
                    study.set_metric_names([m for m, _ in self.objectives])
            self._study, self._storage = study, storage
            self.sampler = study.sampler  # Optuna's default when none was given
        return self._study

    @property
    def _store(self) -> optuna.storages.BaseStorage:
        """The open storage (opened with the study)."""
        self.optuna_study()
        assert self._storage is not None
        return self._storage

    def _storage_trial_id(self, number: int) -> int:
        """Storage id of trial `number` (user attrs are set through the storage: after a restore there is no
        `optuna.Trial` object for a trial asked by the driver before)."""
        study = self.optuna_study()
        storage = self._store
        return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name),
                                                               number)

    # ------------------------------------------------------------------------------------------ Tune's interface
    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Tune's `max_concurrent_trials`: limited here, not by Tune's ConcurrencyLimiter, whose restored set of
        running trials can be older than Tune's restored trials (a slot then never frees)."""
        self.max_concurrent = int(max_concurrent)
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """The next configuration: an asked, unfinished Optuna trial no Tune trial runs (asked before a driver
        kill that Tune's snapshot missed) with its stored parameters and number first; else a new Optuna trial
        (an enqueued one first, as `study.ask` does); `Searcher.FINISHED` once the study holds `trials`."""
        study = self.optuna_study()
        if trial_id in self.numbers:  # asked again for a trial it already has: the same configuration
            return self._config(self._frozen(self.numbers[trial_id]))
        if self._backlog is None:  # a study begun by a driver that Tune has no snapshot of: all of it from storage
            self.resume({})
        if self.max_concurrent is not None and len(self._live) >= self.max_concurrent:
            return None
        if self._backlog:
            number = self._backlog.pop(0)
            config = self._config(self._frozen(number))
        else:
            if self.trials is not None and self._asked(study) >= self.trials:
                return Searcher.FINISHED  # type: ignore[return-value]  # Ray's sentinel, which its stubs omit
            config = self._ask(study)
            number = config["trial_number"]
        self.numbers[trial_id] = number
        self._live.add(trial_id)
        return config

    def _ask(self, study: optuna.Study) -> dict[str, Any]:
        if self.sampler_factory is not None:
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            # the number study.ask gives: the first enqueued trial's, else the next one
            number = min(t.number for t in waiting) if waiting else len(study.get_trials(deepcopy=False))
            study.sampler = self.sampler_factory(draw_seed(self.seed, number))
        if callable(self.space):
            trial = study.ask()
            try:
                extra = self.space(trial) or {}
            except Exception:  # a broken space leaves no RUNNING trial behind
                study.tell(trial.number, state=TrialState.FAIL)
                raise
            if not isinstance(extra, dict):
                study.tell(trial.number, state=TrialState.FAIL)
                raise TypeError(f"the define-by-run space must return None or a dict (got {type(extra).__name__})")
        else:
            trial = study.ask(fixed_distributions=dict(self.space))
            extra = {}
        return {**trial.params, **extra, "trial_number": trial.number}

    @staticmethod
    def _asked(study: optuna.Study) -> int:
        return sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))

    def _frozen(self, number: int) -> optuna.trial.FrozenTrial:
        return self._store.get_trial(self._storage_trial_id(number))

    def _config(self, frozen: optuna.trial.FrozenTrial) -> dict[str, Any]:
        """The configuration of an Optuna trial that was already asked: the space run over its stored values."""
        extra = (self.space(frozen) or {}) if callable(self.space) else {}
        return {**frozen.params, **extra, "trial_number": frozen.number}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Tell Optuna how the trial ended, with its user attrs: status (complete, early_stopped, infeasible,
        failed), metrics, error, trial_dir and the resolved config.

        COMPLETE only for a result with status "complete" and every objective a number; a trial stopped by the
        scheduler (its last result says "running", or Tune ends it without a result) is PRUNED, never COMPLETE with
        partial values; an infeasible or failed trial, or one whose process died (`error`), is FAIL. A trial
        Optuna already knows finished (told before a driver kill, then replayed by the resumed Tune) is left as it
        is."""
        self._live.discard(trial_id)
        result = result or {}
        if trial_id in self.told:
            return
        number = self.numbers.get(trial_id)
        if number is None and result.get("trial_number") is not None:
            number = int(result["trial_number"])  # a trial id this searcher was never told of: by its number
        if number is None:
            return  # a trial this searcher never asked for and that reported nothing: nothing to tell
        self._tell(number, result, error)
        self.told.add(trial_id)

    def _trial_dir(self, number: int) -> Path:
        """The trial's folder (under the working directory when the searcher has no run folder)."""
        return RunDir(self.run_dir or ".").trial(number)

    def _tell(self, number: int, result: dict, error: bool) -> None:
        """Record how trial `number` ended: told.json first, then its user attrs and state in Optuna."""
        study = self.optuna_study()
        tid = self._storage_trial_id(number)
        if self._store.get_trial(tid).state.is_finished():
            return
        config, result = split_config(result)
        status = result.get("status", "failed" if error else "early_stopped")
        if status == "running":
            status = "failed" if error else "early_stopped"
        values: list[float] | None = None
        if status == "complete":
            values, problem = self._values(result)
            if problem:  # told COMPLETE, Optuna would raise (and stop the study); it is a failed trial
                status, result = "failed", {**result, "error": problem}
        attrs = self._user_attrs(number, status, result, error, config)
        if self.run_dir is not None:  # first on disk: a kill before the tell below is told on resume
            write_told(self._trial_dir(number), status, result, error)
        for key, value in attrs.items():
            self._store.set_trial_user_attr(tid, key, value)
        if status == "complete":
            study.tell(number, values, state=TrialState.COMPLETE)
        elif status in ("infeasible", "failed"):
            study.tell(number, state=TrialState.FAIL)
        else:
            study.tell(number, state=TrialState.PRUNED)
        if self.run_dir is not None:  # ended for good (an early-stopped trial's process was stopped mid-way)
            drop_kept_checkpoint(self._trial_dir(number))

    def _values(self, result: dict) -> tuple[list[float] | None, str | None]:
        """The objectives' values in the study's order, or why they cannot be told (missing or NaN)."""
        values, wrong = [], []
        for metric in self.metric:
            v = result.get(metric)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
                wrong.append(f"{metric}={v!r}")
            else:
                values.append(float(v))
        if wrong:
            return None, f"the finished trial reported no usable objective value ({', '.join(wrong)})"
        return values, None

    def _user_attrs(self, number: int, status: str, result: dict, error: bool,
                    config: dict | None) -> dict[str, Any]:
        """The trial's user attrs: status, trial_dir, its resolved config (as the trial reported it), the
        val_acc curve, and the metrics (or error) its status calls for."""
        attrs: dict[str, Any] = {"status": status, "trial_dir": result.get("trial_dir") or trial_name(number)}
        trial_dir = self._trial_dir(number)
        if config is None and error and self.run_dir is not None:
            config = _config_on_disk(trial_dir)  # the process died before it reported anything
        if config is not None and self.run_dir is not None:
            attrs["config"] = config
        if status in ("complete", "early_stopped"):
            curve = val_acc_curve(trial_dir)
            if curve:
                attrs["val_acc_by_epoch"] = curve
        if status == "complete":
            attrs["metrics"] = {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool))}
        elif status in ("infeasible", "failed"):
            attrs["error"] = result.get("error") if not error else None
            if not attrs["error"]:  # the process died (Tune retried it once): what its stderr said
                attrs["error"] = crash_reason(trial_dir)
            attrs["metrics"] = {k: result[k] for k in COST_METRICS if k in result}
        else:
            attrs["metrics"] = {k: result[k] for k in ("val_acc", "epoch", *COST_METRICS) if k in result}
            attrs["early_stopped_at_epoch"] = result.get("epoch")
        return attrs

    # ------------------------------------------------------------------------------------------ resume
    def resume(self, tune_trials: Mapping[str, tuple[int, bool]]) -> None:
        """Rebuild the searcher's state from the Optuna storage and the trials Tune restored (Tune trial id ->
        (Optuna trial number, whether Tune will run it: not TERMINATED)).

        An end written to told.json but not told (a kill in between) is told now. The asked, unfinished trials
        that no restored Tune trial will run are the backlog `suggest` hands out first; the finished ones are
        never asked again."""
        study = self.optuna_study()
        if self.run_dir is not None:
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                told = read_told(self._trial_dir(t.number))
                if told is not None:
                    self._tell(t.number, {**told["result"], "status": told["status"]}, bool(told.get("error")))
        finished = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        unfinished = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        self.numbers = {str(tid): int(n) for tid, (n, _) in tune_trials.items()}
        self.told = {tid for tid, n in self.numbers.items() if n in finished}
        self._live = {str(tid) for tid, (_, live) in tune_trials.items() if live}
        run_by_tune = {int(n) for n, live in tune_trials.values() if live}
        self._backlog = sorted(unfinished - run_by_tune)
        if self._backlog:
            print(f"trial(s) {self._backlog} were asked before the interruption and are not run by the restored Tune "
                  "run: run again (same numbers and parameters, from their kept checkpoints where they have one) "
                  "before any new trial is asked", flush=True)

    def save(self, checkpoint_path: str) -> None:
        """Write the searcher's state into Tune's experiment snapshot: only what `restore` checks (the format and
        the study name). Everything else is rebuilt from the storage on restore."""
        state = {"format": STATE_FORMAT, "study_name": self.study_name}
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(state, fh)

    def restore(self, checkpoint_path: str) -> None:
        """`Tuner.restore`, after a crash or kill of the driver: check that the snapshot is this study's, then
        rebuild from the storage and from the trials in Tune's experiment state (the one Tune restored, synced
        beside `checkpoint_path`), never from a pickled map or sampler that can be older than the storage."""
        with open(checkpoint_path, "rb") as fh:
            state = pickle.load(fh)  # Tune's own snapshot in this run folder, written by save()
        if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
            raise UserError(f"{checkpoint_path} is not a searcher state this kdstudy version wrote; finish the "
                            "study with the version that started it, or start a new one with --name.")
        if state["study_name"] != self.study_name:
            raise UserError(f"{checkpoint_path} belongs to the Optuna study '{state['study_name']}', not "
                            f"'{self.study_name}'; resume that study's own run folder, or start a new one with --name.")
        self._study = self._storage = None  # reopened in this process
        self.resume(read_tune_trials(Path(checkpoint_path).parent))

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles the searcher (tuner.pkl, before the study starts): without the open study and storage."""
        state = self.__dict__.copy()
        state["_study"] = state["_storage"] = None
        return state


def _config_on_disk(trial_dir: Path) -> dict | None:
    """config.yaml of a trial whose process died before its first report (Tune then hands no result)."""
    import yaml

    path = trial_dir / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else None


def draw_seed(seed: int, number: int) -> int:
    """The sampler's seed for trial `number` of a study seeded `seed` (well mixed, 32 bits)."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(number)]).generate_state(1)[0])


def read_tune_trials(experiment_dir: Path) -> dict[str, tuple[int, bool]]:
    """Tune trial id -> (Optuna trial number, whether the restored Tune runs it) for the trials in the newest
    experiment state under `experiment_dir` (Ray's public `ExperimentAnalysis`); {} where there is none.
    ERROR trials count as run: run_search restores with resume_errored=True."""
    import logging

    from ray.tune import ExperimentAnalysis

    quiet = logging.getLogger(ExperimentAnalysis.__module__)  # it also reads every trial's results: not needed here
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        analysis = ExperimentAnalysis(str(experiment_dir))
    except (ValueError, FileNotFoundError):
        return {}
    finally:
        quiet.setLevel(level)
    return {t.trial_id: (int(t.config["trial_number"]), t.status != "TERMINATED") for t in analysis.trials
            if t.config.get("trial_number") is not None}


def close_orphans(storage_url: str, study_name: str) -> int:
    """Tell FAIL any Optuna trial left RUNNING by a killed driver that Tune will never finish (and any enqueued one
    still WAITING); returns how many."""
    storage = optuna.storages.RDBStorage(storage_url)
    study = optuna.load_study(study_name=study_name, storage=storage)
    study_id = storage.get_study_id_from_name(study_name)
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        tid = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(tid, "status", "failed")
        if t.state == TrialState.WAITING:  # study.tell refuses a trial that was never asked for
            storage.set_trial_user_attr(tid, "error", "enqueued, never run: the study reached its trial count first")
            storage.set_trial_state_values(tid, TrialState.FAIL)
        else:
            storage.set_trial_user_attr(tid, "error", "orphaned: its driver was killed before it ran")
            study.tell(t.number, state=TrialState.FAIL)
        n += 1
    return n


def unfinished_trials(storage_url: str, study_name: str) -> list[int]:
    """Numbers of the Optuna trials asked and not finished (RUNNING)."""
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    return sorted(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def val_acc_curve(trial_dir: Path) -> list[float]:
    """The trial's validation accuracy after each epoch (distillation, then fine-tuning; epochs.csv), kept as the
    user attr `val_acc_by_epoch`: Optuna stores no intermediate values in multi-objective studies (optuna#3450), so
    optuna-dashboard shows the curve as this attribute, not as a plot."""
    import csv

    try:
        with open(Path(trial_dir) / "epochs.csv", newline="") as fh:
            return [round(float(r["val_acc"]), 4) for r in csv.DictReader(fh) if r.get("val_acc") not in (None, "")]
    except (OSError, ValueError, KeyError):
        return []
