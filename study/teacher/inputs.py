"""The input normalisation the teacher was trained with: stated in the space (`normalize:`), or found by scoring
the teacher, never silent.

Every network of a study sees x = (pixels / 255 - mean) / std per channel (study.training.loop). A teacher trained
elsewhere expects the statistics of its own recipe: torchvision's and timm's pretrained models, and most teachers
trained with those libraries' recipes, ImageNet's; a teacher of the user's own pipeline anything. Fed other
statistics it loses accuracy silently (issue #22: 80.8 % with ImageNet's, 24.0 % with the folder's own).

`normalize` (a TrialConfig field, one per study) is:
  auto       (default) with teacher_checkpoint: score the teacher on the validation split under each candidate
             (the data's own statistics, ImageNet's, none) and use the best, said in one line; otherwise the
             data's own statistics (the teacher is trained by kdstudy on them, as before this field existed)
  dataset    the data set's own per-channel mean and std (built-in data sets: their published train statistics)
  imagenet   mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) (3-channel images only)
  none       raw 0-1 values: mean 0, std 1
  explicit   "m1,m2,m3/s1,s2,s3" (also written in YAML as {mean: [...], std: [...]}), one value per channel

`resolve` turns auto into one of the others before anything is written; the resolved name goes into every
trial's config, and the values (with how they were chosen) into study.json, each trial's metrics, the teacher
record and the export (meta.json, model card, predict.py, predict_onnx.py). Students see the same inputs as the
teacher, so the teacher-logit cache stays exact; its key holds the mean and std.
"""

from __future__ import annotations

from typing import Any

import torch

from study.data.datasets import normalized, stats

CANDIDATES = ("dataset", "imagenet", "none")  # auto's candidates, in tie-break order (dataset: the old behaviour)
DISAGREE_POINTS = 3.0  # candidates further apart than this (validation accuracy, points): said loudly
# a teacher below chance (100 / classes %) plus this share of the way from chance to 100 % looks wrong: 32.5 % for
# 10 classes (issue #22's teacher scored 24.0 % under the wrong statistics), 43.75 % for 4, 25.75 % for 100
NEAR_CHANCE_SHARE = 0.25
SCORE_BATCH = 256  # images per teacher forward while scoring


def _val_split(cfg, ds) -> tuple[torch.Tensor, torch.Tensor]:
    from study.data.datasets import count_or_fraction, split_train_val

    _, _, va_x, va_y = split_train_val(ds, count_or_fraction(cfg.val_size), cfg.val_split_seed)
    return va_x, va_y


@torch.inference_mode()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, mean, std, device: torch.device) -> float:
    """Top-1 accuracy (%) of model on uint8 images x normalised with mean / std, in batches (x may be mapped)."""
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    correct = 0
    for i in range(0, len(y), SCORE_BATCH):
        xb = (x[i:i + SCORE_BATCH].to(device).float() / 255.0 - m) / s
        correct += int((model(xb).argmax(1).cpu() == y[i:i + SCORE_BATCH].cpu()).sum())
    return 100.0 * correct / max(1, len(y))


def resolve(cfg, ds, device: torch.device, log=print, teacher=None):
    """(cfg with normalize resolved, ds normalised so, the record of the choice). auto with a teacher checkpoint
    scores the teacher on the validation split under each candidate and takes the best (ties: the order of
    CANDIDATES); `teacher` is that teacher already loaded, if the caller has it."""
    record: dict[str, Any] = {}
    if cfg.normalize != "auto":
        choice, record["chosen_by"] = cfg.normalize, "stated in the space (normalize)"
    elif not cfg.teacher_checkpoint:
        choice = "dataset"
        record["chosen_by"] = "auto without teacher_checkpoint: the data's own statistics (kdstudy trains the teacher)"
    else:
        from study.teacher import user as user_teacher

        if teacher is None:
            path = user_teacher.checkpoint_file(cfg.teacher_checkpoint)
            teacher, _ = user_teacher.load_checkpoint(path, cfg.teacher_arch, cfg.teacher_width, ds.num_classes,
                                                      tuple(ds.train_x.shape[1:]), device)
        x, y = _val_split(cfg, ds)
        names = [c for c in CANDIDATES if c != "imagenet" or ds.train_x.shape[1] == 3]
        scores = {name: accuracy(teacher, x, y, *stats(name, ds), device) for name in names}
        choice = max(names, key=lambda n: (scores[n], -names.index(n)))
        others = ", ".join(f"{n} {scores[n]:.1f} %" for n in names if n != choice)
        log(f"teacher normalisation: {choice} (val {scores[choice]:.1f} %; {others}): picked the best of "
            f"{len(names)}; state `normalize:` in the space to skip this check")
        spread = max(scores.values()) - min(scores.values())
        if spread > DISAGREE_POINTS:
            log("WARNING: THE TEACHER'S ACCURACY DEPENDS ON ITS INPUT NORMALISATION: "
                + ", ".join(f"{n} {scores[n]:.1f} %" for n in names)
                + f" on the {len(y)} validation images ({spread:.1f} points apart). kdstudy uses {choice}, the best; "
                "if the teacher was trained with other statistics, state them in the space as normalize: "
                "{mean: [...], std: [...]}.")
        record.update(chosen_by=f"auto: the teacher's best validation accuracy of {', '.join(names)}",
                      val_acc_by_candidate=scores, val_images=len(y))
    mean, std = stats(choice, ds)
    record = {"normalize": choice, "mean": list(mean), "std": list(std), **record,
              "input_shape": [int(v) for v in ds.train_x.shape[1:]]}  # the teacher's input size is image_size
    return cfg.replace(normalize=choice), normalized(ds, choice), record


def describe(record: dict) -> str:
    """One line: the normalisation and its values."""
    how = f"; {record['chosen_by']}" if record.get("chosen_by") else ""
    return (f"{record.get('normalize')} (mean {[round(v, 4) for v in record.get('mean', [])]}, std "
            f"{[round(v, 4) for v in record.get('std', [])]}{how})")


def teacher_warnings(teacher: dict, *, classes: tuple[str, ...] | list[str] = (), image_size: int = 0,
                     input_shape: tuple | list | None = None, reference_val_acc: float | None = None) -> list[str]:
    """Warnings for a user's teacher that looks wrong: near chance on the validation split, or below the plain
    student reference (trained without a teacher) once that is known. Each names the likely causes."""
    val, k = teacher.get("val_acc"), teacher.get("num_classes")
    if val is None or not k:
        return []
    chance = 100.0 / k
    problems = []
    if val < chance + NEAR_CHANCE_SHARE * (100.0 - chance):
        problems.append(f"the teacher scores {val:.1f} % on the validation split, near chance ({chance:.1f} % for "
                        f"{k} classes)")
    if reference_val_acc is not None and val < reference_val_acc:
        problems.append(f"the teacher scores {val:.1f} % on the validation split, below the plain student trained "
                        f"without it (student_ce reference: {reference_val_acc:.1f} %)")
    if not problems:
        return []
    norm = teacher.get("normalization") or {}
    shape = tuple(input_shape or teacher.get("input_shape") or ())
    names = list(classes)
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    used = describe(norm) if norm else "the data's own statistics"
    causes = (f"likely causes: the input normalisation (used: {used}; "
              "set normalize: to the teacher's), the input size (images are "
              f"{'x'.join(map(str, shape[1:])) if len(shape) == 3 else '?'} pixels"
              f"{f', image_size {image_size}' if image_size else ''}: the size the teacher was trained at?), or the "
              f"class order (the teacher gives {k} scores; the data's classes in label order"
              f"{': ' + shown if shown else ' are numbered 0..' + str(k - 1)}). Distilling from it anyway: a weak "
              "teacher can be a choice.")
    return [f"WARNING: {p}; {causes}" for p in problems]
