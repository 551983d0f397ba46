"""The study's Ray Tune searcher: Tune asks it for configurations, it asks Optuna (ask-and-tell) and tells Optuna
how each trial ended.

Why our own and not Ray's `OptunaSearch`: telling Optuna the truth (COMPLETE only for fully trained trials,
PRUNED for early-stopped ones, FAIL with the reason for infeasible and failed ones) and finding a trial again
after a driver kill needed OptunaSearch's private fields (`_ot_trials`, `_ot_study`, `_completed_trials`), which
any Ray release may rename. This searcher uses only Ray's public `Searcher` interface and Optuna's public
ask-and-tell API (`study.ask`, `study.tell`, `BaseStorage`'s documented methods).

The Optuna storage (SQLite in the run folder, or a PostgreSQL URL) is the source of truth: one Optuna trial per
Tune trial, with the study's directions, user attrs and states. The searcher itself keeps only which Tune trial
is which Optuna trial number, which trials it has told, and the sampler (with its random state); that is what
`save` writes into Tune's experiment snapshot and `restore` reads back when `Tuner.restore` resumes a study.
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState
from ray.tune.search import Searcher

from search_spaces import COST_METRICS
from study.crash import crash_reason
from study.errors import UserError

# Bumped when the state `save` writes changes shape; `restore` refuses other versions with one sentence.
STATE_FORMAT = 1
DIRECTIONS = ("maximize", "minimize")

Space = Callable[[Any], "dict[str, Any] | None"] | Mapping[str, BaseDistribution]


class AskTellSearcher(Searcher):
    """A Tune searcher over one Optuna study, through ask-and-tell.

    space: a define-by-run function (`search_spaces.DefineByRun`: conditional parameters exist only when their
        condition holds; it must be picklable, Tune pickles the searcher) or a mapping name ->
        `optuna.distributions.BaseDistribution` (`study.ask(fixed_distributions=...)`, no conditions).
    objectives: (metric, "maximize" | "minimize") in the order of the study's values.
    storage_url: an RDB URL (`sqlite:///...`, `postgresql+psycopg://...`); opened here, never pickled.
    run_dir: where `trials/<n>/config.yaml` (recorded in the trial's user attrs) and `stderr.log` (the reason a
        crashed trial gives) live.

    Each configuration Tune gets is the sampled parameters plus `trial_number`, the Optuna trial number: it names
    `trials/<n>/`, and every result the trial reports carries it, so a completion is told to the right Optuna
    trial even when this searcher was restored from a snapshot older than Tune's own.
    """

    def __init__(self, space: Space, *, objectives: Sequence[tuple[str, str]], storage_url: str, study_name: str,
                 sampler: optuna.samplers.BaseSampler | None = None, run_dir: str | Path | None = None):
        bad = [d for _, d in objectives if d not in DIRECTIONS]
        if not objectives or bad:
            raise UserError(f"objectives must be (metric, maximize|minimize) pairs (got {list(objectives)!r}); "
                            "fix the space's objectives: section.")
        super().__init__(metric=[m for m, _ in objectives],
                         mode=["max" if d == "maximize" else "min" for _, d in objectives])
        self.space = space
        self.objectives = [(m, d) for m, d in objectives]
        self.storage_url = storage_url
        self.study_name = study_name
        self.sampler = sampler
        self.run_dir = str(run_dir) if run_dir is not None else None
        self.numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number
        self.told: set[str] = set()  # Tune trial ids whose end Optuna already knows
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
                                        study_name=self.study_name, directions=wanted, load_if_exists=True)
            have = [d.name.lower() for d in study.directions]
            if have != wanted:
                raise UserError(f"the Optuna study '{self.study_name}' in {self.storage_url} has directions {have}, "
                                f"not the space's {wanted}; start a new study with --name.")
            if not study.metric_names:
                with warnings.catch_warnings():  # "experimental" since Optuna 3.2, stable in use
                    warnings.simplefilter("ignore")
                    study.set_metric_names([m for m, _ in self.objectives])
            self._study, self._storage = study, storage
            self.sampler = study.sampler  # Optuna's default when none was given: saved with its state too
        return self._study

    def _storage_trial_id(self, number: int) -> int:
        """Storage id of trial `number` (user attrs are set through the storage: after a restore there is no
        `optuna.Trial` object for a trial asked by the driver before)."""
        study = self.optuna_study()
        storage = self._storage
        return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name),
                                                               number)

    # ------------------------------------------------------------------------------------------ Tune's interface
    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """Ask Optuna for a trial (an enqueued one first, as `study.ask` does) and return its configuration."""
        study = self.optuna_study()
        if trial_id in self.numbers:  # asked again for a trial it already has: the same configuration
            return self._config(self._frozen(self.numbers[trial_id]))
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
        self.numbers[trial_id] = trial.number
        return {**trial.params, **extra, "trial_number": trial.number}

    def _frozen(self, number: int) -> optuna.trial.FrozenTrial:
        return self._storage.get_trial(self._storage_trial_id(number))

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
        result = result or {}
        if trial_id in self.told:
            return
        number = self.numbers.get(trial_id)
        if number is None and result.get("trial_number") is not None:
            # After a driver kill the restored searcher state can be older than Tune's: the trial was asked for
            # after the last searcher snapshot was written. Find it by the number the trial reports.
            number = int(result["trial_number"])
        if number is None:
            return  # a trial this searcher never asked for and that reported nothing: nothing to tell
        study = self.optuna_study()
        tid = self._storage_trial_id(number)
        if self._storage.get_trial(tid).state.is_finished():
            self.told.add(trial_id)
            return
        status = result.get("status", "failed" if error else "early_stopped")
        if status == "running":
            status = "failed" if error else "early_stopped"
        values: list[float] | None = None
        if status == "complete":
            values, problem = self._values(result)
            if problem:  # told COMPLETE, Optuna would raise (and stop the study); it is a failed trial
                status, result = "failed", {**result, "error": problem}
        attrs = self._user_attrs(number, status, result, error)
        for key, value in attrs.items():
            self._storage.set_trial_user_attr(tid, key, value)
        if status == "complete":
            study.tell(number, values, state=TrialState.COMPLETE)
        elif status in ("infeasible", "failed"):
            study.tell(number, state=TrialState.FAIL)
        else:
            study.tell(number, state=TrialState.PRUNED)
        self.told.add(trial_id)

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

    def _user_attrs(self, number: int, status: str, result: dict, error: bool) -> dict[str, Any]:
        attrs: dict[str, Any] = {"status": status, "trial_dir": result.get("trial_dir") or f"trials/{number}"}
        trial_dir = Path(self.run_dir or ".") / "trials" / str(number)
        cfg_path = trial_dir / "config.yaml"
        if self.run_dir is not None and cfg_path.exists():
            import yaml

            attrs["config"] = yaml.safe_load(cfg_path.read_text())
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
    def save(self, checkpoint_path: str) -> None:
        """Write the searcher's state (Tune calls this with each experiment snapshot, into a temp file it then
        renames): trial ids -> numbers, the trials told, and the sampler with its random state, so that a
        resumed study draws on instead of repeating the first draws of its seed."""
        state = {"format": STATE_FORMAT, "study_name": self.study_name, "numbers": dict(self.numbers),
                 "told": sorted(self.told), "sampler": self.sampler}
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(state, fh)

    def restore(self, checkpoint_path: str) -> None:
        """Read back what `save` wrote (`Tuner.restore`, after a crash or kill of the driver).

        Trials told before the interruption stay told: their replayed completions find them finished in Optuna.
        A trial left RUNNING in Optuna that Tune resumes is told when it ends, by this mapping or by the
        `trial_number` it reports; one Tune never heard of (asked after Tune's last snapshot) stays RUNNING until
        `close_orphans` marks it FAIL after the study."""
        with open(checkpoint_path, "rb") as fh:
            state = pickle.load(fh)  # Tune's own snapshot in this run folder, written by save()
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise UserError(f"{checkpoint_path} is not a searcher state this kdstudy version wrote; finish the "
                            "study with the version that started it, or start a new one with --name.")
        if state["study_name"] != self.study_name:
            raise UserError(f"{checkpoint_path} belongs to the Optuna study '{state['study_name']}', not "
                            f"'{self.study_name}'; resume that study's own run folder, or start a new one with --name.")
        self.numbers = {str(k): int(v) for k, v in state["numbers"].items()}
        self.told = set(state["told"])
        self.sampler = state["sampler"]
        self._study = self._storage = None  # reopened with the restored sampler

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles the searcher (tuner.pkl, before the study starts): without the open study and storage."""
        state = self.__dict__.copy()
        state["_study"] = state["_storage"] = None
        return state


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
