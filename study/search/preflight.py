"""Checks a study makes before it writes anything: the user's teacher and student families must fit the data.

Run by the driver after the data set loads and before runs/NAME/ is created, so a wrong checkpoint or a model
torch-pruning cannot follow ends in one sentence and exit code 2, with nothing written.
"""

from __future__ import annotations

import torch

from study.config import TrialConfig
from study.core.errors import UserError


def _values(space, name: str, default):
    """The values a parameter can take in the space (a categorical's choices, a range's ends), else [default]."""
    for p in space.params:
        if p.name == name:
            return list(p.choices) if p.type == "categorical" else [p.low, p.high]
    return [default]


def check_study(space, ds) -> dict:
    """Raise UserError when the teacher checkpoint or a student family does not fit `ds`; returns what was
    checked (recorded in study.json)."""
    base: TrialConfig = space.base_config()
    c, h, w = (int(v) for v in ds.train_x.shape[1:])
    shape = (c, h, w)
    checked: dict = {}
    if base.teacher_checkpoint:
        from study.teacher import user as user_teacher

        path = user_teacher.checkpoint_file(base.teacher_checkpoint)
        _, fmt = user_teacher.load_checkpoint(path, base.teacher_arch, base.teacher_width, ds.num_classes, shape,
                                              torch.device("cpu"))
        checked["teacher_checkpoint"] = {"path": str(path), "format": fmt,
                                         "sha256": user_teacher.checkpoint_sha256(path)}
    from study.models.pruning import is_structured
    from study.models.student import build_student
    from study.trial.run import check_prunable

    archs = _values(space, "student_arch", base.student_arch)
    methods = [m for m in _values(space, "prune_method", base.prune_method) if is_structured(m) and m != "none"]
    ratios = [r for r in _values(space, "prune_ratio", base.prune_ratio) if r and r > 0] or [0.5]
    for arch in archs:
        cfg = base.replace(student_arch=arch)
        torch.manual_seed(0)
        model, _ = build_student(cfg, ds.num_classes, shape)
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(1, *shape))
        if out.dim() != 2 or out.shape[1] != ds.num_classes:
            raise UserError(f"student_arch {arch}: the model returns {tuple(out.shape)} for one image, but the data "
                            f"set has {ds.num_classes} classes; build it with num_classes.")
        for method in methods[:1]:  # one structured method traces the graph the others use
            check_prunable(model, method, max(ratios), torch.zeros(1, *shape), base.round_to)
        checked.setdefault("student_archs", []).append(arch)
    return checked
