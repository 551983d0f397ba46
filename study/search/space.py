"""Search space files: read, validate as a whole, and turn into an Optuna define-by-run function.

A space file (YAML) has these top-level keys (see demo.yaml for a commented example):
  name         default run name
  trial        fixed values of any TrialConfig field (data set, teacher, student, budgets)
  params       searched parameters: {NAME: {type: float|int|categorical, low, high, log, step, choices, when}}
               `when: {OTHER: [values]}` samples NAME only when OTHER (sampled earlier) takes one of the values;
               `when: {OTHER: {not: [values]}}` only when it takes none of them.
  objectives   {METRIC: maximize|minimize}; computed on the validation split, never on test
  constraints  {max_params, max_nonzero_params, max_macs, max_latency_ms}: checked before training
  search       {sampler: tpe|nsga2|nsga3|gp|random, seed, trials, concurrent,
                scheduler: none|asha|mo_asha, grace_epochs, reduction_factor, report_every_s, confirm_seeds}
  resources    {cpus_per_trial, gpus_per_trial}
  baselines    configurations a user would pick by hand, trained once per study with the study's protocol and
               compared with the front: a list of built-in names (seed_recipe, no_kd) and/or mappings
               {name: NAME, FIELD: value, ...} (any trial field or searched parameter). Absent: both built-ins;
               []: none.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from study.config import CONFIG_FIELDS, TrialConfig, make_config, unknown_key_error
from study.core.errors import SpaceError, UserError
from study.search.samplers import SAMPLERS

TOP_KEYS = ("name", "description", "trial", "params", "objectives", "constraints", "search", "resources",
            "baselines")
PARAM_KEYS = ("type", "low", "high", "log", "step", "choices", "when")
SEARCH_KEYS = ("sampler", "seed", "trials", "concurrent", "scheduler", "grace_epochs", "reduction_factor",
               "report_every_s", "confirm_seeds")
RESOURCE_KEYS = ("cpus_per_trial", "gpus_per_trial")
SCHEDULERS = ("none", "asha", "mo_asha")
# Metrics a trial reports, with the direction that makes sense for each.
OBJECTIVE_METRICS = {
    "val_acc": "maximize", "params": "minimize", "nonzero_params": "minimize", "macs": "minimize",
    "latency_ms_bs1": "minimize", "size_bytes": "minimize", "throughput_ips": "maximize",
    "compression": "maximize",
}
# Objectives that are known before training (architecture only): early stopping may use them at every rung.
COST_METRICS = ("params", "nonzero_params", "macs", "latency_ms_bs1", "size_bytes")
# Fields that define the study's data split and teacher: one value per study, never searched.
STUDY_FIXED = ("imports", "dataset", "data_root", "download", "image_size", "skip_bad_images", "normalize",
               "teacher_checkpoint", "val_size", "seed", "split_seed", "train_size", "teacher_arch", "teacher_width",
               "teacher_epochs", "teacher_lr", "teacher_precision", "teacher_cache", "device")
# How costs are measured: a baseline that changed these would be compared with the front on another scale.
MEASUREMENT_FIELDS = ("latency_backend", "latency_device", "threads", "latency_repeats", "throughput_batch",
                      "eval_batch_size")
# Baselines every space gets unless it lists its own (`baselines: []` turns them off). Their values are set over the
# space's trial: section, so data, teacher, student family and distillation epochs are the study's own.
# seed_recipe: the original project's recipe (the KD project this tool grew from: KD with T = 4 and alpha = 0.3 on
# the hard labels, the full-width student, torch-pruning structured channel pruning of 30 %, then 5 fine-tuning
# epochs); no_kd: that same student trained with plain cross-entropy and left unpruned.
BUILTIN_BASELINES = {
    "seed_recipe": {"kd_loss": "kd", "temperature": 4.0, "alpha": 0.3, "width_mult": 1.0,
                    "prune_method": "l1_structured", "prune_ratio": 0.3, "finetune_epochs": 5, "quantize": "none"},
    "no_kd": {"kd_loss": "ce", "width_mult": 1.0, "prune_method": "none", "prune_ratio": 0.0, "quantize": "none"},
}
CONSTRAINTS = {"max_params": "params", "max_nonzero_params": "nonzero_params", "max_macs": "macs",
               "max_latency_ms": "latency_ms_bs1"}


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter of a space file's `params:`, validated: its type, range or choices, and when it is
    sampled."""

    name: str  # a TrialConfig field
    type: str  # float, int or categorical
    low: float | None = None
    high: float | None = None
    log: bool = False  # sample on a log scale
    step: float | None = None  # discretisation step (int/float)
    choices: tuple = ()  # categorical values
    when: dict = field(default_factory=dict)  # {other_param: {"in": [...]} or {"not": [...]}}

    def contains(self, value: Any) -> bool:
        """Can a trial of this parameter take `value` (a choice; within the bounds, on the step)?"""
        if self.type == "categorical":  # 1 == 1.0 is a match, True == 1 is not
            return any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in self.choices)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        low, high = self.bounds()
        if not low <= value <= high:
            return False
        if self.type == "int" and value != int(value):
            return False
        step = self.step if self.step else (1 if self.type == "int" else None)
        return step is None or abs((value - low) / step - round((value - low) / step)) < 1e-9

    def bounds(self) -> tuple[float, float]:
        """(low, high) of a float or int parameter (a categorical one has choices instead)."""
        if self.low is None or self.high is None:
            raise ValueError(f"parameter {self.name} ({self.type}) has no bounds")
        return self.low, self.high

    def describe(self) -> str:
        """Its range in words, for messages: "choices a, b" or "LOW .. HIGH [step S]"."""
        if self.type == "categorical":
            return "choices " + ", ".join(map(str, self.choices))
        return f"{self.low:g} .. {self.high:g}" + (f" step {self.step:g}" if self.step else "")

    def active(self, values: dict[str, Any]) -> bool:
        """Is it sampled, given the values of the parameters sampled before it (its `when:` rules)?"""
        for other, rule in self.when.items():
            v = values.get(other)
            if "in" in rule and v not in rule["in"]:
                return False
            if "not" in rule and v in rule["not"]:
                return False
        return True


@dataclass(frozen=True)
class SearchSpace:
    """A validated space file (`load_space`): the fixed trial settings, the searched parameters, objectives,
    constraints, the search's and resources' settings, and the baselines."""

    path: str  # the YAML file this came from
    name: str
    trial: dict  # fixed TrialConfig values
    params: tuple[ParamSpec, ...]
    objectives: tuple[tuple[str, str], ...]  # (metric, "maximize"|"minimize")
    constraints: dict  # e.g. {"max_params": 50000}
    sampler: str = "tpe"
    seed: int = 0
    trials: int = 16
    concurrent: int = 2
    scheduler: str = "none"
    grace_epochs: int = 1  # first early-stopping rung, in epochs
    reduction_factor: int = 3  # keep the best 1/reduction_factor at each rung
    # A trial reports to Ray Tune (with a resumable checkpoint) at the scheduler's rung epochs, and otherwise
    # after any epoch that ends at least this many seconds after its last report (0: every epoch).
    report_every_s: float = 30.0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # fraction of a GPU per trial; ignored (CPU is used) on a machine without GPUs
    raw: dict = field(default_factory=dict)  # the file's content, as loaded
    baselines: tuple[tuple[str, dict], ...] = ()  # (name, values over `trial`), in the file's order
    # after the search, the front models a user would pick and the baselines are re-trained with this many more
    # seeds (study.reproduce.confirm), and the baseline verdicts are stated on seed means; 0 turns it off
    confirm_seeds: int = 2

    def baseline_config(self, name: str) -> TrialConfig:
        """The configuration of baseline `name`: its values over the space's trial: section."""
        return make_config(self.trial, dict(self.baselines)[name], source=f"{self.path}: baselines.{name}")

    def base_config(self) -> TrialConfig:
        """The configuration of the trial: section alone (every searched parameter at its default)."""
        return make_config(self.trial, source=self.path)

    def config_for(self, sampled: dict[str, Any]) -> TrialConfig:
        """The configuration of one trial: the sampled values (config fields only) over the trial: section."""
        return make_config(self.trial, {k: v for k, v in sampled.items() if k in CONFIG_FIELDS}, source=self.path)

    @property
    def total_epochs(self) -> int:
        """The most epochs (distillation + fine-tuning) any trial can run, searched epoch counts included."""
        base = self.base_config()
        top = {"epochs": base.epochs, "finetune_epochs": base.finetune_epochs}
        for p in self.params:
            if p.name in top:  # choices were checked to make valid configs: each one reads as an int
                top[p.name] = max(int(c) for c in p.choices) if p.type == "categorical" else int(p.bounds()[1])
        return top["epochs"] + top["finetune_epochs"]

    def define_by_run(self) -> DefineByRun:
        """The Optuna define-by-run function that samples this space's parameters."""
        return DefineByRun(self.params)

    def baseline_params(self, name: str) -> tuple[dict[str, Any] | None, str]:
        """(the searched parameters that make baseline `name`'s exact configuration, "") when the baseline lies
        in the space, else (None, why not). Such a baseline is enqueued as a search trial (study.search.driver), so the
        search starts from what the user would pick; one outside the space is trained beside the search."""
        values = dict(self.baselines)[name]
        target = self.baseline_config(name)
        params: dict[str, Any] = {}
        for p in self.params:
            if not p.active(params):
                continue
            v = getattr(target, p.name)
            if not p.contains(v):
                return None, f"{p.name} {v!r} is outside params.{p.name} ({p.describe()})"
            params[p.name] = v
        got = self.config_for(params).to_dict()
        differ = [k for k, v in target.to_dict().items() if got.get(k) != v]
        if differ:
            k = differ[0]
            where = "fixed under trial:" if k in self.trial else "the default (not searched)"
            return None, f"{k} {values.get(k, target.to_dict()[k])!r} differs from the study's {got[k]!r} ({where})"
        return params, ""


class DefineByRun:
    """Optuna define-by-run function for a space. A module-level class, so Ray can pickle it."""

    def __init__(self, params: tuple[ParamSpec, ...]):
        self.params = params

    def __call__(self, trial: Any) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for p in self.params:
            if not p.active(values):
                continue  # conditional parameter: absent from the trial, the config default applies
            if p.type == "categorical":
                values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
            elif p.type == "int":
                low, high = p.bounds()
                values[p.name] = trial.suggest_int(p.name, int(low), int(high), step=int(p.step or 1), log=p.log)
            else:
                low, high = p.bounds()
                values[p.name] = trial.suggest_float(p.name, low, high, step=p.step, log=p.log)
        return {"trial_number": trial.number}


def _err(path: str, key: str, msg: str) -> SpaceError:
    return SpaceError(f"{path}: {key}: {msg}")


def _check_keys(d: Any, allowed: tuple, path: str, where: str) -> dict:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise _err(path, where, f"must be a mapping (got {type(d).__name__}).")
    for k in d:
        if k not in allowed:
            e = unknown_key_error(str(k), list(allowed), f"{path}: {where}")
            raise SpaceError(str(e))
    return d


def _parse_param(name: str, spec: Any, path: str, earlier: dict[str, ParamSpec]) -> ParamSpec:
    where = f"params.{name}"
    if name not in CONFIG_FIELDS:
        close = difflib.get_close_matches(name, list(CONFIG_FIELDS), n=1)
        hint = f"did you mean '{close[0]}'?" if close else "use a TrialConfig field name (see study/config.py)."
        raise _err(path, where, f"'{name}' is not a trial setting; {hint}")
    if not isinstance(spec, dict):
        raise _err(path, where, "give a mapping such as {type: float, low: 0.1, high: 0.9} or "
                   "{type: categorical, choices: [a, b]}.")
    _check_keys(spec, PARAM_KEYS, path, where)
    kind = spec.get("type")
    if kind not in ("float", "int", "categorical"):
        raise _err(path, f"{where}.type", f"must be float, int or categorical (got {kind!r}).")
    when: dict[str, dict] = {}
    when_raw = spec.get("when") or {}
    if not isinstance(when_raw, dict):
        raise _err(path, f"{where}.when", "must be a mapping {OTHER_PARAM: [values]} or {OTHER_PARAM: {not: [values]}} "
                   f"(got {when_raw!r}).")
    for other, rule in when_raw.items():
        if other not in earlier:
            raise _err(path, f"{where}.when", f"'{other}' must be a searched parameter listed before '{name}'.")
        if isinstance(rule, dict) and set(rule) == {"not"}:
            vals, op = rule["not"], "not"
        else:
            vals, op = rule, "in"
        vals = vals if isinstance(vals, list) else [vals]
        src = earlier[other]
        if src.type == "categorical":
            bad = [v for v in vals if v not in src.choices]
            if bad:
                raise _err(path, f"{where}.when.{other}", f"{bad} not among {other}'s choices {list(src.choices)}.")
        when[other] = {op: vals}
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _err(path, f"{where}.choices", "give a non-empty list of values.")
        if any(k in spec for k in ("low", "high", "log", "step")):
            raise _err(path, where, "a categorical parameter takes only choices (remove low/high/log/step).")
        return ParamSpec(name, kind, choices=tuple(choices), when=when)
    if "choices" in spec:
        raise _err(path, where, f"a {kind} parameter takes low/high, not choices (or use type: categorical).")
    low, high = spec.get("low"), spec.get("high")
    if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or isinstance(low, bool):
        raise _err(path, where, "give numeric low and high.")
    if low > high:
        raise _err(path, where, f"low ({low}) is greater than high ({high}); swap them.")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise _err(path, where, f"log scale needs low > 0 (got {low}).")
    step = spec.get("step")
    if step is not None and (not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0
                             or (kind == "int" and not float(step).is_integer())):
        unit = "integer" if kind == "int" else "number"
        raise _err(path, f"{where}.step", f"must be a positive {unit} (got {step!r}).")
    if log and step is not None and kind == "float":
        raise _err(path, where, "a float parameter cannot have both log and step.")
    return ParamSpec(name, kind, float(low) if kind == "float" else int(low),
                     float(high) if kind == "float" else int(high), log, step, when=when)


SHIPPED_DIR = Path(__file__).resolve().parents[2] / "search_spaces"  # the YAML spaces installed with the package


def shipped_spaces() -> list[str]:
    """Names of the spaces that ship with the package (`kdstudy run demo` finds search_spaces/demo.yaml)."""
    return sorted(f.stem for f in SHIPPED_DIR.glob("*.yaml"))


def resolve_space_path(path: str | Path) -> Path:
    """`path` itself when it exists; else, for a bare name such as `demo` or `demo.yaml`, that shipped space."""
    p = Path(path)
    if p.exists() or p.parent != Path("."):
        return p
    shipped = SHIPPED_DIR / (p.name if p.suffix == ".yaml" else f"{p.name}.yaml")
    return shipped if shipped.is_file() else p


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a space file (a path, or the name of a shipped space); every mistake raises SpaceError
    naming the file, the key and the fix."""
    path = resolve_space_path(path)
    p = str(path)
    raw = _read_space_file(path)
    _check_keys(raw, TOP_KEYS, p, "top level")
    trial = _check_keys(raw.get("trial"), tuple(CONFIG_FIELDS), p, "trial")
    try:
        base = make_config(trial, source=f"{p}: trial")
    except UserError as exc:
        raise SpaceError(str(exc)) from None
    params = _parse_params(raw.get("params"), trial, p)
    _validate_values(base, trial, params, p)
    objectives = _parse_objectives(raw.get("objectives"), p)
    constraints = _check_keys(raw.get("constraints"), tuple(CONSTRAINTS), p, "constraints")
    for k, v in constraints.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
            raise _err(p, f"constraints.{k}", f"must be a positive number (got {v!r}).")
    search = _parse_search(raw.get("search"), p)
    cpus, gpus = _parse_resources(raw.get("resources"), p)
    baselines = _parse_baselines(raw.get("baselines", list(BUILTIN_BASELINES)), trial, p)
    name = str(raw.get("name") or Path(path).stem)
    return SearchSpace(p, name, dict(trial), tuple(params.values()), tuple(objectives), dict(constraints),
                       search["sampler"], search["seed"], search["trials"], search["concurrent"], search["scheduler"],
                       search["grace_epochs"], search["reduction_factor"], search["report_every_s"], cpus, gpus, raw,
                       baselines, search["confirm_seeds"])


def _read_space_file(path: Path) -> dict:
    """The YAML mapping in `path`; a missing, unreadable, binary or malformed file, or one that holds no mapping,
    raises SpaceError saying what to give instead."""
    p = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise SpaceError(f"{p}: no such search space file; give a path, or one of the shipped spaces: "
                         f"{', '.join(shipped_spaces())}.") from None
    except UnicodeDecodeError:
        raise SpaceError(f"{p}: not a text YAML file (it holds bytes that are not UTF-8 text, such as an image's); "
                         "give the path of the search space's .yaml file.") from None
    except OSError as exc:  # a folder, no permission
        raise SpaceError(f"{p}: cannot be read as a search space file ({exc.strerror or exc}); give the path of "
                         "the search space's .yaml file.") from None
    except yaml.YAMLError as exc:
        raise SpaceError(f"{p}: not valid YAML ({str(exc).splitlines()[0]}); fix the syntax.") from None
    if not isinstance(raw, dict):
        raise SpaceError(f"{p}: a search space must be a YAML mapping with keys {', '.join(TOP_KEYS)}.")
    return raw


def _parse_params(raw: Any, trial: dict, p: str) -> dict[str, ParamSpec]:
    """`params:` as ParamSpecs by name, in the file's order; none may be fixed under trial: or be a study-wide
    setting."""
    params: dict[str, ParamSpec] = {}
    for name, spec in _check_keys(raw, tuple(CONFIG_FIELDS), p, "params").items():
        if name in trial:
            raise _err(p, f"params.{name}", "is also fixed under trial:; keep it in one place.")
        if name in STUDY_FIXED:
            raise _err(p, f"params.{name}", "cannot be searched: the study trains one teacher on one data split "
                       "and every trial shares it; fix it under trial: (run one study per value).")
        params[name] = _parse_param(name, spec, p, params)
    return params


def _parse_objectives(raw: Any, p: str) -> list[tuple[str, str]]:
    """`objectives:` as (metric, direction) pairs (default: val_acc, params and latency); val_acc must be one, test_acc
    never."""
    objectives = []
    obj_raw = raw or {"val_acc": "maximize", "params": "minimize", "latency_ms_bs1": "minimize"}
    if not isinstance(obj_raw, dict):
        raise _err(p, "objectives", "must be a mapping {metric: maximize|minimize}.")
    for metric, direction in obj_raw.items():
        if metric == "test_acc":
            raise _err(p, "objectives.test_acc", "the test split is for final numbers only; use val_acc.")
        if metric not in OBJECTIVE_METRICS:
            raise SpaceError(str(unknown_key_error(metric, list(OBJECTIVE_METRICS), f"{p}: objectives")))
        if direction not in ("maximize", "minimize"):
            raise _err(p, f"objectives.{metric}", f"direction must be maximize or minimize (got {direction!r}).")
        objectives.append((metric, direction))
    if "val_acc" not in obj_raw:
        raise _err(p, "objectives", "must include val_acc (the accuracy a trial reports while training).")
    return objectives


def _parse_search(raw: Any, p: str) -> dict[str, Any]:
    """`search:` with its defaults: sampler, scheduler, seed, trials, concurrent, grace_epochs, reduction_factor,
    report_every_s (a float) and confirm_seeds, each checked."""
    search = _check_keys(raw, SEARCH_KEYS, p, "search")
    sampler = search.get("sampler", "tpe")
    try:
        SAMPLERS.check(str(sampler))
    except UserError as exc:
        raise _err(p, "search.sampler", str(exc)) from None
    scheduler = search.get("scheduler", "none")
    if scheduler not in SCHEDULERS:
        raise _err(p, "search.scheduler", f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}.")
    ints = {k: search.get(k, d) for k, d in (("seed", 0), ("trials", 16), ("concurrent", 2), ("grace_epochs", 1),
                                             ("reduction_factor", 3))}
    for k, v in ints.items():
        if not isinstance(v, int) or isinstance(v, bool) or (v < 1 and k != "seed") or v < 0:
            raise _err(p, f"search.{k}", f"must be a positive integer (got {v!r}).")
    confirm_seeds = search.get("confirm_seeds", 2)
    if not isinstance(confirm_seeds, int) or isinstance(confirm_seeds, bool) or confirm_seeds < 0:
        raise _err(p, "search.confirm_seeds", f"must be an integer >= 0 (got {confirm_seeds!r}).")
    if ints["reduction_factor"] < 2:
        raise _err(p, "search.reduction_factor", "must be >= 2.")
    report_every_s = search.get("report_every_s", 30.0)
    if not isinstance(report_every_s, (int, float)) or isinstance(report_every_s, bool) or report_every_s < 0:
        raise _err(p, "search.report_every_s", f"must be a number of seconds >= 0 (got {report_every_s!r}).")
    if sampler == "gp":
        try:
            import scipy  # noqa: F401
        except ImportError:
            raise _err(p, "search.sampler", "gp needs scipy; pip install scipy or choose tpe.") from None
    return {"sampler": sampler, "scheduler": scheduler, **ints, "confirm_seeds": confirm_seeds,
            "report_every_s": float(report_every_s)}


def _parse_resources(raw: Any, p: str) -> tuple[float, float]:
    """`resources:` as (cpus_per_trial, gpus_per_trial): numbers >= 0, not both 0."""
    res = _check_keys(raw, RESOURCE_KEYS, p, "resources")
    cpus, gpus = res.get("cpus_per_trial", 1), res.get("gpus_per_trial", 0)
    for k, v in (("cpus_per_trial", cpus), ("gpus_per_trial", gpus)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
            raise _err(p, f"resources.{k}", f"must be a number >= 0 (got {v!r}).")
    if cpus <= 0 and gpus <= 0:
        raise _err(p, "resources", "a trial needs cpus_per_trial > 0 or gpus_per_trial > 0.")
    return float(cpus), float(gpus)


def _parse_baselines(entries: Any, trial: dict, path: str) -> tuple[tuple[str, dict], ...]:
    """`baselines:` as (name, values) pairs; each one must make a valid config that shares the study's data split
    and teacher."""
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise _err(path, "baselines", "must be a list of built-in names (seed_recipe, no_kd) and/or mappings "
                   "{name: ..., FIELD: value}; [] turns them off.")
    out: dict[str, dict] = {}
    for i, entry in enumerate(entries):
        where = f"baselines[{i}]"
        if isinstance(entry, str):
            if entry not in BUILTIN_BASELINES:
                raise _err(path, where, f"unknown built-in baseline {entry!r}; the built-ins are "
                           f"{', '.join(BUILTIN_BASELINES)}, or give a mapping {{name: ..., FIELD: value}}.")
            name, values = entry, dict(BUILTIN_BASELINES[entry])
        elif isinstance(entry, dict):
            values = dict(entry)
            given = values.pop("name", None)
            if not isinstance(given, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", given):
                raise _err(path, where, "needs a `name` of letters, digits, '_', '-' or '.' (it names a folder "
                           f"under baselines/; got {given!r}).")
            name = given
            if name in BUILTIN_BASELINES:
                raise _err(path, where, f"{name!r} is a built-in baseline; list it as the plain string {name!r}, "
                           "or give yours another name.")
            for key in values:
                if key not in CONFIG_FIELDS:
                    raise SpaceError(str(unknown_key_error(key, sorted(CONFIG_FIELDS), f"{path}: {where}")))
                if key in STUDY_FIXED:
                    raise _err(path, f"{where}.{key}", "is fixed for the whole study (the baselines share its "
                               "data split and teacher); set it under trial:.")
                if key in MEASUREMENT_FIELDS:
                    raise _err(path, f"{where}.{key}", "sets how cost is measured; a baseline is measured as the "
                               "trials are, so set it under trial:.")
        else:
            raise _err(path, where, f"must be a built-in name or a mapping, got {type(entry).__name__}.")
        if name in out:
            raise _err(path, where, f"baseline name {name!r} appears twice; names must be unique.")
        try:
            make_config(trial, values, source="")
        except UserError as exc:
            raise _err(path, f"baselines.{name}", f"is not a valid configuration: {str(exc).lstrip(': ')}") from None
        out[name] = values
    return tuple(out.items())


def _validate_values(base: TrialConfig, trial: dict, params: dict[str, ParamSpec], path: str) -> None:
    """Every choice and both bounds of every parameter must make a valid config and name registered things."""
    from study.data.datasets import DATASETS
    from study.models.families import MODELS
    from study.models.pruning import PRUNE_METHODS
    from study.training.losses import KD_LOSSES

    registries = {"dataset": DATASETS, "student_arch": MODELS, "teacher_arch": MODELS,
                  "prune_method": PRUNE_METHODS, "kd_loss": KD_LOSSES}

    def check(reg, v, where: str, what: str) -> None:
        try:
            reg.resolve(str(v))
        except UserError as exc:
            raise _err(path, where, f"{what} {v!r}: {exc}") from None

    for field_name, reg in registries.items():
        if field_name in trial:
            check(reg, getattr(base, field_name), f"trial.{field_name}", "unknown")
    for spec in params.values():
        values = list(spec.choices) if spec.type == "categorical" else [spec.low, spec.high]
        reg = registries.get(spec.name)
        for v in values:
            if reg is not None:
                check(reg, v, f"params.{spec.name}", "unknown choice")
            try:
                make_config(trial, {spec.name: v}, source="")
            except UserError as exc:
                msg = str(exc).lstrip(": ").strip()
                raise _err(path, f"params.{spec.name}", f"value {v!r} is invalid: {msg}") from None
