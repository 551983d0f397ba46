"""One trial: distill -> prune -> fine-tune -> measure. A plain function; the search layer calls it.

No Ray or Optuna in here: progress and checkpoints go through the small `TrialHooks` interface.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from study.config import TrialConfig, save_config
from study.core.device import resolve_device
from study.core.io import write_json_atomic, write_text_atomic
from study.data.datasets import load_dataset_for
from study.data.streaming import ResidentData, data_for
from study.measure import latency_cache
from study.models.checkpoint import load_model, save_model
from study.models.costs import count_macs, count_nonzero_params, count_params
from study.models.families import build_model
from study.models.pruning import is_structured, prune_model, reapply_mask, sparsity_mask
from study.models.student import build_student
from study.teacher.cache import CachedTeacher, teacher_cache_for
from study.teacher.model import default_cache_dir, get_teacher, load_teacher
from study.training.loop import TeacherFn, evaluate, live_teacher, resolve_precision, train_phase


class TrialHooks:
    """Callbacks a trial runner (CLI, Ray Tune) may override. The defaults do nothing."""

    # True where the runner has already pruned an untrained copy of this trial's student the way the trial will
    # prune it (architecture_costs, as the search does before every trial): execute_trial then skips its own check
    architecture_checked = False

    def wants_checkpoint(self, epoch: int, total_epochs: int) -> bool:
        """Whether to write a resumable checkpoint after this epoch (schedule epoch, 0-based). Writing one is a
        noticeable share of a small CPU trial (docs/HOW_IT_RUNS.md), so only runners that can resume from it ask
        (the default: never)."""
        return False

    def on_epoch(self, epoch: int, total_epochs: int, val_acc: float, log: dict, checkpoint_dir: Path | None) -> None:
        """After each epoch; checkpoint_dir holds a resumable checkpoint of this epoch when wants_checkpoint
        asked for one, else it is None."""

    def resume_dir(self) -> Path | None:
        """A checkpoint directory written at an earlier on_epoch, to continue from; None starts fresh."""
        return None

    def log(self, msg: str) -> None:
        """A message of the trial (on stdout by default)."""
        print(msg, flush=True)


def latency_device(cfg: TrialConfig) -> torch.device:
    """Where latency and throughput are measured: the CPU (default, a deployment target) or the trial's device."""
    return torch.device("cpu") if cfg.latency_device == "cpu" else resolve_device(cfg.device)


def model_meta(arch: str, num_classes: int, input_shape: tuple[int, int, int], width: float, **extra: Any) -> dict:
    """model.pt's meta: what load_model needs to rebuild the architecture, plus `extra`."""
    return {"arch": arch, "num_classes": num_classes, "in_channels": input_shape[0], "width_mult": width,
            "input_shape": list(input_shape), **extra}


def architecture_costs(cfg: TrialConfig, num_classes: int, input_shape: tuple[int, int, int],
                       latency: bool = True, cache_dir: Path | None = None) -> dict:
    """Params, MACs and latency of the student after pruning, known before any training.

    The per-layer channel counts of uniform structured pruning, and the number of weights zeroed by global
    unstructured pruning, depend only on the architecture and the ratio, so a randomly initialised copy gives
    the same counts as the trained model. Used to skip configurations that break a constraint.
    """
    torch.manual_seed(cfg.seed)
    model = build_student(cfg, num_classes, input_shape)[0].eval()
    with torch.no_grad():  # no exact zeros before pruning (fresh BN / bias terms are 0), as in a trained model
        for p in model.parameters():
            p.copy_(torch.empty_like(p).uniform_(0.5, 1.0) * (torch.randint_like(p, 0, 2) * 2 - 1))
    prune_model(model, cfg.prune_method, cfg.prune_ratio, torch.randn(1, *input_shape), round_to=cfg.round_to)
    out: dict[str, float] = {"params": count_params(model), "nonzero_params": count_nonzero_params(model),
                             "macs": count_macs(model, input_shape)}
    if latency:
        out["latency_ms_bs1"] = _architecture_latency(model, cfg, input_shape, cache_dir or default_cache_dir())
    return out


def _architecture_latency(model: nn.Module, cfg: TrialConfig, input_shape: tuple[int, int, int],
                          cache_dir: Path) -> float:
    """Batch-1 latency on the study's backend of an untrained model (the cache key is its architecture). For
    ONNX Runtime it is exported (and int8-quantized, calibrated on seeded noise: the scales do not change the
    graph that is timed) only when the cache has no measurement of this architecture yet."""
    threads = cfg.threads or None
    if cfg.latency_backend == "torch":
        return latency_cache.latency(model, input_shape, device=latency_device(cfg), threads=threads,
                                     repeats=cfg.latency_repeats, cache_dir=cache_dir)["median_ms"]
    from study.measure import onnx as onnx_backend

    with tempfile.TemporaryDirectory(prefix="kdstudy-onnx-") as tmp:
        def onnx_file() -> Path:
            fp32 = Path(tmp) / "model.onnx"
            onnx_backend.export_onnx(model, input_shape, fp32)
            if cfg.quantize != "int8":
                return fp32
            noise = torch.randn(32, *input_shape, generator=torch.Generator().manual_seed(cfg.seed))
            onnx_backend.quantize_int8(fp32, Path(tmp) / "model_int8.onnx", noise)
            return Path(tmp) / "model_int8.onnx"

        return latency_cache.latency(model, input_shape, device=torch.device("cpu"), threads=threads,
                                     repeats=cfg.latency_repeats, cache_dir=cache_dir,
                                     backend=ort_backend_name(cfg), onnx_file=onnx_file)["median_ms"]


def ort_backend_name(cfg: TrialConfig) -> str:
    """The latency cache's name for the ONNX Runtime model a trial deploys: onnxruntime or onnxruntime-int8."""
    return "onnxruntime-int8" if cfg.quantize == "int8" else "onnxruntime"


def make_teacher_fn(cfg: TrialConfig, data: ResidentData, device: torch.device, epochs: int,
                    teacher_path: Path | None, cache_dir: Path | None, log) -> tuple[TeacherFn | None, dict, str]:
    """(teacher function, teacher info, mode) for a trial; mode is none, cache or live.

    With cfg.teacher_cache the logits come from the study-wide cache (built here if the driver has not built it;
    extended if this trial runs more epochs); otherwise the teacher runs live in the trial's precision.
    """
    if not cfg.uses_teacher:
        return None, {}, "none"
    teacher: nn.Module | None = None
    info: dict = {}
    if teacher_path is None:
        teacher, info = get_teacher(cfg, device, cache_dir, data=data, log=log)
        teacher_path = Path(info["path"])
    if cfg.teacher_cache:
        cache = teacher_cache_for(cfg, teacher_path, data, epochs, cache_dir=cache_dir, teacher=teacher,
                                  teacher_info=info, log=log)
        path = teacher_path
        fn = CachedTeacher(cache, live=lambda: teacher if teacher is not None else load_teacher(path, device)[0])
        return fn, info or cache.manifest.get("teacher", {}), "cache"
    if teacher is None:
        teacher, info = load_teacher(teacher_path, device)
    return live_teacher(teacher, cfg.precision), info, "live"


def execute_trial(cfg: TrialConfig, *, out_dir: Path | None = None, teacher_path: Path | None = None,
                  hooks: TrialHooks | None = None, cache_dir: Path | None = None, stage: bool = False,
                  add_metrics: dict | None = None, config_recorded: bool = False) -> dict:
    """Run one trial and return its metrics (accuracies in percent). Writes config.yaml, metrics.json,
    epochs.csv and model.pt to out_dir when given; stage=True (`kdstudy trial --out`, study.run_trial: a user's
    folder) writes them only once the trial has succeeded, so a failed trial leaves out_dir as it was. Search
    trials are not staged: their folder is the trial's record (config.yaml, error.txt, kept checkpoints) and a
    staging folder would outlive a killed driver. Runs with cfg.threads torch threads (0: as it finds them) and
    gives the caller its thread count back.

    add_metrics: what the caller adds to metrics.json (a search trial's status, a reference's label), after the
    trial's own keys. config_recorded: the caller already wrote this config's config.yaml (record_config: a search
    trial records it before its constraints are checked), so it is not written again."""
    before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    hooks = hooks or TrialHooks()
    extra = dict(add_metrics or {})

    def run(work: Path | None) -> dict:
        return _run_trial(cfg, work, teacher_path, hooks, cache_dir, extra, config_recorded and not stage)

    try:
        if out_dir is None or not stage:
            return run(Path(out_dir) if out_dir is not None else None)
        return staged(Path(out_dir), run)
    finally:
        torch.set_num_threads(before)


def record_config(out_dir: Path, cfg: TrialConfig) -> None:
    """Write a trial folder's config.yaml: the fully resolved config (the one writer of that file)."""
    save_config(cfg, Path(out_dir) / "config.yaml")


def record_metrics(out_dir: Path, metrics: dict) -> None:
    """Write a trial folder's metrics.json (the one writer of that file)."""
    write_json_atomic(Path(out_dir) / "metrics.json", metrics)


def check_prunable(model: nn.Module, method: str, ratio: float, example: torch.Tensor, round_to: int) -> None:
    """Prune a copy of `model` as a trial will: torch-pruning must be able to follow the family's graph, which is
    found out now rather than after the training (raises what torch-pruning raises)."""
    prune_model(copy.deepcopy(model).eval(), method, ratio, example, round_to=round_to)


OUTPUTS = ("config.yaml", "epochs.csv", "model.pt", "model.onnx", "model_int8.onnx", "resumed.json", "metrics.json")


def staged(out_dir: Path, run) -> Any:
    """run(work) writes into a fresh folder beside out_dir; on success its files move into out_dir (created
    then), metrics.json last, and an older run's OUTPUTS this run did not write are removed, so the folder never
    mixes two runs. On failure nothing in out_dir changes and the staging folder is removed."""
    import os

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-staging-", dir=out_dir.parent))
    try:
        result = run(work)
        out_dir.mkdir(exist_ok=True)
        for name in OUTPUTS:
            if not (work / name).exists():
                (out_dir / name).unlink(missing_ok=True)
        for path in sorted(work.iterdir(), key=lambda p: p.name == "metrics.json"):
            os.replace(path, out_dir / path.name)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _prepare(cfg: TrialConfig, out_dir: Path | None, hooks: TrialHooks, config_recorded: bool):
    """(cfg with normalize resolved, the data set, the device); the trial's folder cleared of an older run's
    results and its config.yaml written. Missing data fails before anything is written."""
    device = resolve_device(cfg.device)
    ds = load_dataset_for(cfg)
    if cfg.normalize == "auto":  # a study's trials get it resolved; a trial run alone finds it here, and says so
        from study.teacher.inputs import resolve

        cfg, ds, _ = resolve(cfg, ds, device, hooks.log)
    if out_dir is not None:  # the trial's folder, or a staging folder (execute_trial(stage=True) moves it in)
        out_dir.mkdir(parents=True, exist_ok=True)
        # never mix this run's files with an older run's (a staging folder is fresh: nothing to remove)
        for stale in ("metrics.json", "model.pt", "epochs.csv", "model.onnx", "model_int8.onnx"):
            (out_dir / stale).unlink(missing_ok=True)
        if not config_recorded:
            record_config(out_dir, cfg)
    return cfg, ds, device


class _Progress:
    """Where a trial's training stands: the student, the logged epochs, pruning's record, and the phase and epochs
    done to continue from (a fresh trial: distill, 0; a resumed one: its checkpoint's)."""

    def __init__(self, student: nn.Module) -> None:
        self.student = student
        self.rows: list[dict] = []
        self.prune_info: dict | None = None
        self.phase, self.done = "distill", 0
        self.resume_opt: dict | None = None

    def resume_from(self, resume: Path, device: torch.device, out_dir: Path | None, hooks: TrialHooks) -> None:
        """Continue an interrupted trial from its last epoch checkpoint (and record that it did, and from where)."""
        state = json.loads((resume / "state.json").read_text())
        student, _ = load_model(resume / "model.pt")
        self.student = student.to(device)
        self.resume_opt = torch.load(resume / "opt.pt", weights_only=True, map_location=device)
        self.phase, self.done, self.prune_info, self.rows = state["phase"], state["done"], state["prune_info"], \
            state["rows"]
        hooks.log(f"resuming trial from {self.phase} epoch {self.done}")
        if out_dir is not None:
            write_json_atomic(out_dir / "resumed.json", {"phase": self.phase, "done": self.done,
                                                         "epochs_logged": len(self.rows),
                                                         "at": time.strftime("%Y-%m-%d %H:%M:%S")})

    def on_epoch(self, phase_name: str, phase_offset: int, cfg: TrialConfig, data: ResidentData,
                 hooks: TrialHooks):
        """The training loop's per-epoch callback for one phase: log the row, hand the hooks a resumable
        checkpoint of this epoch when they ask for one."""
        total_epochs = cfg.epochs + cfg.finetune_epochs

        def on_epoch(epoch: int, val_acc: float, row: dict, opt_state: dict) -> None:
            row = {**row, "phase": phase_name}
            self.rows.append(row)
            if not hooks.wants_checkpoint(epoch, total_epochs):
                hooks.on_epoch(epoch, total_epochs, val_acc, row, None)
                return
            ckpt = Path(tempfile.mkdtemp(prefix="kdstudy-ckpt-"))
            save_model(ckpt / "model.pt", self.student, model_meta(cfg.student_arch, data.num_classes,
                                                                   data.input_shape, cfg.width_mult))
            torch.save(opt_state, ckpt / "opt.pt")
            write_json_atomic(ckpt / "state.json", {"phase": phase_name, "done": epoch - phase_offset + 1,
                                                    "prune_info": self.prune_info, "rows": self.rows})
            try:
                hooks.on_epoch(epoch, total_epochs, val_acc, row, ckpt)  # hooks copy what they keep
            finally:
                shutil.rmtree(ckpt, ignore_errors=True)
        return on_epoch


def _train(p: _Progress, cfg: TrialConfig, data: ResidentData, teacher_fn: TeacherFn | None,
           hooks: TrialHooks) -> None:
    """Distill (unless resumed past it), prune, then fine-tune (re-applying an unstructured mask after every
    step); the student is left pruned and trained in p.student."""
    common: dict[str, Any] = dict(
        seed=cfg.seed, batch_size=cfg.batch_size, weight_decay=cfg.weight_decay, teacher=teacher_fn,
        temperature=cfg.temperature, alpha=cfg.alpha if cfg.kd_loss != "ce" else 1.0, kd_kind=cfg.kd_loss,
        dkd_beta=cfg.dkd_beta, label_smoothing=cfg.label_smoothing, precision=cfg.precision)
    student = p.student
    if p.phase == "distill":
        train_phase(student, data, epochs=cfg.epochs, first_epoch=0, lr=cfg.lr,
                    on_epoch=p.on_epoch("distill", 0, cfg, data, hooks), skip_epochs=p.done,
                    resume_opt=p.resume_opt, **common)
        student.eval()
        p.prune_info = prune_model(student, cfg.prune_method, cfg.prune_ratio, data.val_x[:1], round_to=cfg.round_to)
        p.prune_info["val_acc_after_prune"] = evaluate(student, data.val_x, data.val_y)
        p.done, p.resume_opt = 0, None
    masks = None if is_structured(cfg.prune_method) else sparsity_mask(student)
    if cfg.finetune_epochs:
        train_phase(student, data, epochs=cfg.finetune_epochs, first_epoch=cfg.epochs, lr=cfg.finetune_lr,
                    after_step=(lambda: reapply_mask(student, masks)) if masks else None,
                    on_epoch=p.on_epoch("finetune", cfg.epochs, cfg, data, hooks), skip_epochs=p.done,
                    resume_opt=p.resume_opt, **common)


def _run_trial(cfg: TrialConfig, out_dir: Path | None, teacher_path: Path | None, hooks: TrialHooks,
               cache_dir: Path | None, add_metrics: dict, config_recorded: bool) -> dict:
    """The trial itself (execute_trial's docstring), into out_dir as it is (a staging folder when staged)."""
    t_start = time.time()
    cfg, ds, device = _prepare(cfg, out_dir, hooks, config_recorded)
    data = data_for(cfg, ds, device, hooks.log)
    train_dtype, channels_last = resolve_precision(cfg.precision, device)
    total_epochs = cfg.epochs + cfg.finetune_epochs
    resume = hooks.resume_dir()
    teacher_fn, teacher_info, teacher_mode = make_teacher_fn(cfg, data, device, total_epochs, teacher_path,
                                                             cache_dir, hooks.log)
    torch.manual_seed(cfg.seed)
    student, student_init = build_student(cfg, data.num_classes, data.input_shape)
    progress = _Progress(student.to(device))
    if is_structured(cfg.prune_method) and cfg.prune_ratio > 0 and resume is None and not hooks.architecture_checked:
        check_prunable(progress.student, cfg.prune_method, cfg.prune_ratio, data.val_x[:1], cfg.round_to)
    if resume is not None:
        progress.resume_from(resume, device, out_dir, hooks)
    t_train = time.time()
    _train(progress, cfg, data, teacher_fn, hooks)
    train_s = time.time() - t_train
    assert progress.prune_info is not None
    student = progress.student.eval()
    metrics = measure_student(student, data, cfg, teacher_info, progress.prune_info, out_dir, cache_dir)
    metrics.update(student_init, data_streamed=bool(getattr(data, "streaming", False)))
    metrics.update(train_s=round(train_s, 3), epochs_done=total_epochs, wall_s=round(time.time() - t_start, 3),
                   precision_used=train_dtype + ("+channels_last" if channels_last else ""),  # what "auto" chose
                   teacher_mode=teacher_mode)
    if isinstance(teacher_fn, CachedTeacher):
        metrics.update(teacher_cache_batches=teacher_fn.cached_batches, teacher_live_batches=teacher_fn.live_batches)
    metrics.update({f"teacher_{k}": teacher_info[k] for k in ("val_acc", "test_acc", "path") if k in teacher_info})
    metrics.update(cfg.to_dict())
    metrics.update(input_mean=[float(v) for v in data.mean.view(-1)], input_std=[float(v) for v in data.std.view(-1)])
    metrics.update(add_metrics)
    if out_dir is not None:
        record_metrics(out_dir, metrics)
        write_epochs_csv(out_dir / "epochs.csv", progress.rows)
    return metrics


def measure_student(student: nn.Module, data: ResidentData, cfg: TrialConfig, teacher_info: dict,
                    prune_info: dict, out_dir: Path | None, cache_dir: Path | None = None,
                    meta: dict | None = None) -> dict:
    """Accuracy (val: the search objective; test: reported only), size, MACs, latency and throughput.
    `meta`: more for model.pt's meta (the teacher reference's `program`, see checkpoint.load_model).

    With latency_backend onnxruntime the model is also exported to ONNX (model.onnx, and model_int8.onnx when
    quantize is int8) and latency_ms_bs1 / throughput_ips are ONNX Runtime's; the eager PyTorch numbers stay in
    latency_ms_bs1_torch / throughput_ips_torch. A quantized trial's val_acc / test_acc are the int8 model's in
    ONNX Runtime, with the fp32 model's in val_acc_fp32 / test_acc_fp32."""
    with tempfile.TemporaryDirectory(prefix="kdstudy-measure-") as tmp:
        return _measure_student(student, data, cfg, teacher_info, prune_info,
                                Path(out_dir) if out_dir is not None else Path(tmp), cache_dir or default_cache_dir(),
                                meta or {})


def _measure_student(student: nn.Module, data: ResidentData, cfg: TrialConfig, teacher_info: dict,
                     prune_info: dict, folder: Path, cache: Path, extra_meta: dict) -> dict:
    shape = data.input_shape
    params, nonzero = count_params(student), count_nonzero_params(student)
    meta = model_meta(cfg.student_arch, data.num_classes, shape, cfg.width_mult, prune=prune_info, **extra_meta)
    save_model(folder / "model.pt", student, meta)
    checkpoint_bytes = (folder / "model.pt").stat().st_size
    timed = copy.deepcopy(student)  # moved to the latency device; the student stays where it is
    lat_dev, threads = latency_device(cfg), cfg.threads or None
    lat = latency_cache.latency(timed, shape, device=lat_dev, threads=threads, repeats=cfg.latency_repeats,
                                cache_dir=cache)
    thr = latency_cache.throughput(timed, shape, device=lat_dev, threads=threads, batch_size=cfg.throughput_batch,
                                   cache_dir=cache)
    val_acc = evaluate(student, data.val_x, data.val_y, cfg.eval_batch_size)
    test_acc = evaluate(student, data.test_x, data.test_y, cfg.eval_batch_size)
    teacher_params = teacher_info.get("params") or _teacher_params(cfg, data.num_classes, shape)
    out = {
        "val_acc": val_acc, "test_acc": test_acc, "val_acc_fp32": val_acc, "test_acc_fp32": test_acc,
        "params": params, "nonzero_params": nonzero, "macs": count_macs(student, shape),
        "latency_ms_bs1": lat["median_ms"], "latency_iqr_ms_bs1": lat["iqr_ms"], "latency_threads": lat["threads"],
        "latency_device_used": lat["device"],  # not "latency_device": that is the config setting (cpu | trial)
        # share of timed repeats not disturbed by other processes; interfered: most were (see latency_cache)
        "latency_clean_fraction": lat.get("clean_fraction"), "latency_interfered": lat.get("interfered"),
        "latency_backend_used": "torch", "latency_ms_bs1_torch": lat["median_ms"],
        "throughput_ips": thr["images_per_s"], "throughput_ips_torch": thr["images_per_s"],
        "throughput_batch": thr["batch_size"],
        "size_bytes": checkpoint_bytes, "size_bytes_checkpoint": checkpoint_bytes, "teacher_params": teacher_params,
    }
    if cfg.latency_backend == "onnxruntime":
        out.update(_measure_onnxruntime(student, timed, data, cfg, folder, cache))
    out.update({
        "compression": round(teacher_params / max(1, nonzero), 3) if teacher_params else None,
        "params_dense": prune_info["params_before"], "macs_dense": prune_info["macs_before"],
        "params_reduction": round(1 - prune_info["params_after"] / max(1, prune_info["params_before"]), 4),
        "nonzero_reduction": round(1 - prune_info["nonzero_params_after"] / max(1, prune_info["params_before"]), 4),
        "macs_reduction": round(1 - prune_info["macs_after"] / max(1, prune_info["macs_before"]), 4),
        "val_acc_after_prune": prune_info.get("val_acc_after_prune"),
        "num_classes": data.num_classes, "input_shape": list(shape), "device_used": str(data.val_x.device),
        "torch_version": torch.__version__,
    })
    return out


def _teacher_params(cfg: TrialConfig, num_classes: int, shape: tuple[int, int, int]) -> int | None:
    """The teacher's size for a trial that loaded no teacher (kd_loss ce): the user teacher's record, or a
    fresh copy of the family that would be trained."""
    if cfg.teacher_checkpoint:
        from study.teacher.model import teacher_path
        from study.teacher.user import read_record

        rec = read_record(teacher_path(cfg))
        return rec["teacher"]["params"] if rec else None
    return count_params(build_model(cfg.teacher_arch, num_classes, shape[0], cfg.teacher_width))


def _measure_onnxruntime(student: nn.Module, timed: nn.Module, data: ResidentData, cfg: TrialConfig, folder: Path,
                         cache: Path) -> dict:
    """Export to folder/model.onnx, check it against PyTorch, quantize when asked, time the deployed file."""
    from study.measure import onnx as onnx_backend

    shape, threads = data.input_shape, cfg.threads or None
    fp32 = folder / "model.onnx"
    exporter, check, _ = onnx_backend.export_checked(student, shape, fp32, data.val_x[:256], threads)
    out: dict = {"onnx_exporter": exporter, "onnx_max_abs_diff": check["max_abs_diff"],
                 "onnxruntime_version": onnx_backend.ort_version()}
    deployed = fp32
    if cfg.quantize == "int8":
        deployed = folder / "model_int8.onnx"
        calib = onnx_backend.calibration_sample(data.train_x, data.pad, data.mean, data.std, cfg.calibration_images,
                                                cfg.seed)
        onnx_backend.quantize_int8(fp32, deployed, calib)
        sess = onnx_backend.session(deployed, threads)
        out.update(val_acc=onnx_backend.accuracy(sess, data.val_x, data.val_y, cfg.eval_batch_size),
                   test_acc=onnx_backend.accuracy(sess, data.test_x, data.test_y, cfg.eval_batch_size),
                   calibration_images_used=int(min(cfg.calibration_images, data.train_x.shape[0])))
    backend = ort_backend_name(cfg)
    kw: dict[str, Any] = dict(device=torch.device("cpu"), threads=threads, cache_dir=cache, backend=backend,
              onnx_file=lambda: deployed)
    lat = latency_cache.latency(timed, shape, repeats=cfg.latency_repeats, **kw)
    thr = latency_cache.throughput(timed, shape, batch_size=cfg.throughput_batch, **kw)
    out.update({
        "latency_ms_bs1": lat["median_ms"], "latency_iqr_ms_bs1": lat["iqr_ms"], "latency_threads": lat["threads"],
        "latency_device_used": "cpu", "latency_clean_fraction": lat.get("clean_fraction"),
        "latency_interfered": lat.get("interfered"), "latency_backend_used": backend,
        "latency_ms_bs1_onnxruntime": lat["median_ms"], "throughput_ips": thr["images_per_s"],
        "throughput_ips_onnxruntime": thr["images_per_s"], "size_bytes": deployed.stat().st_size,
    })
    return out


def write_epochs_csv(path: Path, rows: list[dict]) -> None:
    """Write the epochs' rows (distillation, then fine-tuning) as epochs.csv."""
    if not rows:
        return
    keys = list(rows[0])
    lines = [",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in rows]
    write_text_atomic(path, "\n".join(lines) + "\n")
