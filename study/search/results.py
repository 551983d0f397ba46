"""A study's run folder as the engine and every reader of it open it: study.json and the Optuna study it names.

One home for these readers: study.reproduce.rerun, benchmarks.collect and reports use them (the engine imports neither
benchmarks nor reports); and the one selection of a study's Pareto front from its Optuna trials (`front_trials`:
the run's printed table and reproduce's ranking). Light: optuna and numpy are imported only when used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from study.core.errors import UserError
from study.core.run_dir import RunDir
from study.search.plan import StudyPlan, read_study_json


def load_study_meta(run_dir: Path) -> dict:
    """study.json of a run directory as it is on disk, every key as written (the report's settings table shows
    them); UserError naming the file when missing or unreadable. Code that reads the study uses load_study_plan."""
    return read_study_json(RunDir(run_dir).study_json)


def load_study_plan(run_dir: Path) -> StudyPlan:
    """The StudyPlan in a run directory's study.json (files of earlier versions too; UserError naming the file
    when missing or unreadable)."""
    return StudyPlan.from_json(read_study_json(RunDir(run_dir).study_json))


def storage_url(run_dir: Path, plan: StudyPlan) -> str:
    """The study's storage URL; a SQLite file that moved with the run directory is found inside it."""
    run = RunDir(run_dir)
    url = plan.storage or run.default_storage_url
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///"):])
        # Opening a missing SQLite file would silently create an empty study; look beside study.json instead.
        for candidate in (db, run.root / db, run.root / db.name, run.optuna_db):
            if candidate.is_file():
                return f"sqlite:///{candidate}"
        raise UserError(f"{run.study_json}: storage file {db} not found (nor {run.optuna_db}); "
                        "fix the \"storage\" entry or copy the database into the run directory.")
    return url


def open_study(run_dir: Path, plan: StudyPlan) -> Any:
    """Load the Optuna study the plan names."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(run_dir, plan)
    name = plan.optuna_name
    where = RunDir(run_dir).study_json
    try:
        return optuna.load_study(study_name=name, storage=url)
    except KeyError as e:
        raise UserError(f"{where}: study {name!r} is not in {url}; fix \"study_name\" or \"storage\".") from e
    except Exception as e:  # noqa: BLE001  an unreachable server or a bad URL: one sentence, not a traceback
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{where}: cannot open the Optuna storage {url} "
                        f"({type(e).__name__}: {first}); check that the database is reachable, or fix "
                        "\"storage\".") from e


def front_trials(study: Any) -> list:
    """The Optuna trials on the study's Pareto front, in trial order: among the trials that finished training (state
    COMPLETE, search status "complete" where recorded, values set), those no other one dominates (study.core.dominance).

    Optuna's study.best_trials when every COMPLETE trial finished; computed here so that a trial marked COMPLETE
    with partial values (status early_stopped) can neither enter the front nor hide others."""
    import numpy as np
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    from study.core.dominance import non_dominated_mask

    finished = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.user_attrs.get("status", "complete") == "complete" and t.values is not None]
    signs = [-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in study.directions]  # to minimisation
    loss = [[v * g for v, g in zip(t.values, signs, strict=True)] for t in finished]
    on_front = non_dominated_mask(np.asarray(loss, dtype=float).reshape(len(finished), len(signs)))
    return [t for t, keep in zip(finished, on_front, strict=True) if keep]


# ---------------------------------------------------------------------------------------------- typed results

class TrialResult:
    """What one trial measured: the typed fields most code reads, and every metrics.json key by `result[key]`.

    Accuracies are percent (val_acc: the search objective, on the validation split; test_acc: reported only);
    params counts every stored weight, nonzero_params the ones unstructured pruning left; latency_ms_bs1 is the
    median batch-1 latency on the config's latency backend."""

    __slots__ = ("config", "metrics", "out_dir")

    def __init__(self, config: Any, metrics: dict, out_dir: Path | None = None) -> None:
        self.config = config  # the TrialConfig that ran
        self.metrics = metrics  # every metric, as written to metrics.json
        self.out_dir = Path(out_dir) if out_dir is not None else None

    val_acc = property(lambda self: float(self.metrics["val_acc"]))
    test_acc = property(lambda self: float(self.metrics["test_acc"]))
    params = property(lambda self: int(self.metrics["params"]))
    nonzero_params = property(lambda self: int(self.metrics["nonzero_params"]))
    macs = property(lambda self: int(self.metrics["macs"]))
    latency_ms_bs1 = property(lambda self: float(self.metrics["latency_ms_bs1"]))
    size_bytes = property(lambda self: int(self.metrics["size_bytes"]))

    def __getitem__(self, key: str) -> Any:
        """Any metrics.json key."""
        return self.metrics[key]

    def __repr__(self) -> str:
        return (f"TrialResult(val_acc={self.val_acc:.2f}, params={self.params:,}, "
                f"latency_ms_bs1={self.latency_ms_bs1:.4g}, out_dir={str(self.out_dir)!r})")


class StudyResult:
    """A finished (or resumed) study read back from its run folder: study.json, results.csv, pareto.csv and
    benchmark.json as the benchmarks step wrote them (absent files: None / empty)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.plan = load_study_plan(self.run_dir)  # study.json
        bench = RunDir(self.run_dir).benchmark_json
        self.benchmark: dict = json.loads(bench.read_text()) if bench.is_file() else {}

    @property
    def name(self) -> str:
        """The study's name."""
        return self.plan.name

    @property
    def results(self) -> Any:
        """Every trial, baseline and reference as a pandas DataFrame (results.csv), or None before benchmarks."""
        path = RunDir(self.run_dir).results_csv
        if not path.is_file():
            return None
        import pandas as pd

        return pd.read_csv(path)

    @property
    def pareto(self) -> list[int]:
        """Optuna numbers of the Pareto-optimal trials (pareto.csv)."""
        path = RunDir(self.run_dir).pareto_csv
        if not path.is_file():
            return []
        import pandas as pd

        df = pd.read_csv(path)
        if "number" not in df.columns:
            return []
        trials = df["reference"].isna() if "reference" in df.columns else df["number"].notna()
        return [int(n) for n in df.loc[trials, "number"].dropna()]

    @property
    def knee(self) -> int | None:
        """The front's knee (benchmark.json), or None before the benchmarks step or with an empty front."""
        knee = self.benchmark.get("knee")
        return int(knee["trial"]) if isinstance(knee, dict) and knee.get("trial") is not None else None

    @property
    def report(self) -> Path | None:
        """report.html, once written."""
        path = RunDir(self.run_dir).report_html
        return path if path.is_file() else None

    def trial(self, number: int) -> TrialResult:
        """Trial `number`'s TrialResult from its folder (config.yaml, metrics.json)."""
        from study.config import CONFIG_FIELDS, load_config, make_config

        folder = RunDir(self.run_dir).trial(number)
        path = folder / "metrics.json"
        if not path.is_file():
            raise UserError(f"{path} not found: trial {number} did not finish; pick one of {self.pareto}.")
        metrics = json.loads(path.read_text())
        cfg = load_config(folder / "config.yaml") if (folder / "config.yaml").is_file() else \
            make_config({k: v for k, v in metrics.items() if k in CONFIG_FIELDS}, source=str(path))
        return TrialResult(cfg, metrics, folder)

    def __fspath__(self) -> str:
        return str(self.run_dir)

    def __repr__(self) -> str:
        return f"StudyResult({str(self.run_dir)!r}, pareto={self.pareto}, knee={self.knee})"
