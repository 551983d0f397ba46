"""Shared fixtures: a session-wide teacher cache, tiny search spaces on digits, and one Ray runtime."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

TINY_TRIAL = {
    "dataset": "digits", "val_size": 0.15, "seed": 0,
    "teacher_arch": "resnet14", "teacher_width": 1.0, "teacher_epochs": 4, "teacher_lr": 0.1,
    "student_arch": "resnet8", "epochs": 3, "finetune_epochs": 1, "batch_size": 128,
    "lr": 0.1, "finetune_lr": 0.02, "device": "cpu", "threads": 1, "latency_repeats": 10,
    "throughput_batch": 32,
}


@pytest.fixture
def one_thread():
    """One torch thread for the test (small models time and run best so); the count before comes back after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def teacher_cache(tmp_path_factory) -> Path:
    """Teachers trained by tests go to one session folder, never into the user's cache."""
    path = tmp_path_factory.mktemp("kdcache")
    os.environ["KDSTUDY_CACHE"] = str(path)
    return path


def write_space(path: Path, **sections) -> Path:
    """A small search space on digits; keyword arguments replace whole top-level sections."""
    space = {
        "name": "tiny",
        "trial": dict(TINY_TRIAL),
        "params": {
            "temperature": {"type": "float", "low": 1.0, "high": 8.0, "log": True},
            "alpha": {"type": "float", "low": 0.0, "high": 1.0},
            "width_mult": {"type": "categorical", "choices": [0.25, 0.5]},
            "prune_method": {"type": "categorical", "choices": ["none", "l1_structured", "l1_unstructured"]},
            "prune_ratio": {"type": "float", "low": 0.2, "high": 0.6, "when": {"prune_method": {"not": ["none"]}}},
        },
        "objectives": {"val_acc": "maximize", "nonzero_params": "minimize", "latency_ms_bs1": "minimize"},
        "search": {"sampler": "tpe", "seed": 0, "trials": 4, "concurrent": 2, "scheduler": "none", "confirm_seeds": 0},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
        "baselines": [],  # fast by default; baselines=None keeps the two built-ins (test_search's small study)
    }
    for key, value in sections.items():
        if value is None:
            space.pop(key, None)
        else:
            space[key] = value
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


@pytest.fixture
def tiny_space(tmp_path) -> Path:
    return write_space(tmp_path / "tiny.yaml")


@pytest.fixture(scope="session")
def ray_session():
    """One real Ray runtime for all search tests (starting Ray costs seconds)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()
