"""The typed state of a study: `StudyPlan` (what study.json holds) and `TrialContext` (what every search trial gets).

study.json is written from a StudyPlan (`to_json`, keys in the order below) and read back into one (`from_json`).
Files written by earlier versions are read too: a missing key gets the value those versions' readers assumed
(`from_json`'s docstring lists them), and keys this version does not know are kept in `extra`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.core.errors import UserError


@dataclass(frozen=True)
class Objective:
    """One objective of the study: a metric and whether it is maximized or minimized."""

    name: str
    direction: str  # "maximize" | "minimize"


@dataclass(frozen=True)
class BaselinePlan:
    """A baseline of the space: its values, the config they give, and where it runs.

    In the space: an enqueued search trial (`trial`: its Optuna number once enqueued, None before). Outside the
    space: trained beside the search under baselines/<name>/ (`outside_space`: why it is outside)."""

    values: dict[str, Any]
    config: dict[str, Any]
    trial: int | None = None
    outside_space: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The study.json entry: values, config, then trial (in the space) or outside_space."""
        where = {"trial": self.trial} if self.outside_space is None else {"outside_space": self.outside_space}
        return {"values": self.values, "config": self.config, **where}

    @classmethod
    def from_json(cls, entry: Any) -> BaselinePlan:
        """An entry of study.json's "baselines" (anything else reads as an empty baseline in the space)."""
        entry = entry if isinstance(entry, dict) else {}
        trial = entry.get("trial")
        return cls(dict(entry.get("values") or {}), dict(entry.get("config") or {}),
                   int(trial) if trial is not None else None, entry.get("outside_space"))


@dataclass(frozen=True)
class StudyPlan:
    """What a study is and how it runs: written to study.json when the study starts (again on resume, with the
    baselines' trial numbers once enqueued, and with `finished` at the end)."""

    name: str  # the study's name (runs/NAME)
    study_name: str  # the Optuna study's name
    storage: str | None  # the Optuna storage URL (None: the run folder's optuna.db)
    space_file: str | None  # the space the study was started from
    objectives: tuple[Objective, ...]  # in the order of the Optuna study's values
    constraints: dict[str, float]  # max_params, max_latency_ms, ...: trials over them are never trained
    sampler: str | None
    seed: int | None
    scheduler: str | None
    trials: int | None  # the study's trial count
    confirm_seeds: int  # extra seeds the front's picks and the baselines are confirmed with (0: none)
    concurrent: int  # trials at once
    resources: dict[str, float]  # Ray resources of one trial: {"cpu": ..., "gpu": ...}
    dataset: str | None
    input_shape: list[int] | None
    num_classes: int | None
    device: str | None  # "cuda" or "cpu": where the trials ran
    threads: int | None  # the trials' torch threads
    versions: dict[str, Any]  # python, ray, optuna, platform, torch, torch_pruning, code_sha256, git_commit, ...
    data_fingerprint: str | None
    data_info: dict[str, Any]
    teacher: dict[str, Any]  # the teacher's record (path, sha256, val_acc, ...; {} without a teacher)
    checks: dict[str, Any]  # what the preflight checked (study.search.preflight)
    base_config: dict[str, Any]  # the fixed trial settings, as a TrialConfig dict
    baselines: dict[str, BaselinePlan]
    started: str | None
    command: str | None
    normalization: dict[str, Any] | None  # the teacher's input normalisation (None: a study from before it)
    resumed: str | None = None  # when the study was last resumed
    finished: str | None = None  # when the search ended
    extra: dict[str, Any] = field(default_factory=dict)  # keys of an older (or newer) version, kept as they were

    # ------------------------------------------------------------------------------------------ reading
    @property
    def objective_pairs(self) -> list[tuple[str, str]]:
        """The objectives as (metric, direction) pairs."""
        return [(o.name, o.direction) for o in self.objectives]

    @property
    def optuna_name(self) -> str | None:
        """The Optuna study's name (a study.json from before study_name: the run's name; None when it names
        neither, which Optuna reads as the storage's only study)."""
        return self.study_name or self.name or None

    @property
    def data_sha(self) -> str | None:
        """The data set's fingerprint (older files kept it under versions)."""
        return self.data_fingerprint or self.versions.get("data_fingerprint")

    def version(self, key: str) -> Any:
        """A code or package version the study ran with (older files kept code_sha256 / git_commit at the top)."""
        return self.versions.get(key) or self.extra.get(key)

    def outside_baselines(self) -> list[str]:
        """Names of the baselines trained beside the search (outside the space), in the study's order."""
        return [n for n, b in self.baselines.items() if b.trial is None]

    def replace(self, **changes: Any) -> StudyPlan:
        """A copy with `changes`."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------------------------------ study.json
    def to_json(self) -> dict[str, Any]:
        """study.json's object: every field in order (resumed and finished only once set), then `extra`."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (f.name in ("resumed", "finished") and value is None):
                continue
            if f.name == "objectives":
                value = [{"name": o.name, "direction": o.direction} for o in value]
            elif f.name == "baselines":
                value = {n: b.to_json() for n, b in value.items()}
            out[f.name] = value
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StudyPlan:
        """A plan from study.json's object. Missing keys (files of earlier versions) read as those versions'
        readers took them: study_name the run's name, storage None (the run folder's optuna.db), objectives none
        (taken from the Optuna study), confirm_seeds 0, concurrent 1, constraints, resources, versions,
        data_info, teacher, checks, base_config and baselines empty, the rest None."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        objectives = tuple(Objective(str(o["name"]), str(o["direction"]).lower())
                           for o in data.get("objectives") or [])
        baselines = {str(n): BaselinePlan.from_json(e) for n, e in (data.get("baselines") or {}).items()}
        name = str(data.get("name") or "")
        return cls(
            name=name, study_name=str(data.get("study_name") or name), storage=data.get("storage") or None,
            space_file=data.get("space_file"), objectives=objectives, constraints=dict(data.get("constraints") or {}),
            sampler=data.get("sampler"), seed=data.get("seed"), scheduler=data.get("scheduler"),
            trials=data.get("trials"), confirm_seeds=int(data.get("confirm_seeds") or 0),
            concurrent=int(data.get("concurrent") or 1), resources=dict(data.get("resources") or {}),
            dataset=data.get("dataset"), input_shape=data.get("input_shape"), num_classes=data.get("num_classes"),
            device=data.get("device"), threads=data.get("threads"), versions=dict(data.get("versions") or {}),
            data_fingerprint=data.get("data_fingerprint"), data_info=dict(data.get("data_info") or {}),
            teacher=dict(data.get("teacher") or {}), checks=dict(data.get("checks") or {}),
            base_config=dict(data.get("base_config") or {}), baselines=baselines, started=data.get("started"),
            command=data.get("command"), normalization=data.get("normalization"), resumed=data.get("resumed"),
            finished=data.get("finished"), extra={k: v for k, v in data.items() if k not in known})


def read_study_json(path: Path) -> dict[str, Any]:
    """study.json's object as it is on disk (UserError naming the file when missing, unreadable or not an
    object)."""
    if not path.is_file():
        raise UserError(f"{path} not found: pass a run directory written by `python -m study run`.")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e.msg if hasattr(e, 'msg') else e}); restore or rewrite it.") \
            from e
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object; restore or rewrite it.")
    return data


@dataclass(frozen=True)
class TrialContext:
    """What the driver hands every search trial (study.search.trainable): the study's fixed context."""

    run_dir: str  # the run folder (absolute)
    trial: dict[str, Any]  # the space's fixed trial settings (the sampled values go over them)
    space_file: str  # where the settings come from, for error messages
    teacher_path: str | None  # the study's teacher checkpoint (None: no trial distils)
    constraints: dict[str, float]  # trials over these are recorded infeasible, never trained
    num_classes: int
    input_shape: tuple[int, int, int]
    objective_names: tuple[str, ...]
    gpu: bool  # trials run on the GPU (else device is set to cpu)
    report_epochs: tuple[int, ...] = ()  # epochs after which a trial must report (the scheduler's rungs)
    report_every_s: float = 0.0  # otherwise a trial reports once this many seconds have passed

    @property
    def needs_latency(self) -> bool:
        """Whether a trial's architecture latency is needed before training (an objective or a constraint)."""
        return "latency_ms_bs1" in self.objective_names or "max_latency_ms" in self.constraints


CONFIG_KEY = "trial_config"  # a search trial's resolved config, in every result it reports to Tune


def split_config(result: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the trial's resolved config, the result without it) from a reported result: nested as the trial reported
    it, or flattened as Tune hands results to the searcher (`trial_config/<field>` keys). None: not reported."""
    prefix = CONFIG_KEY + "/"
    nested = result.get(CONFIG_KEY)
    flat = {k[len(prefix):]: v for k, v in result.items() if k.startswith(prefix)}
    rest = {k: v for k, v in result.items() if k != CONFIG_KEY and not k.startswith(prefix)}
    if isinstance(nested, dict):
        return dict(nested), rest
    return (flat or None), rest
