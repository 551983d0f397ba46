"""The study's progress lines: a Ray Tune callback, kept apart from study.search so that importing that module
does not import Ray (`run_study` sets Ray's environment first)."""

from __future__ import annotations

import time
from pathlib import Path

from ray.tune import Callback

from study.crash import crash_reason
from study.fmt import fmt_value


class Progress(Callback):
    """One line per finished trial with its key metrics: [finished/total, seconds since this driver started];
    a line for a crashed trial process that Tune starts again (once, from its last checkpoint)."""

    def __init__(self, objectives: list[tuple[str, str]], total: int, run_dir: Path | None = None,
                 fixed: dict | None = None):
        self.objectives, self.total, self.done, self.t0 = objectives, total, 0, time.time()
        self.run_dir = run_dir
        self.fixed = dict(fixed or {})  # the space's trial: values, shown where a parameter is not searched
        self._counted = False

    def setup(self, *args, **info):
        # Tuner.restore unpickles this callback as it was when the study started (tuner.pkl): start the clock
        # again, and count the trials the earlier run finished at the first step (they are not printed again).
        self.t0, self.done, self._counted = time.time(), 0, False

    def on_step_begin(self, iteration, trials, **info):
        if not self._counted:
            told = self._told()
            self.done = told if told is not None else sum(t.status in ("TERMINATED", "ERROR") for t in trials)
            self._counted = True

    def _told(self) -> int | None:
        """Trials Optuna knows finished (trials/*/told.json, which the searcher writes before this callback
        runs): the count on resume includes trials Tune's restored snapshot never named."""
        run_dir = getattr(self, "run_dir", None)
        return None if run_dir is None else sum(1 for _ in Path(run_dir).glob("trials/*/told.json"))

    def on_trial_complete(self, iteration, trials, trial, **info):
        if (trial.last_result or {}).get("replayed"):  # finished before a driver kill: counted, not shown again
            return
        self._line(trial, trial.last_result or {})

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, {**(trial.last_result or {}), "status": "failed", "error": self._crash(trial)})

    def on_trial_recover(self, iteration, trials, trial, **info):
        print(f"[{self.done}/{self.total} {time.time() - self.t0:6.0f}s] trial {trial.config.get('trial_number', '?')} "
              f"crashed, retrying once from its last checkpoint: {self._crash(trial)}", flush=True)

    def _crash(self, trial) -> str:
        number = trial.config.get("trial_number")
        if self.run_dir is None or number is None:
            return "the trial's process died"
        return crash_reason(self.run_dir / "trials" / str(number))

    def _line(self, trial, r: dict) -> None:
        told = self._told()
        self.done = self.done + 1 if told is None else max(self.done, told)
        status = r.get("status", "?")
        status = "early_stopped" if status == "running" else status
        p = {**getattr(self, "fixed", {}), **trial.config}  # a callback pickled by an older version has none
        desc = (f"w={p.get('width_mult', '-')} T={fmt_value(p.get('temperature'))} a={fmt_value(p.get('alpha'))} "
                f"{p.get('prune_method', 'none')}@{fmt_value(p.get('prune_ratio', 0))}")
        objs = "  ".join(f"{m}={fmt_value(r.get(m))}" for m, _ in self.objectives)
        extra = f" at epoch {r.get('epoch')}" if status == "early_stopped" else ""
        err = f"  ({r.get('error')})" if status in ("failed", "infeasible") else ""
        print(f"[{self.done}/{self.total} {time.time() - self.t0:6.0f}s] trial {p.get('trial_number', '?')} "
              f"{status}{extra}: {desc}  {objs}{err}", flush=True)
