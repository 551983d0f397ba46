"""kdstudy: knowledge-distillation + pruning search studies (Ray Tune + Optuna) with Pareto reports.

The Python API, imported on first use (``import study`` stays light)::

    from study import TrialConfig, load_space, run_trial, run_study
"""

from __future__ import annotations

__version__ = "0.1.0"

_API = {
    "TrialConfig": ("study.config", "TrialConfig"),
    "make_config": ("study.config", "make_config"),
    "load_space": ("study.search.space", "load_space"),
    "run_trial": ("study.app", "run_trial"),
    "TrialResult": ("study.search.results", "TrialResult"),
    "StudyResult": ("study.search.results", "StudyResult"),
    "SearchSpace": ("study.search.space", "SearchSpace"),
    "register_model": ("study.models.families", "register_model"),
    "register_dataset": ("study.data.datasets", "register_dataset"),
    "register_kd_loss": ("study.training.losses", "register_kd_loss"),
    "register_prune_method": ("study.models.pruning", "register_prune_method"),
    "register_sampler": ("study.search.samplers", "register_sampler"),
    "PruneMethod": ("study.models.pruning", "PruneMethod"),
    "run_study": ("study.app", "run_study"),  # the search, then results and report
    "UserError": ("study.core.errors", "UserError"),
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        module, attr = _API[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'study' has no attribute {name!r}")
