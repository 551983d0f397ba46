"""Confirmation seeds: after the search, the front models a user would pick and the baselines are trained again
with new seeds, so that "the search beats the recipe" is said on seed means, not on one lucky run (the winner's
curse: the best of many noisy trials is optimistic).

Layout under the run folder:
  confirm/plan.json                      the candidates (label, trial or baseline, why chosen) and the extra seeds
  confirm/<key>/seed_<s>/                one execute_trial per extra seed (config.yaml, metrics.json, model.pt, ...);
                                         reproduce.json, written last, marks a seed finished (reused on a rerun)
  confirm/done.json                      seeds trained, epochs and wall seconds of the confirmation

<key> is `trial-<n>` for a search trial (enqueued baselines included) and `baseline-<name>` for a baseline
trained beside the search. Seed s runs the candidate's own config with `seed = s` and the study's validation split
(`split_seed`), so the split, teacher and protocol are the search's; the search's own run is the first seed.
Which candidates to confirm is the result pipeline's choice (`benchmarks.collect.confirm_candidates`); this module
only trains them, a few at a time on Ray as the trials ran.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from study.config import TrialConfig, load_config
from study.core.io import write_json_atomic
from study.core.run_dir import RunDir
from study.search.plan import StudyPlan


def candidate_key(candidate: dict) -> str:
    """Folder name of a candidate under confirm/."""
    if candidate.get("trial") is not None:
        return f"trial-{int(candidate['trial'])}"
    return f"baseline-{candidate['baseline']}"


def candidate_config(run_dir: Path, candidate: dict) -> TrialConfig:
    """The candidate's config as the search ran it (its trial's or baseline's config.yaml)."""
    number = int(candidate["trial"]) if candidate.get("trial") is not None else None
    return load_config(RunDir(run_dir).model_folder(number, candidate.get("baseline")) / "config.yaml")


def seed_config(cfg: TrialConfig, seed: int) -> TrialConfig:
    """`cfg` with another training seed and the study's validation split kept."""
    return cfg.replace(seed=seed, split_seed=cfg.val_split_seed)


def extra_seeds(base_seed: int, n: int) -> list[int]:
    """The confirmation seeds: the n seeds after the search's own."""
    return [base_seed + i for i in range(1, n + 1)]


def _train_seed(cfg_dict: dict, seed_dir: str, teacher_path: str | None, teacher_sha: str | None) -> dict:
    """One confirmation seed (run in a Ray task): reproduce.run_seed, which reuses a finished one."""
    from study.config import make_config
    from study.reproduce.rerun import run_seed

    cfg = make_config(cfg_dict, source=f"{seed_dir}/config.yaml")
    metrics, reused = run_seed(cfg, Path(seed_dir), Path(teacher_path) if teacher_path else None, teacher_sha,
                               log=lambda msg: None)
    return {**{k: metrics.get(k) for k in ("val_acc", "test_acc", "epochs", "finetune_epochs")}, "reused": reused}


def run_confirmation(run_dir: Path, plan: dict, study: StudyPlan, log=print) -> dict:
    """Train every (candidate, extra seed) of `plan` (confirm/plan.json) that is not finished yet, the study's
    `concurrent` at a time on its Ray resources; writes confirm/done.json and returns it."""
    import ray

    run = RunDir(run_dir)
    jobs = []
    for cand in plan["candidates"]:
        cfg = candidate_config(run.root, cand)
        if study.device != "cuda":
            cfg = cfg.replace(device="cpu")
        for s in plan["seeds"]:
            jobs.append((cand, s, seed_config(cfg, s)))
    if not jobs:
        return {"seeds": 0, "seeds_trained_now": 0, "epochs": 0, "wall_s": 0.0, "errors": []}
    res = study.resources
    task = ray.remote(num_cpus=res.get("cpu", 1.0), num_gpus=res.get("gpu", 0.0), max_retries=0)(_train_seed)
    t0 = time.time()
    log(f"confirming {len(plan['candidates'])} model(s) with {len(plan['seeds'])} more seed(s) each "
        f"(seeds {plan['seeds']}): {len(jobs)} trainings, {study.concurrent} at a time")
    done, trained, epochs, errors = _train_all(jobs, task, run, study, log)
    return _record_done(run, done, trained, epochs, errors, time.time() - t0)


def _train_all(jobs: list, task, run: RunDir, study: StudyPlan, log) -> tuple[int, int, int, list[str]]:
    """Run the (candidate, seed, config) jobs as Ray tasks, the study's `concurrent` at a time; returns (seeds
    done, seeds trained now, epochs of the seeds done, errors)."""
    import ray

    teacher = study.teacher
    pending: dict[Any, tuple[dict, int]] = {}
    queue = list(jobs)
    done, trained, epochs, errors = 0, 0, 0, []
    limit = max(1, study.concurrent)
    while queue or pending:
        while queue and len(pending) < limit:
            cand, s, cfg = queue.pop(0)
            seed_dir = run.confirm_seed(candidate_key(cand), s)
            ref = task.remote(cfg.to_dict(), str(seed_dir), teacher.get("path"), teacher.get("sha256"))
            pending[ref] = (cand, s)
        ready, _ = ray.wait(list(pending), num_returns=1)
        cand, s = pending.pop(ready[0])
        try:
            m = ray.get(ready[0])
        except Exception as exc:  # noqa: BLE001  one failed seed is reported; the others still count
            errors.append(f"{cand['label']} seed {s}: {type(exc).__name__}: {str(exc)[:300]}")
            log(f"  confirm {cand['label']} seed {s} failed: {errors[-1]}")
            continue
        done += 1
        trained += not m["reused"]
        epochs += int(m.get("epochs") or 0) + int(m.get("finetune_epochs") or 0)
        log(f"  confirm {cand['label']} seed {s} ({done}/{len(jobs)}{', kept from before' if m['reused'] else ''}): "
            f"val_acc {m['val_acc']:.2f}%  test_acc {m['test_acc']:.2f}%")
    return done, trained, epochs, errors


def _record_done(run: RunDir, done: int, trained: int, epochs: int, errors: list[str], wall: float) -> dict:
    """Write confirm/done.json (the wall time of an earlier, interrupted part added) and return it."""
    try:  # an earlier, interrupted part's time: added when this run trained more, kept when it trained nothing
        earlier = float(json.loads(run.confirm_done.read_text()).get("wall_s") or 0.0)
    except (OSError, ValueError):
        earlier = None
    if earlier is not None:
        wall = wall + earlier if trained else earlier or wall
    # epochs: every confirmation seed's training, including seeds kept from an interrupted earlier run
    out = {"seeds": done, "seeds_trained_now": trained, "epochs": epochs, "wall_s": round(wall, 1),
           "errors": errors}
    write_json_atomic(run.confirm_done, out)
    return out


def read_seed_metrics(run_dir: Path, candidate: dict, seeds: list[int]) -> list[dict]:
    """metrics.json of each finished confirmation seed of `candidate` (missing or unfinished ones left out)."""
    out = []
    for s in seeds:
        folder = RunDir(run_dir).confirm_seed(candidate_key(candidate), s)
        if not (folder / "reproduce.json").is_file():
            continue
        try:
            out.append({"seed": s, **json.loads((folder / "metrics.json").read_text())})
        except (OSError, ValueError):
            continue
    return out
