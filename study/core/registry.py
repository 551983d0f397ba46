"""Registries of the things a space names: data sets, models, KD losses, prune methods, samplers.

Each registry maps a name to an entry and is extended the same way::

    from study import register_model

    @register_model("my_net")
    def build(num_classes: int, in_channels: int, width_mult: float) -> nn.Module: ...

A registration made only in the driver's memory does not reach Ray's worker processes. Two ways that do:
- an import string as the name itself, ``python:my_pkg.models:build`` (the convention of Hydra's ``_target_``):
  every process that meets the name imports the module and adapts the object as the registry says;
- ``imports: my_pkg.plugins`` in a space's ``trial:`` section (comma-separated modules), imported by every process
  before it resolves a name, so the ``register_...`` calls at their top level run in each worker.

Some registries also resolve other prefixes (``torchvision:resnet18`` for models); those are looked up by the
prefix's resolver, so the built-in names and the user's go through one path.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from study.core.errors import UserError

T = TypeVar("T")
_DECORATE = object()  # register(name) without an entry returns a decorator
Resolver = Callable[[str], Any]  # the text after "prefix:" -> an entry (raises UserError when it cannot)


def import_object(spec: str, what: str) -> Any:
    """`pkg.module:attr` (or `pkg.module.attr`) -> the object; one sentence naming the string when it fails."""
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise UserError(f"{what} {spec!r}: an import string is 'package.module:name'; fix the name.")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"{what} {spec!r}: cannot import module {module_name!r} ({exc}); install it, or run from "
                        "the folder that holds it, or put that folder on PYTHONPATH.") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UserError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}; fix the "
                            "name after the colon.") from None
    return obj


def import_modules(modules: str, source: str = "imports") -> None:
    """Import each of the comma-separated `modules` (a space's `imports:`), so their registrations run here."""
    for module_name in (m.strip() for m in modules.split(",")):
        if not module_name:
            continue
        try:
            importlib.import_module(module_name)
        except ImportError as exc:
            raise UserError(f"{source}: cannot import {module_name!r} ({exc}); install it or put its folder on "
                            f"PYTHONPATH.") from None


class Registry(Mapping[str, T], Generic[T]):
    """Names -> entries, plus prefix resolvers (`python:` always; others per registry)."""

    def __init__(self, kind: str, adapt_python: Callable[[Any, str], T] | None = None) -> None:
        self.kind = kind  # what an entry is, for messages: "model", "dataset", ...
        self._entries: dict[str, T] = {}
        self._resolvers: dict[str, Resolver] = {}
        # how an imported object becomes an entry (None: used as it is)
        self._adapt_python = adapt_python or (lambda obj, spec: obj)
        self._resolved: dict[str, T] = {}

    # --- Mapping: the registered names only (prefixed names are resolved on demand) ---
    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def register(self, name: str, entry: Any = _DECORATE, *, overwrite: bool = False) -> Any:
        """Register `entry` under `name` (None is a valid entry); without `entry`, a decorator. A name taken
        needs overwrite=True."""
        if ":" in name or not name.strip():
            raise UserError(f"{self.kind} name {name!r}: a registered name is non-empty and has no ':' "
                            "(prefixes such as python: are resolved, not registered); pick another name.")

        def add(obj: T) -> T:
            if name in self._entries and not overwrite and self._entries[name] is not obj:
                raise UserError(f"{self.kind} {name!r} is registered already; pass overwrite=True to replace it.")
            self._entries[name] = obj
            return obj

        return add if entry is _DECORATE else add(entry)

    def add_prefix(self, prefix: str, resolver: Resolver) -> None:
        """Resolve names "prefix:rest" with resolver(rest) (as torchvision: and timm: model names are)."""
        self._resolvers[prefix] = resolver

    @property
    def prefixes(self) -> list[str]:
        """The name prefixes this registry resolves: python, then those added with add_prefix."""
        return ["python", *self._resolvers]

    def valid_names(self) -> str:
        """The registered names and the prefixes ("python:...") as one comma-separated text, for error messages."""
        return ", ".join([*self._entries, *(f"{p}:..." for p in self.prefixes)])

    def resolve(self, name: str) -> T:
        """The entry for a registered name or a prefixed one; UserError listing the valid names otherwise."""
        if name in self._entries:
            return self._entries[name]
        if name in self._resolved:
            return self._resolved[name]
        prefix, sep, rest = name.partition(":")
        if sep and prefix == "python":
            entry = self._adapt_python(import_object(rest, f"{self.kind} python:"), name)
        elif sep and prefix in self._resolvers:
            entry = self._resolvers[prefix](rest)
        else:
            close = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UserError(f"Unknown {self.kind} {name!r}.{hint} Valid names: {self.valid_names()}.")
        self._resolved[name] = entry
        return entry

    def check(self, name: str) -> None:
        """Raise the resolve() error for a name that does not resolve (cheap for registered names)."""
        self.resolve(name)


__all__ = ["Registry", "import_modules", "import_object"]
