"""Reference points of a study, measured with the trials' own protocol (runs/NAME/references/<kind>/):

  teacher      the teacher itself (accuracy, size, latency)
  student_ce   the unpruned student trained with plain cross-entropy (no KD)
  student_kd   the unpruned student with KD at the default temperature and alpha

Kept apart from study.search so that the Ray worker that computes them imports neither Optuna nor Ray Tune.
"""

from __future__ import annotations

from pathlib import Path

from study.config import TrialConfig, make_config
from study.io import write_json_atomic

REFERENCES = ("teacher", "student_ce", "student_kd")


def run_reference(kind: str, trial: dict, teacher_path: str | None, out_dir: str, gpu: bool) -> dict:
    """One reference point (kind in REFERENCES) for a study whose fixed trial settings are `trial`; writes
    out_dir/metrics.json (and model.pt) and returns the metrics."""
    from study.device import resolve_device
    from study.measure import count_params
    from study.teacher import load_teacher
    from study.train import make_resident
    from study.trial import measure_student, run_trial

    cfg = make_config(trial)
    if not gpu:
        cfg = cfg.replace(device="cpu")
    out = Path(out_dir)
    defaults = TrialConfig()
    if kind == "teacher":
        from study.data import load_dataset
        from study.pruning import prune_model

        device = resolve_device(cfg.device)
        model, info = load_teacher(teacher_path, device)
        ds = load_dataset(cfg.dataset, cfg.data_root, download=cfg.download)
        data = make_resident(ds, cfg.val_size, cfg.val_split_seed, device)
        prune_info = prune_model(model, "none", 0.0, data.val_x[:1])
        tcfg = cfg.replace(student_arch=cfg.teacher_arch, width_mult=cfg.teacher_width)
        metrics = measure_student(model, data, tcfg, {"params": count_params(model)}, prune_info, out)
        metrics.update(tcfg.to_dict())
    else:
        cfg = cfg.replace(prune_method="none", prune_ratio=0.0, kd_loss="ce" if kind == "student_ce" else "kd",
                          temperature=defaults.temperature, alpha=defaults.alpha)
        metrics = run_trial(cfg, out_dir=out, teacher_path=Path(teacher_path) if teacher_path else None)
    metrics["reference"] = kind
    write_json_atomic(out / "metrics.json", metrics)
    return metrics


def missing_references(root: Path, has_teacher: bool) -> list[str]:
    """The reference kinds without a metrics.json under root (a resumed study keeps the ones it has)."""
    return [k for k in REFERENCES if not (root / k / "metrics.json").exists() and (k == "student_ce" or has_teacher)]


def run_references(kinds: list[str], trial: dict, teacher_path: str | None, out_root: str, gpu: bool) -> dict:
    """run_reference for each kind in turn, in one process; a failing one is returned as its error text."""
    out: dict = {}
    for kind in kinds:
        try:
            out[kind] = run_reference(kind, trial, teacher_path, str(Path(out_root) / kind), gpu)
        except Exception as exc:  # noqa: BLE001  one failed reference must not lose the others
            out[kind] = f"{type(exc).__name__}: {exc}"
    return out
