"""Optuna samplers by name (a space's `search.sampler`): a registry of factories `seed -> optuna sampler`.

Register another with `study.register_sampler("name", lambda seed: MySampler(seed=seed))`, from a module the
space lists under `trial: imports:` (the driver builds the sampler; workers never do).
"""

from __future__ import annotations

from typing import Any

from study.core.registry import Registry

SAMPLERS: Registry = Registry("sampler")


def _tpe(seed: int) -> Any:
    import optuna

    # multivariate + group: joint model of the parameters; constant_liar: concurrent trials do not collide
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)


def _nsga2(seed: int) -> Any:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed)


def _nsga3(seed: int) -> Any:
    import optuna

    return optuna.samplers.NSGAIIISampler(seed=seed)


def _gp(seed: int) -> Any:
    import optuna

    return optuna.samplers.GPSampler(seed=seed)


def _random(seed: int) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


for _name, _factory in (("tpe", _tpe), ("nsga2", _nsga2), ("nsga3", _nsga3), ("gp", _gp), ("random", _random)):
    SAMPLERS.register(_name, _factory)


def make_sampler(name: str, seed: int) -> Any:
    """The Optuna sampler `name` seeded with `seed`; UserError listing the valid names for an unknown one."""
    return SAMPLERS.resolve(name)(seed)


def register_sampler(name: str, factory: Any = None, *, overwrite: bool = False) -> Any:
    """Register a sampler factory `seed -> optuna.samplers.BaseSampler` (or use as a decorator)."""
    return SAMPLERS.register(name, *(() if factory is None else (factory,)), overwrite=overwrite)
