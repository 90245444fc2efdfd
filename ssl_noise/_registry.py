"""Name -> object registries filled by decorators (``BACKBONES``, ``METHODS``, ``ROBUST``, ...).

A plain dict with two rules a dict does not enforce: registering a name twice is a bug (it would silently replace
a method), and looking up an unknown name is a user error that lists the choices.

>>> WIDGETS = Registry("widget")
>>> @WIDGETS.register("spanner")
... def spanner(): ...
>>> WIDGETS.names()
['spanner']
"""

from __future__ import annotations

from typing import Callable, Dict, Generic, List, TypeVar

from ssl_noise.errors import UserError

T = TypeVar("T")


class Registry(Dict[str, T], Generic[T]):
    """A dict of named components; ``kind`` names them in error messages ("method", "backbone", ...)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that adds the decorated object under ``name``; a duplicate name raises ``KeyError``."""

        def add(obj: T) -> T:
            if name in self:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self[name] = obj
            return obj

        return add

    def get_or_fail(self, name: str) -> T:
        """Return the entry, or raise :class:`UserError` that lists the known names."""
        if name not in self:
            raise UserError(f"unknown {self.kind} {name!r}; choose from: {', '.join(self.names())}")
        return self[name]

    def names(self) -> List[str]:
        return sorted(self)
