"""Every path of a study's run folder (runs/NAME/), named once.

    study.json            the study's plan (study.search.plan.StudyPlan)
    space.yaml            the space the study started from
    optuna.db             the Optuna storage (SQLite; a study can name another storage)
    trials/<n>/           one search trial: config.yaml, metrics.json, epochs.csv, model.pt, told.json, ...
    references/<kind>/    the reference models (teacher, student_ce, student_kd)
    baselines/<name>/     the baselines trained beside the search
    ray/                  Ray Tune's experiment state (ray/tune, ray/tune-rest)
    results.csv, pareto.csv, benchmark.json, report.html    the result pipeline's files
    confirm/              confirmation seeds (plan.json, <key>/seed_<s>/, done.json)
    reproduce/<key>/      `kdstudy reproduce` output

This is the only module that spells a trial's folder; everything else asks a RunDir.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TRIALS = "trials"


def trial_name(number: int) -> str:
    """A trial's folder relative to the run folder (trials/<n>), as results and Optuna user attrs record it."""
    return f"{TRIALS}/{int(number)}"


@dataclass(frozen=True)
class RunDir:
    """The paths of one run folder; `root` is the folder itself (runs/NAME)."""

    root: Path

    def __init__(self, root: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "root", Path(root))

    def __fspath__(self) -> str:
        return str(self.root)

    # ------------------------------------------------------------------------------------------ the study
    @property
    def study_json(self) -> Path:
        """study.json: the study's plan."""
        return self.root / "study.json"

    @property
    def space_yaml(self) -> Path:
        """space.yaml: the space's text as the study started from it."""
        return self.root / "space.yaml"

    @property
    def optuna_db(self) -> Path:
        """optuna.db: the study's own SQLite storage."""
        return self.root / "optuna.db"

    @property
    def default_storage_url(self) -> str:
        """The storage URL of the run's own SQLite file."""
        return f"sqlite:///{self.optuna_db}"

    # ------------------------------------------------------------------------------------------ trials
    @property
    def trials(self) -> Path:
        """trials/: one folder per search trial."""
        return self.root / TRIALS

    def trial(self, number: int) -> Path:
        """trials/<n>/: the folder of search trial `number`."""
        return self.root / trial_name(number)

    def trial_files(self, name: str) -> Iterator[Path]:
        """trials/*/<name>: that file of every trial folder that has it."""
        return self.trials.glob(f"*/{name}")

    # ------------------------------------------------------------------------------------------ beside the search
    @property
    def references(self) -> Path:
        """references/: the reference models."""
        return self.root / "references"

    def reference(self, kind: str) -> Path:
        """references/<kind>/."""
        return self.references / kind

    @property
    def baselines(self) -> Path:
        """baselines/: the baselines trained beside the search."""
        return self.root / "baselines"

    def baseline(self, name: str) -> Path:
        """baselines/<name>/."""
        return self.baselines / name

    def model_folder(self, number: int | None, baseline: str | None = None) -> Path:
        """A model's folder: trials/<n> for a search trial (enqueued baselines too), else baselines/<name>."""
        if number is not None:
            return self.trial(number)
        if baseline is None:
            raise ValueError("a model outside the search needs its baseline name")
        return self.baseline(baseline)

    # ------------------------------------------------------------------------------------------ Ray Tune
    @property
    def ray(self) -> Path:
        """ray/: Ray Tune's storage path."""
        return self.root / "ray"

    @property
    def tune(self) -> Path:
        """ray/tune/: the study's Tune experiment."""
        return self.ray / "tune"

    @property
    def tune_rest(self) -> Path:
        """ray/tune-rest/: the experiment that runs trials the restored Tune did not ask for again."""
        return self.ray / "tune-rest"

    # ------------------------------------------------------------------------------------------ results
    @property
    def results_csv(self) -> Path:
        """results.csv: every trial, reference and baseline."""
        return self.root / "results.csv"

    @property
    def pareto_csv(self) -> Path:
        """pareto.csv: the front's rows."""
        return self.root / "pareto.csv"

    @property
    def benchmark_json(self) -> Path:
        """benchmark.json: the result pipeline's summary."""
        return self.root / "benchmark.json"

    @property
    def report_html(self) -> Path:
        """report.html: the study's report."""
        return self.root / "report.html"

    # ------------------------------------------------------------------------------------------ after the search
    @property
    def confirm(self) -> Path:
        """confirm/: the confirmation seeds."""
        return self.root / "confirm"

    @property
    def confirm_plan(self) -> Path:
        """confirm/plan.json: the candidates and their extra seeds."""
        return self.confirm / "plan.json"

    @property
    def confirm_done(self) -> Path:
        """confirm/done.json: what the confirmation trained."""
        return self.confirm / "done.json"

    def confirm_seed(self, key: str, seed: int) -> Path:
        """confirm/<key>/seed_<s>/: one confirmation seed of a candidate."""
        return self.confirm / key / f"seed_{seed}"

    def reproduce(self, key: str) -> Path:
        """reproduce/<key>/: `kdstudy reproduce` of one model."""
        return self.root / "reproduce" / key
