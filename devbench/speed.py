"""`python -m devbench.speed`: how fast one KD training epoch runs, three ways, side by side in one process.

  (a) plain   the loop users write: torchvision-style Dataset over uint8 HWC images, per-sample transforms
              (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize), DataLoader(batch 128,
              shuffle, num_workers=0), live fp32 teacher under no_grad, fp32 student, torch.optim.SGD.
  (b) live    our trial loop (study.training.loop.train_phase): data resident on the device, batched augmentation,
              the trial's precision ("auto": bf16 + channels_last where measured faster), live teacher.
  (c) cache   the same loop reading the teacher's logits from the study-wide cache (study.teacher.cache).

Same student initialisation, data, batch size, KD loss and epochs for all three; the loops run interleaved
(a, b, c, a, b, c, ...) after a warm-up, and the median images/s is reported. The cache is built once before
timing; its build time is reported apart: a study pays it once, every trial after that reads it.
Data: synthetic 32x32x3 uint8 images with 10 classes (no CIFAR-10 on this machine; speed does not depend on
pixel values). Teacher: study.models.families resnet34 (CIFAR stem), randomly initialised (speed only).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch
import torch.nn as nn

from study.config import TrialConfig
from study.data.datasets import Dataset, split_train_val
from study.data.streaming import ResidentData, make_resident
from study.models.costs import count_macs, count_params
from study.models.families import build_model
from study.teacher.cache import CachedTeacher, teacher_cache_for
from study.training.loop import live_teacher, resolve_precision, train_phase
from study.training.losses import kd_loss

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
LOOPS = ("plain", "live", "cache")
T, ALPHA, LR, WD = 4.0, 0.5, 0.05, 5e-4  # KD temperature, CE weight, SGD learning rate, weight decay


def hardware_name(device: torch.device) -> str:
    """The GPU's or the CPU's model name: ratios are only comparable on the same hardware."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from study.measure.latency_cache import cpu_name

    return cpu_name()


# ---------------------------------------------------------------------------------------------- data
def synthetic_dataset(n_train: int, n_val: int, seed: int = 0) -> Dataset:
    """Random uint8 32x32x3 images, 10 balanced classes, CIFAR-10's normalisation and augmentation."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_val
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 10
    return Dataset(name="synthetic32", train_x=x, train_y=y, test_x=x[:10], test_y=y[:10], num_classes=10,
                   mean=CIFAR_MEAN, std=CIFAR_STD, hflip=True, crop_pad=4)


class PlainImages(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per sample: uint8 HWC array -> PIL image -> transform."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform: Callable):
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def plain_loader(images_hwc: np.ndarray, labels: np.ndarray, batch_size: int, seed: int):
    from torchvision import transforms

    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    return torch.utils.data.DataLoader(PlainImages(images_hwc, labels, tf), batch_size=batch_size, shuffle=True,
                                       num_workers=0, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory during a block: CUDA max allocated bytes, or on CPU the process's peak resident set size
    (sampled every 5 ms from /proc/self/statm; it includes the models, the data and mapped cache pages)."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * 4096
        except OSError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())


class TimedTeacher:
    """Wraps a TeacherFn and adds up the seconds spent in it (the teacher's share of the step)."""

    def __init__(self, fn: Callable, device: torch.device):
        self.fn, self.device, self.seconds = fn, device, 0.0

    def __call__(self, x, idx, epoch):
        _sync(self.device)
        t0 = time.perf_counter()
        out = self.fn(x, idx, epoch)
        _sync(self.device)
        self.seconds += time.perf_counter() - t0
        return out


# ---------------------------------------------------------------------------------------------- the loops
def plain_epoch(student: nn.Module, teacher: nn.Module, loader, device: torch.device) -> tuple[int, float]:
    """One epoch of (a); returns (images, seconds in the teacher)."""
    opt = torch.optim.SGD(student.parameters(), lr=LR, momentum=0.9, nesterov=True, weight_decay=WD)
    student.train()
    teacher.eval()
    seen, t_teacher = 0, 0.0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            t_logits = teacher(x)
        _sync(device)
        t_teacher += time.perf_counter() - t0
        loss, _, _ = kd_loss(student(x), t_logits, y, T, ALPHA)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
    return seen, t_teacher


def ours_epoch(student: nn.Module, data: ResidentData, teacher_fn: TimedTeacher, epoch: int, batch_size: int,
               precision: str) -> int:
    """One epoch of (b) or (c): train_phase, exactly as a trial runs it (including its per-epoch evaluation)."""
    train_phase(student, data, epochs=1, first_epoch=epoch, seed=0, lr=LR, batch_size=batch_size, weight_decay=WD,
                teacher=teacher_fn, temperature=T, alpha=ALPHA, precision=precision)
    n = data.train_x.shape[0]
    full, rest = divmod(n, batch_size)
    return full * batch_size + (rest if rest >= max(2, batch_size // 4) or full == 0 else 0)  # tiny tail dropped


# ---------------------------------------------------------------------------------------------- the benchmark
def run(students: list[str], *, images: int, val_images: int, repeats: int, batch_size: int, teacher_arch: str,
        teacher_width: float, device: torch.device, precision: str = "auto", warmup: bool = True,
        log: Callable[[str], None] = print) -> dict:
    torch.manual_seed(0)
    ds = synthetic_dataset(images, val_images)
    data = make_resident(ds, val_images, 0, device)
    n_train = data.train_x.shape[0]
    tr_x, tr_y, _, _ = split_train_val(ds, val_images, 0)  # the plain loop gets the same training images
    images_hwc = tr_x.permute(0, 2, 3, 1).contiguous().numpy()
    labels = tr_y.numpy()
    teacher = build_model(teacher_arch, 10, 3, teacher_width).to(device).eval()
    dtype, channels_last = resolve_precision(precision, device)
    info = {"device": str(device), "hardware": hardware_name(device), "threads": torch.get_num_threads(),
            "images": n_train, "val_images": val_images,
            "batch_size": batch_size, "repeats": repeats, "precision_ours": dtype + ("+channels_last" if
                                                                                    channels_last else ""),
            "data": "synthetic 32x32x3 uint8, 10 classes",
            "teacher": {"arch": teacher_arch, "width_mult": teacher_width, "params": count_params(teacher),
                        "macs": count_macs(teacher, (3, 32, 32)), "init": "random (speed only)"},
            "torch": torch.__version__}
    results: dict = {**info, "students": {}}
    with TemporaryDirectory(prefix="kdstudy-speed-") as tmp:
        from study.models.checkpoint import save_model

        tpath = Path(tmp) / "teacher.pt"
        tinfo = {"arch": teacher_arch, "params": info["teacher"]["params"]}
        save_model(tpath, teacher, {"arch": teacher_arch, "num_classes": 10, "in_channels": 3,
                                    "width_mult": teacher_width, "input_shape": [3, 32, 32], "teacher": tinfo})
        cfg = TrialConfig(dataset="synthetic32", val_size=val_images, seed=0)
        t0 = time.perf_counter()
        cache = teacher_cache_for(cfg, tpath, data, repeats, cache_dir=Path(tmp), teacher=teacher,
                                  teacher_info=tinfo, log=lambda m: None)
        results["cache_build_s"] = round(time.perf_counter() - t0, 3)
        results["cache_bytes"] = int(cache.logits.nbytes)
        results["cache_dtype"] = str(cache.logits.dtype)  # fp16, or fp32 where a logit was too large for it
        log(f"teacher {teacher_arch} x{teacher_width:g} ({info['teacher']['params']:,} params, "
            f"{info['teacher']['macs'] / 1e6:,.0f} MMACs/image); cache of {repeats} epoch(s) x {n_train:,} views "
            f"built in {results['cache_build_s']:.1f}s (once per study, not in the images/s below)")
        live_fn = live_teacher(copy.deepcopy(teacher), precision)  # the trial's precision (bf16 where faster)
        benches = [StudentBench(name, data, images_hwc, labels, teacher, live_fn, cache, batch_size, device,
                                precision) for name in students]
        if warmup:  # first calls build oneDNN / cuDNN kernels; time none of them
            for bench in benches:
                bench.warmup()
        # Interleaved at the finest grain (repeat -> student -> loop), so a slow spell on a shared machine hits
        # every configuration alike; ratios are medians of per-repeat ratios (pairs measured seconds apart).
        for r in range(repeats):
            for bench in benches:
                for loop in LOOPS:
                    bench.run(loop, r)
            log(f"  repeat {r + 1}/{repeats} done")
        results["students"] = {bench.name: bench.summary() for bench in benches}
    return results


class StudentBench:
    """The three loops for one student: each keeps its own copy of the same initial student across repeats."""

    def __init__(self, name: str, data: ResidentData, images_hwc: np.ndarray, labels: np.ndarray, teacher: nn.Module,
                 live_fn: Callable, cache, batch_size: int, device: torch.device, precision: str):
        torch.manual_seed(0)
        self.name, self.data, self.batch_size, self.device, self.precision = name, data, batch_size, device, precision
        self.teacher, self.images_hwc, self.labels, self.live_fn = teacher, images_hwc, labels, live_fn
        self.init = build_model(name, 10, 3).to(device)
        self.students = {loop: copy.deepcopy(self.init) for loop in LOOPS}
        self.loader = plain_loader(images_hwc, labels, batch_size, seed=0)
        self.cached = CachedTeacher(cache, lambda: teacher)
        self.fns = {"live": TimedTeacher(live_fn, device), "cache": TimedTeacher(self.cached, device)}
        self.runs: dict[str, list[dict]] = {loop: [] for loop in LOOPS}

    def warmup(self) -> None:
        k = 2 * self.batch_size
        d = self.data
        sub = ResidentData(d.train_x[:k], d.train_y[:k], d.val_x[:32], d.val_y[:32], d.test_x, d.test_y, d.pad,
                           d.hflip, d.num_classes, d.mean, d.std)
        plain_epoch(copy.deepcopy(self.init), self.teacher,
                    plain_loader(self.images_hwc[:k], self.labels[:k], self.batch_size, 1), self.device)
        ours_epoch(copy.deepcopy(self.init), sub, TimedTeacher(self.live_fn, self.device), 0, self.batch_size,
                   self.precision)

    def run(self, loop: str, epoch: int) -> None:
        with PeakMemory(self.device) as mem:
            _sync(self.device)
            t0 = time.perf_counter()
            if loop == "plain":
                n, t_teacher = plain_epoch(self.students[loop], self.teacher, self.loader, self.device)
            else:
                self.fns[loop].seconds = 0.0
                n = ours_epoch(self.students[loop], self.data, self.fns[loop], epoch, self.batch_size, self.precision)
                t_teacher = self.fns[loop].seconds
            _sync(self.device)
            dt = time.perf_counter() - t0
        self.runs[loop].append({"images_per_s": n / dt, "teacher_share": t_teacher / dt,
                                "peak_mem_mib": mem.peak / 2**20})

    def summary(self) -> dict:
        out: dict = {}
        for loop in LOOPS:
            out[loop] = {k: round(statistics.median(r[k] for r in self.runs[loop]), 4) for k in self.runs[loop][0]}
            out[loop]["images_per_s_runs"] = [round(r["images_per_s"], 2) for r in self.runs[loop]]

        def ratio(num: str, den: str) -> float:
            return round(statistics.median(x["images_per_s"] / y["images_per_s"]
                                           for x, y in zip(self.runs[num], self.runs[den], strict=True)), 3)

        out["ratio_live_vs_plain"] = ratio("live", "plain")  # b / a
        out["ratio_ours_vs_plain"] = ratio("cache", "plain")  # c / a: our loop as a study runs it
        out["ratio_cache_vs_live"] = ratio("cache", "live")  # c / b: what the cache alone buys
        out["cache_lookups_live_fallback"] = self.cached.live_batches  # 0: every view came from the cache
        return out


def format_table(res: dict) -> str:
    head = (f"KD epoch speed on {res['device']} ({res.get('hardware', '?')}, {res['threads']} threads), "
            f"{res['images']:,} images/epoch, "
            f"batch {res['batch_size']}, median of {res['repeats']} interleaved repeats (ratios: median of "
            f"per-repeat ratios)\ndata: {res['data']}; teacher {res['teacher']['arch']} "
            f"x{res['teacher']['width_mult']:g} ({res['teacher']['macs'] / 1e6:,.0f} MMACs/image, random init); "
            f"ours trains in {res['precision_ours']}")
    mem = "peak GPU MiB" if res["device"].startswith("cuda") else "peak RSS MiB"
    rows = [("student", "loop", "images/s", "vs plain", "teacher share", mem)]
    for name, s in res["students"].items():
        vs_plain = {"plain": 1.0, "live": s["ratio_live_vs_plain"], "cache": s["ratio_ours_vs_plain"]}
        for loop, label in zip(LOOPS, ("(a) plain", "(b) ours, live teacher", "(c) ours, cached teacher"),
                               strict=True):
            rows.append((name, label, f"{s[loop]['images_per_s']:,.0f}",
                         f"{vs_plain[loop]:.2f}x",
                         f"{100 * s[loop]['teacher_share']:.0f}%", f"{s[loop]['peak_mem_mib']:,.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [head, ""] + ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in
                                    enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.append("")
    for name, s in res["students"].items():
        lines.append(f"{name}: b/a = {s['ratio_live_vs_plain']:.2f}x   c/a = {s['ratio_ours_vs_plain']:.2f}x   "
                     f"c/b (cache vs live teacher) = {s['ratio_cache_vs_live']:.2f}x")
    lines.append(f"cache build (once per study, not included above): {res['cache_build_s']:.1f}s for "
                 f"{res['repeats']} epoch(s), {res['cache_bytes'] / 2**20:.2f} MiB on disk "
                 f"({res.get('cache_dtype', 'float16')})")
    lines.append("teacher share: time in the teacher (or cache lookups for (c)) / loop time")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devbench.speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--students", default="resnet20,resnet8", help="comma-separated student names")
    p.add_argument("--images", type=int, default=1024, help="training images per epoch")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (epochs) per loop")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--teacher", default="resnet34", help="teacher architecture (study.models.families name)")
    p.add_argument("--teacher-width", type=float, default=1.0, help="teacher width multiplier")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="tiny sizes for tests (numbers mean nothing)")
    p.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto"
                          else args.device)
    kw = dict(images=args.images, val_images=256, repeats=args.repeats, batch_size=args.batch_size,
              teacher_arch=args.teacher, teacher_width=args.teacher_width)
    if args.quick:
        kw = dict(images=64, val_images=20, repeats=1, batch_size=32, teacher_arch="resnet8", teacher_width=0.5)
    if min(kw["images"], kw["repeats"], kw["batch_size"]) < 1:
        print("error: --images, --repeats and --batch-size must be positive.", file=sys.stderr)
        return 2
    students = [s.strip() for s in args.students.split(",") if s.strip()]
    res = run(students, device=device, warmup=not args.quick, log=lambda m: print(m, flush=True), **kw)
    res["command"] = "python -m devbench.speed " + " ".join(argv if argv is not None else sys.argv[1:])
    print(format_table(res))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
