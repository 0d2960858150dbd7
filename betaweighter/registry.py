"""Registries: each pluggable component is named once, by a decorator where it is defined.

A `Registry` maps config names to components, after timm's ``register_model`` /
``create_model``: the decorator is the only place a name is written, and the config schema,
the factory's lookup, the error messages and the CLI read the registry. A registry that
knows its package imports every module in it on first use, so a new built-in component is
one new file plus one decorator. A third party registers from its own package, and names
that package in ``experiment.imports`` so that YAML configs find it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from betaweighter.errors import ConfigError

__all__ = ["Entry", "Registry"]

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    """One registered component: its name, the object, and what the decorator said of it."""

    name: str
    obj: Any
    meta: Mapping[str, Any] = field(default_factory=dict)


class Registry:
    """Names of one kind of component (`kind`, e.g. "weighting method"), chosen by the
    config key `key`; `package`, when given, is imported module by module on first use."""

    def __init__(self, kind: str, key: str, package: str | None = None,
                 decorator: str = "register") -> None:
        self.kind, self.key, self.package, self.decorator = kind, key, package, decorator
        self._entries: dict[str, Entry] = {}
        self._discovered = package is None

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """A decorator registering its target under `name`, with `meta` (flags the factory
        reads, such as ``meta_gradient=True``)."""
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ValueError(f"a {self.kind} name must be a non-empty string without spaces "
                             f"around it, got {name!r}")

        def decorate(obj: T) -> T:
            old = self._entries.get(name)
            if old is not None and _origin(old.obj) != _origin(obj):
                raise ValueError(f"{self.kind} {name!r} is registered already, by "
                                 f"{_origin(old.obj)}; register {_origin(obj)} under "
                                 "another name")
            self._entries[name] = Entry(name, obj, dict(meta))
            return obj

        return decorate

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)  # type: ignore[arg-type]
        for module in pkgutil.iter_modules(package.__path__, f"{self.package}."):
            importlib.import_module(module.name)

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order."""
        self._discover()
        return tuple(self._entries)

    def get(self, name: str) -> Entry:
        """The entry registered as `name`; a `ConfigError` naming the key and the choices
        otherwise."""
        self._discover()
        if name not in self._entries:
            raise ConfigError(
                f"config key {self.key!r}: unknown {self.kind} {name!r}; choose one of "
                f"{', '.join(self._entries)} (a component of your own: decorate it with "
                f"@{self.decorator}(NAME) and list its module in experiment.imports)")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        self._discover()
        return iter(list(self._entries.values()))


def _origin(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
