"""`python -m devbench.e2e`: this checkout against an earlier commit, end to end, run the way a user runs them.

  trial  `python -m study trial` with the default study's trial settings (digits, 15 distillation + 5
         fine-tuning epochs, one thread) and a fixed sampled point (KD T=4 alpha=0.5, width 1.0; unpruned and
         l1_structured 0.5). Each side trains its teachers (and fills its caches) in untimed warm-up runs, then
         the two sides alternate, N pairs, pair i with seed i on both sides. Reported: the trial's own clock
         (metrics.json wall_s: what the CLI prints) and the whole process (imports included), medians, with
         val/test accuracy as mean +- std over the seeds.
  study  `python -m study run` on the default space (search_spaces/demo.yaml) from an EMPTY cache, so teacher
         training, Ray start, all 40 trials, references and the report are timed; sides alternate, each with its own
         demo.yaml. The kd_loss
         parameter is left out of the space for both sides (the baseline commit knows only `kd`). Also reported:
         the CPU time the whole machine used during each study (Ray's workers included; from /proc/stat, Linux
         only) and how many cores that kept busy on average: a study that keeps every core busy can only get
         faster by doing less work, so the CPU-time ratio bounds its speed-up. That CPU time is split by the
         part of the study that spent it (sampled from /proc over the study's process tree): the driver
         (teacher training in a thread, Tune's and Optuna's bookkeeping, the report), the trial actors, the
         reference task and Ray's own processes; with the teacher's training time from its info file.

The baseline is checked out with `git worktree` (needs a git clone with history) and runs with this Python
environment. Default baseline: 5ca609f, the last commit before the fast-trials work (issue 6).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from study.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BASELINE = "5ca609f"
TRIAL_POINTS = {  # name -> the sampled parameters of the timed trial
    "dense": {"kd_loss": "kd", "temperature": 4.0, "alpha": 0.5, "width_mult": 1.0, "prune_method": "none",
              "prune_ratio": 0.0},
    "l1_structured": {"kd_loss": "kd", "temperature": 4.0, "alpha": 0.5, "width_mult": 1.0,
                      "prune_method": "l1_structured", "prune_ratio": 0.5},
}


def checkout(ref: str, dest: Path) -> str:
    """A detached worktree of `ref` at dest; returns the full commit id."""
    try:
        sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"], check=True,
                             capture_output=True, text=True).stdout.strip()
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(dest), sha], check=True,
                       capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise UserError(f"cannot check out baseline {ref!r} from {ROOT} ({detail.strip()}); run this from a git "
                        "clone with history (not a shallow copy), or pass --baseline with a commit it has.") from None
    return sha


def head_commit() -> str:
    """This checkout's commit, flagged when the timed code (study/, search_spaces/) has uncommitted changes."""
    from study.core.io import code_version

    v = code_version(ROOT)
    return (v["git_commit"] or "unknown") + ("+uncommitted changes" if v["git_dirty"] else "")


def machine_cpu_s() -> float | None:
    """CPU time all processes of this machine have used since boot (user, nice, system, irq; not idle, iowait or
    time stolen by the hypervisor), in seconds, from /proc/stat; None where there is none (not Linux)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(fields) - fields[3] - fields[4] - fields[7]) / os.sysconf("SC_CLK_TCK")  # not idle, iowait, steal


ROLES = ("driver", "trial actors", "references", "Ray's own processes")


def role_of(pid: int, root: int, name: str) -> str:
    """Which part of a study a process of its tree is: the driver (root), a Tune trial actor, the reference task,
    or Ray's own processes (GCS, raylet, agents, idle workers). `name` is /proc's comm: at most 15 characters
    (ray::ImplicitFunc becomes ray::ImplicitFu)."""
    if pid == root:
        return "driver"
    if name.startswith("ray::ImplicitFu"):
        return "trial actors"
    if name.startswith("ray::run_refere"):
        return "references"
    return "Ray's own processes"


class TreeCPU:
    """CPU time (user + system) of a process and all its descendants, by role, sampled from /proc every 0.2 s in
    a thread (Linux only; elsewhere `result()` is None). A process is counted up to its last sample, so the last
    0.2 s of a process that exits in between is missed: a slight undercount."""

    def __init__(self, root: int):
        import threading

        self.root, self._cpu, self._role = root, {}, {}
        self._hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._stop = threading.Event()
        self._ok = Path("/proc/self/stat").exists()
        self._thread = threading.Thread(target=self._run, daemon=True)
        if self._ok:
            self._thread.start()

    def _sample(self) -> None:
        procs = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    text = (Path("/proc") / d / "stat").read_text()
                except OSError:
                    continue
                name, rest = text.split("(", 1)[1].rsplit(")", 1)
                f = rest.split()
                procs[int(d)] = (int(f[1]), name, (int(f[11]) + int(f[12])) / self._hz)  # ppid, name, CPU s
        for pid, (_, name, cpu) in procs.items():
            p, hops = pid, 0
            while p in procs and p != self.root and hops < 64:  # in the study's tree?
                p, hops = procs[p][0], hops + 1
            if p == self.root:
                self._cpu[pid] = cpu
                role = role_of(pid, self.root, name)
                if role != "Ray's own processes" or pid not in self._role:  # a worker keeps its trial role
                    self._role[pid] = role

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def result(self) -> dict[str, float] | None:
        if not self._ok:
            return None
        self._stop.set()
        self._thread.join()
        out = dict.fromkeys(ROLES, 0.0)
        for pid, cpu in self._cpu.items():
            out[self._role[pid]] += cpu
        return {k: round(v, 2) for k, v in out.items()}


def run_side(cwd: Path, args: list[str], cache: Path, log: Path, by_role: bool = False
             ) -> tuple[float, float | None, dict | None]:
    """Run `python -m study ARGS` in cwd with its own cache; returns (process wall time, CPU time of the whole
    machine meanwhile, CPU time of the command's process tree by role), in seconds. The machine-wide count
    includes Ray's worker processes, which a child's own rusage misses; it assumes nothing else busy runs on the
    machine (the e2e benchmark's own rule). by_role: sample the process tree (its own CPU, about 1 % of a core,
    then counts in the machine-wide figure too); otherwise the third value is None."""
    env = {**os.environ, "KDSTUDY_CACHE": str(cache)}
    cpu0, t0 = machine_cpu_s(), time.perf_counter()
    with open(log, "a") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "study", *args], cwd=cwd, env=env, stdout=fh,
                                stderr=subprocess.STDOUT)
        tree = TreeCPU(proc.pid) if by_role else None
        code = proc.wait()
    wall, cpu1, roles = time.perf_counter() - t0, machine_cpu_s(), tree.result() if tree else None
    if code != 0:
        raise UserError(f"`python -m study {' '.join(args)}` failed in {cwd} (exit {code}); see {log}.")
    return wall, (round(cpu1 - cpu0, 2) if cpu0 is not None and cpu1 is not None else None), roles


def demo_space(root: Path = ROOT) -> dict:
    """The default space of the checkout at `root`: each side runs its own (a setting one side does not know,
    such as latency_backend before the ONNX Runtime work, would stop the other)."""
    return yaml.safe_load((Path(root) / "search_spaces" / "demo.yaml").read_text())


def time_trials(sides: dict[str, Path], work: Path, pairs: int, log) -> dict:
    """Pair i runs seed i on both sides (same split, teacher recipe and student initialisation), so the
    accuracies over the pairs show the seed-to-seed noise both sides are compared within."""
    spaces = {}
    for s, root in sides.items():
        base_trial = demo_space(root)["trial"]
        for point, params in TRIAL_POINTS.items():
            for i in range(pairs):
                spaces[s, point, i] = work / f"trial-{s}-{point}-seed{i}.yaml"
                spaces[s, point, i].write_text(yaml.safe_dump({"name": f"e2e-{point}",
                                                               "trial": {**base_trial, **params, "seed": i}}))
    # untimed warm-ups: every seed's teacher (and logit cache), and every point's latency and throughput (measured
    # once per architecture, then cached: the same for every seed, so the first seed is enough)
    warm = [(next(iter(TRIAL_POINTS)), i) for i in range(pairs)] + [(p, 0) for p in list(TRIAL_POINTS)[1:]]
    for point, i in warm:
        for s, root in sides.items():
            run_side(root, ["trial", str(spaces[s, point, i]), "--out", str(work / s / "warm")], work / s / "cache",
                     work / f"{s}.log")
        log(f"  warm-up {point} seed {i}: teacher trained, caches filled")
    out: dict = {}
    for point in TRIAL_POINTS:
        rows: dict[str, list[dict]] = {s: [] for s in sides}
        for i in range(pairs):
            order = list(sides) if i % 2 == 0 else list(reversed(sides))
            for s in order:
                dest = work / s / f"{point}-{i}"
                wall, _, _ = run_side(sides[s], ["trial", str(spaces[s, point, i]), "--out", str(dest)],
                                   work / s / "cache", work / f"{s}.log")
                m = json.loads((dest / "metrics.json").read_text())
                rows[s].append({"trial_wall_s": m["wall_s"], "process_wall_s": round(wall, 3),
                                "val_acc": m["val_acc"], "test_acc": m["test_acc"]})
            log(f"  trial {point} seed {i}: " + "  ".join(
                f"{s} {rows[s][-1]['trial_wall_s']:.2f} s (val {rows[s][-1]['val_acc']:.2f})" for s in sides))
        out[point] = {s: summarise(r) for s, r in rows.items()}
        out[point]["speedup_trial_wall"] = round(out[point]["baseline"]["trial_wall_s"]
                                                 / out[point]["head"]["trial_wall_s"], 2)
        out[point]["speedup_process_wall"] = round(out[point]["baseline"]["process_wall_s"]
                                                   / out[point]["head"]["process_wall_s"], 2)
    return out


def summarise(rows: list[dict]) -> dict:
    """Median times; accuracy as mean and standard deviation over the seeds."""
    res: dict = {k: round(statistics.median(r[k] for r in rows), 3) for k in ("trial_wall_s", "process_wall_s")}
    from study.reproduce.rerun import mean_std

    for k in ("val_acc", "test_acc"):
        mean, std = mean_std([r[k] for r in rows])
        res[k], res[k + "_std"] = round(mean, 2), round(std, 2)
    res["runs"] = rows
    return res


def study_result(run_dir: Path) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{run_dir / 'optuna.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    # epochs the trials trained: MO-ASHA's stops depend on the order results arrive in, so two runs of one study
    # do different amounts of work (5 to 8 complete trials seen); CPU time per epoch compares like with like
    epochs = sum(int((t.user_attrs.get("metrics") or {}).get("epochs_done") or 0) for t in done)
    epochs += sum(int(t.user_attrs.get("early_stopped_at_epoch") or 0) for t in study.trials
                  if t.state == optuna.trial.TrialState.PRUNED)
    return {"complete": len(done), "trials": len(study.trials), "epochs_trained": epochs,
            "best_val_acc": max((t.values[0] for t in done), default=None)}


def teacher_train_s(cache: Path) -> float | None:
    """Wall time the study spent training its teacher (the teacher's info file in the study's fresh cache)."""
    infos = sorted(cache.glob("teachers/*.json"))
    try:
        return float(json.loads(infos[0].read_text())["train_s"]) if len(infos) == 1 else None
    except (OSError, ValueError, KeyError):
        return None


def time_studies(sides: dict[str, Path], work: Path, pairs: int, log) -> dict:
    paths = {}
    for s, root in sides.items():
        space = demo_space(root)
        space["params"].pop("kd_loss", None)
        paths[s] = work / f"study-{s}.yaml"
        paths[s].write_text(yaml.safe_dump(space, sort_keys=False))
    rows: dict[str, list[dict]] = {s: [] for s in sides}
    for i in range(pairs):
        order = list(sides) if i % 2 == 0 else list(reversed(sides))
        for s in order:
            cache, runs = work / s / f"study-cache-{i}", work / s / f"study-runs-{i}"
            wall, cpu, roles = run_side(sides[s], ["run", str(paths[s]), "--name", "e2e", "--runs-dir", str(runs)],
                                        cache, work / f"{s}.log", by_role=True)
            rows[s].append({"wall_s": round(wall, 2), "cpu_s": cpu, "cpu_by_role": roles,
                            "teacher_train_s": teacher_train_s(cache), **study_result(runs / "e2e")})
        log(f"  study pair {i + 1}/{pairs}: " + "  ".join(f"{s} {rows[s][-1]['wall_s']:.1f} s" for s in sides))
    out: dict = {s: {"wall_s": statistics.median(r["wall_s"] for r in rows[s]), "runs": rows[s]} for s in sides}
    out["speedup"] = round(out["baseline"]["wall_s"] / out["head"]["wall_s"], 2)
    out["cores"] = os.cpu_count()
    if all(r["cpu_s"] is not None for rs in rows.values() for r in rs):  # the work done, and how busy the cores were
        for s in sides:
            out[s]["cpu_s"] = statistics.median(r["cpu_s"] for r in rows[s])
            out[s]["cores_busy"] = round(statistics.median(r["cpu_s"] / r["wall_s"] for r in rows[s]), 2)
        out["cpu_ratio"] = round(out["baseline"]["cpu_s"] / out["head"]["cpu_s"], 2)
    for s in sides:
        if all(r["cpu_by_role"] and r["epochs_trained"] for r in rows[s]):
            out[s]["actor_cpu_per_epoch_s"] = round(statistics.median(
                r["cpu_by_role"]["trial actors"] / r["epochs_trained"] for r in rows[s]), 4)
            out[s]["epochs_trained"] = [r["epochs_trained"] for r in rows[s]]
        if all(r["cpu_by_role"] for r in rows[s]):
            out[s]["cpu_by_role"] = {k: statistics.median(r["cpu_by_role"][k] for r in rows[s]) for k in ROLES}
        if all(r["teacher_train_s"] is not None for r in rows[s]):
            out[s]["teacher_train_s"] = statistics.median(r["teacher_train_s"] for r in rows[s])
    out["trials"] = space["search"]["trials"]
    return out


def format_table(res: dict) -> str:
    head = res["head"][:10] + (" with uncommitted changes" if res["head"].endswith("changes") else "")
    lines = [f"end to end on {res['cpu']} (torch {res['torch']}); baseline {res['baseline'][:10]}, "
             f"this checkout {head}", "",
             "| run | baseline | this checkout | speed-up | accuracy, baseline -> this checkout |",
             "|---|---|---|---|---|"]

    def acc(side: dict, k: str) -> str:
        return f"{side[k]:.2f} +- {side[k + '_std']:.2f}"

    for point, r in res.get("trial", {}).items():
        b, h = r["baseline"], r["head"]
        lines.append(f"| trial {point}: trial clock | {b['trial_wall_s']:.2f} s | {h['trial_wall_s']:.2f} s | "
                     f"{r['speedup_trial_wall']:.2f}x | val {acc(b, 'val_acc')} -> {acc(h, 'val_acc')}; "
                     f"test {acc(b, 'test_acc')} -> {acc(h, 'test_acc')} (mean +- std over seeds) |")
        lines.append(f"| trial {point}: whole process | {b['process_wall_s']:.2f} s | {h['process_wall_s']:.2f} s | "
                     f"{r['speedup_process_wall']:.2f}x | |")
    if "study" in res:
        s = res["study"]
        b, h = s["baseline"], s["head"]
        def best_of(runs: list[dict]) -> str:  # None: a study without one complete trial
            return " ".join("none complete" if x["best_val_acc"] is None else f"{x['best_val_acc']:.2f}"
                            for x in runs)

        best = best_of(b["runs"]) + " -> " + best_of(h["runs"])
        lines.append(f"| default study ({s.get('trials', '?')} trials, empty cache) | {b['wall_s']:.1f} s | "
                     f"{h['wall_s']:.1f} s | {s['speedup']:.2f}x | best val {best} |")
        if "cpu_ratio" in s:
            lines.append(f"| default study: CPU time, all processes | {b['cpu_s']:.1f} s | {h['cpu_s']:.1f} s | "
                         f"{s['cpu_ratio']:.2f}x | cores busy (CPU time / wall time): {b['cores_busy']:.2f} -> "
                         f"{h['cores_busy']:.2f} of {s['cores']} |")
        if "cpu_by_role" in b and "cpu_by_role" in h:
            for role in ROLES:
                x, y = b["cpu_by_role"][role], h["cpu_by_role"][role]
                ratio = f"{x / y:.2f}x" if y > 0 else "-"
                note = ""
                if role == "driver" and "teacher_train_s" in b and "teacher_train_s" in h:
                    note = (f"of which training the teacher (wall time): {b['teacher_train_s']:.1f} s "
                            f"-> {h['teacher_train_s']:.1f} s")
                lines.append(f"| default study: CPU time, {role} | {x:.1f} s | {y:.1f} s | {ratio} | {note} |")
        if "actor_cpu_per_epoch_s" in b and "actor_cpu_per_epoch_s" in h:
            x, y = b["actor_cpu_per_epoch_s"], h["actor_cpu_per_epoch_s"]
            lines.append(f"| default study: trial actors' CPU per trained epoch | {x * 1000:.0f} ms | "
                         f"{y * 1000:.0f} ms | {x / y:.2f}x | epochs trained per run: {b['epochs_trained']} -> "
                         f"{h['epochs_trained']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devbench.e2e", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default=DEFAULT_BASELINE,
                   help=f"git commit to compare with (default {DEFAULT_BASELINE})")
    p.add_argument("--pairs", type=int, default=3,
                   help="alternating trial pairs per trial setting; pair i uses seed i (default 3)")
    p.add_argument("--study-pairs", type=int, default=1, help="alternating default-study pairs (default 1; 0 skips)")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.pairs < 1 or args.study_pairs < 0:
        print("error: --pairs must be >= 1 and --study-pairs >= 0.", file=sys.stderr)
        return 2
    import torch

    from study.measure.latency_cache import cpu_name

    work = Path(tempfile.mkdtemp(prefix="kdstudy-e2e-"))
    base_dir = work / "baseline-src"
    try:
        sha = checkout(args.baseline, base_dir)
        sides = {"baseline": base_dir, "head": ROOT}
        for s in sides:
            (work / s).mkdir()
        res: dict = {"cpu": cpu_name(), "torch": torch.__version__, "baseline": sha, "head": head_commit(),
                     "pairs": args.pairs, "study_pairs": args.study_pairs}
        print(f"baseline {sha[:10]} vs this checkout; logs in {work}", flush=True)
        res["trial"] = time_trials(sides, work, args.pairs, lambda m: print(m, flush=True))
        if args.study_pairs:
            res["study"] = time_studies(sides, work, args.study_pairs, lambda m: print(m, flush=True))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_dir)], capture_output=True)
        shutil.rmtree(base_dir, ignore_errors=True)
    if args.json:  # first: the measurements survive whatever happens to the table
        from study.core.io import write_json_atomic

        write_json_atomic(args.json, res)
    print(format_table(res))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
