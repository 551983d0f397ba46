"""Reference points of a study, measured with the trials' own protocol (runs/NAME/references/<kind>/):

  teacher      the teacher itself (accuracy, size, latency)
  student_ce   the unpruned student trained with plain cross-entropy (no KD)
  student_kd   the unpruned student with KD at the default temperature and alpha

Baselines (runs/NAME/baselines/<name>/) are the configurations a user would pick by hand (the space's
`baselines:`); they are trained here too, after the references, with the same protocol.

Kept apart from study.search.driver so that the Ray worker that computes them imports neither Optuna nor Ray Tune.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

from study.config import TrialConfig, make_config

if TYPE_CHECKING:
    from torch import nn

REFERENCES = ("teacher", "student_ce", "student_kd")


def _config(trial: dict, values: dict, gpu: bool, source: str) -> TrialConfig:
    """The study's fixed trial settings with `values` over them, on the CPU unless the study has a GPU."""
    cfg = make_config(trial, values, source=source)
    return cfg if gpu else cfg.replace(device="cpu")


def _train(cfg: TrialConfig, teacher_path: str | None, out: Path, label: dict) -> dict:
    """execute_trial into `out` (the trials' own protocol), its metrics.json labelled."""
    from study.trial.run import execute_trial

    return execute_trial(cfg, out_dir=out, teacher_path=Path(teacher_path) if teacher_path else None,
                         add_metrics=label)


def run_reference(kind: str, trial: dict, teacher_path: str | None, out_dir: str, gpu: bool) -> dict:
    """One reference point (kind in REFERENCES) for a study whose fixed trial settings are `trial`; writes
    out_dir/metrics.json (and model.pt) and returns the metrics."""
    out = Path(out_dir)
    if kind != "teacher":
        defaults = TrialConfig()
        values = {"prune_method": "none", "prune_ratio": 0.0, "kd_loss": "ce" if kind == "student_ce" else "kd",
                  "temperature": defaults.temperature, "alpha": defaults.alpha}
        return _train(_config(trial, values, gpu, "config"), teacher_path, out, {"reference": kind})
    from study.core.device import resolve_device
    from study.data.datasets import load_dataset_for
    from study.data.streaming import data_for
    from study.models.costs import count_params
    from study.models.pruning import prune_model
    from study.teacher.model import load_teacher
    from study.trial.run import measure_student, record_metrics

    if teacher_path is None:
        raise ValueError("the teacher reference needs the study's teacher checkpoint")
    cfg = _config(trial, {}, gpu, "config")
    device = resolve_device(cfg.device)
    model, info = load_teacher(teacher_path, device)
    fmt, extra = info.get("checkpoint_format"), {}
    if fmt == "state_dict":  # the user's teacher of a named family: saved as that family
        model = cast("nn.Module", model.inner)
    elif fmt in ("export", "torchscript"):  # no family to rebuild: model.pt names the program (load_model reads it)
        extra = {"program": {"path": info["checkpoint"], "format": fmt, "sha256": info["sha256"]}}
    ds = load_dataset_for(cfg)
    data = data_for(cfg, ds, device)
    prune_info = prune_model(model, "none", 0.0, data.val_x[:1])
    tcfg = cfg.replace(student_arch=cfg.teacher_arch, width_mult=cfg.teacher_width)
    metrics = measure_student(model, data, tcfg, {"params": count_params(model)}, prune_info, out, meta=extra)
    metrics.update(tcfg.to_dict())
    metrics.update(reference=kind)
    record_metrics(out, metrics)
    return metrics


def run_baseline(name: str, values: dict, trial: dict, teacher_path: str | None, out_dir: str, gpu: bool) -> dict:
    """One baseline: the study's fixed trial settings with `values` over them, trained and measured by
    execute_trial into out_dir; metrics.json carries `baseline: name`."""
    return _train(_config(trial, values, gpu, f"baseline {name}"), teacher_path, Path(out_dir), {"baseline": name})


def missing_baselines(root: Path, baselines: dict[str, dict]) -> dict[str, dict]:
    """The baselines without a metrics.json under root (a resumed study keeps the ones it has)."""
    return {n: v for n, v in baselines.items() if not (root / n / "metrics.json").exists()}


def missing_references(root: Path, has_teacher: bool) -> list[str]:
    """The reference kinds without a metrics.json under root (a resumed study keeps the ones it has)."""
    return [k for k in REFERENCES if not (root / k / "metrics.json").exists() and (k == "student_ce" or has_teacher)]


def run_references(kinds: list[str], trial: dict, teacher_path: str | None, out_root: str, gpu: bool,
                   baselines: dict[str, dict] | None = None, baselines_root: str | None = None) -> dict:
    """run_reference for each kind in turn, then run_baseline for each baseline, in one process; a failing one is
    returned as its error text. Keys: the reference kinds, and "baseline NAME"."""
    out: dict = {}
    jobs: list[tuple[str, Callable[[], dict]]] = [
        (kind, functools.partial(run_reference, kind, trial, teacher_path, str(Path(out_root) / kind), gpu))
        for kind in kinds]
    if baselines:
        if baselines_root is None:
            raise ValueError("run_references: baselines need their baselines_root")
        jobs += [(f"baseline {name}", functools.partial(run_baseline, name, values, trial, teacher_path,
                                                        str(Path(baselines_root) / name), gpu))
                 for name, values in baselines.items()]
    for key, job in jobs:
        try:
            out[key] = job()
        except Exception as exc:  # noqa: BLE001  one failed reference must not lose the others
            out[key] = f"{type(exc).__name__}: {exc}"
    return out
