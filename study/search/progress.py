"""The study's progress lines: a Ray Tune callback, kept apart from study.search.driver so that importing that module
does not import Ray (`run_search` sets Ray's environment first)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ray.tune import Callback

from study.core.fmt import fmt_value
from study.core.run_dir import RunDir
from study.search.crash import crash_reason
from study.search.hypervolume import is_accuracy, normalization, normalized_hypervolume
from study.search.told import TOLD_FILE


class Progress(Callback):
    """One line per finished trial with its key metrics: [finished/total, seconds since this driver started],
    then (with a run_dir) a line with the study so far (SoFar: best accuracy, hypervolume, trials done / running /
    left, ETA), after which `on_trial_end(run_dir, so_far)` runs; a line for a crashed trial process that Tune
    starts again (once, from its last checkpoint).

    Tune pickles this callback into its experiment state and a resumed study runs the unpickled copy, so
    `on_trial_end` must pickle (a module-level function or class instance) and attributes added since may be
    missing (getattr)."""

    def __init__(self, objectives: list[tuple[str, str]], total: int, run_dir: Path | None = None,
                 fixed: dict | None = None, concurrent: int = 1,
                 on_trial_end: Callable[[Path, SoFar], None] | None = None):
        self.objectives, self.total, self.done, self.t0 = objectives, total, 0, time.time()
        self.run_dir = run_dir
        self.fixed = dict(fixed or {})  # the study's trial config, shown where a parameter is not searched
        self.concurrent = concurrent  # trials at once (the ETA's divisor)
        self.on_trial_end = on_trial_end
        self._counted = False
        self._trials: list = []

    def __getstate__(self):  # Tune pickles this callback: without the live trial list
        return {**self.__dict__, "_trials": []}

    def setup(self, *args, **info):
        """Tune's start (also after Tuner.restore): the clock and the done count start again."""
        # Tuner.restore unpickles this callback as it was when the study started (tuner.pkl): start the clock
        # again, and count the trials the earlier run finished at the first step (they are not printed again).
        self.t0, self.done, self._counted = time.time(), 0, False

    def on_step_begin(self, iteration, trials, **info):
        """Keep Tune's trial list; on the first step, count the trials already done."""
        self._trials = trials  # Tune's trial list: the ones in flight, for the running summary
        if not self._counted:
            told = self._told()
            self.done = told if told is not None else sum(t.status in ("TERMINATED", "ERROR") for t in trials)
            self._counted = True

    def _told(self) -> int | None:
        """Trials Optuna knows finished (trials/*/told.json, which the searcher writes before this callback
        runs): the count on resume includes trials Tune's restored snapshot never named."""
        run_dir = getattr(self, "run_dir", None)
        return None if run_dir is None else sum(1 for _ in RunDir(run_dir).trial_files(TOLD_FILE))

    def on_trial_complete(self, iteration, trials, trial, **info):
        """The line of a trial that ended (not one replayed after a driver kill)."""
        if (trial.last_result or {}).get("replayed"):  # finished before a driver kill: counted, not shown again
            return
        self._line(trial, trial.last_result or {})

    def on_trial_error(self, iteration, trials, trial, **info):
        """The line of a trial whose process died, with the reason from its stderr.log."""
        self._line(trial, {**(trial.last_result or {}), "status": "failed", "error": self._crash(trial)})

    def on_trial_recover(self, iteration, trials, trial, **info):
        """The line of a crashed trial that Tune starts again from its last checkpoint."""
        print(f"[{self.done}/{self.total} {time.time() - self.t0:6.0f}s] trial {trial.config.get('trial_number', '?')} "
              f"crashed, retrying once from its last checkpoint: {self._crash(trial)}", flush=True)

    def _crash(self, trial) -> str:
        number = trial.config.get("trial_number")
        if self.run_dir is None or number is None:
            return "the trial's process died"
        return crash_reason(RunDir(self.run_dir).trial(number))

    def _line(self, trial, r: dict) -> None:
        told = self._told()
        self.done = self.done + 1 if told is None else max(self.done, told)
        status = r.get("status", "?")
        status = "early_stopped" if status == "running" else status
        p = {**getattr(self, "fixed", {}), **trial.config}  # a callback pickled by an older version has none
        desc = (f"w={p.get('width_mult', '-')} T={fmt_value(p.get('temperature'))} a={fmt_value(p.get('alpha'))} "
                f"kd={p.get('kd_loss', '-')} {p.get('prune_method', 'none')}@{fmt_value(p.get('prune_ratio', 0))} "
                f"q={p.get('quantize', 'none')}")
        objs = "  ".join(f"{m}={fmt_value(r.get(m))}" for m, _ in self.objectives)
        extra = f" at epoch {r.get('epoch')}" if status == "early_stopped" else ""
        err = f"  ({r.get('error')})" if status in ("failed", "infeasible") else ""
        print(f"[{self.done}/{self.total} {time.time() - self.t0:6.0f}s] trial {p.get('trial_number', '?')} "
              f"{status}{extra}: {desc}  {objs}{err}", flush=True)
        so_far = self._so_far(trial)
        run_dir = getattr(self, "run_dir", None)
        if so_far is not None and run_dir is not None:
            print(f"  so far: {so_far.line()}", flush=True)
            hook = getattr(self, "on_trial_end", None)
            if hook is not None:
                hook(Path(run_dir), so_far)

    def _so_far(self, trial) -> SoFar | None:
        """The running summary from the trials' told.json files (so a resumed study counts the earlier run's)."""
        run_dir = getattr(self, "run_dir", None)
        if run_dir is None:
            return None
        running = sum(t.status in ("RUNNING", "PENDING") for t in getattr(self, "_trials", [])
                      if t is not trial)
        return study_so_far(Path(run_dir), self.objectives, self.total, running, getattr(self, "concurrent", 1))


@dataclass
class SoFar:
    """Where a study stands after a trial ended: the running summary of the progress lines."""

    done: int  # trials that ended (complete, early stopped, infeasible, failed)
    running: int  # trials in flight
    left: int  # trials not started
    best: tuple[str, float, int] | None  # (accuracy objective, best value, its trial) among complete trials
    hypervolume: float | None  # of the complete trials' front (search.hypervolume's rule; None: none complete)
    eta_s: float | None  # mean wall time of the ended trials x (running + left) / concurrency

    def line(self) -> str:
        """The running summary as one line."""
        best = f"best {self.best[0]} {self.best[1]:.2f}% (trial {self.best[2]})" if self.best else "no complete trial"
        hv = f"hypervolume {self.hypervolume:.4f}" if self.hypervolume is not None else "hypervolume -"
        eta = _duration(self.eta_s) if self.eta_s is not None else "-"
        return f"{best}  {hv}  trials {self.done} done / {self.running} running / {self.left} left  ETA {eta}"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def study_so_far(run_dir: Path, objectives: list[tuple[str, str]], total: int, running: int,
                 concurrent: int) -> SoFar:
    """SoFar from RUN_DIR: trials/*/told.json for the ended trials, references/ and baselines/ for the ranges of
    the hypervolume (as the results pipeline normalises: complete trials and the models beside the search)."""
    run = RunDir(run_dir)
    ended = {int(p.parent.name): t for p in run.trial_files(TOLD_FILE)
             if p.parent.name.isdigit() and (t := _read(p)) is not None and isinstance(t.get("result"), dict)}
    complete = {n: t["result"] for n, t in ended.items() if t.get("status") == "complete"}
    names, dirs = [m for m, _ in objectives], [d for _, d in objectives]
    acc = next((m for m, d in objectives if is_accuracy(m) and d == "maximize"), None)
    accs = {n: v for n, r in complete.items() if acc is not None and (v := _num(r.get(acc))) == v}  # NaN != NaN
    best = None
    if accs and acc is not None:
        n = max(sorted(accs), key=accs.__getitem__)  # ties: the lower trial number
        best = (acc, accs[n], n)
    hv = None
    if complete:
        values = np.array([[_num(r.get(m)) for m in names] for r in complete.values()], dtype=float)
        beside = [m for p in [*run.references.glob("*/metrics.json"), *run.baselines.glob("*/metrics.json")]
                  if (m := _read(p)) is not None]
        observed = np.vstack([values, np.array([[_num(m.get(k)) for k in names] for m in beside],
                                               dtype=float).reshape(-1, len(names))])
        hv = normalized_hypervolume(values, normalization(names, dirs, observed))
    walls = [w for t in ended.values() if (w := _num(t["result"].get("wall_s"))) == w]  # NaN != NaN
    left = max(0, total - len(ended) - running)
    eta = sum(walls) / len(walls) * (running + left) / max(1, concurrent) if walls else None
    return SoFar(len(ended), running, left, best, hv, eta)


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")
