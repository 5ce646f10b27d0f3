"""Virtual paths of the HGFS server: the `IFileHandler` plug-ins and their registry.

A handler serves paths that are not plain files: a directory moved as a tar
stream (``/archive:/srv/dir?format=tgz``, or any existing directory opened as
a file), a started process's ``/proc/<pid>/stdin|stdout|stderr``.  A path names
a handler explicitly with a ``/<scheme>:/`` prefix, or a handler claims it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from zope.interface import Interface

from ..codecs.hgfs import AttrV2
from .hgfs_files import IFileHandle
from .virtual_paths import split_query, split_scheme

__all__ = ["IFileHandler", "FileHandlerRegistry", "Resolved", "split_query"]


class IFileHandler(Interface):
    """Serves the virtual paths it claims (or its scheme names)."""

    def claims(path: str, query: dict[str, str], opening: bool) -> bool:
        """Whether a path without a scheme is this handler's (``opening``: OpenV3, not Getattr)."""

    def stat(path: str, query: dict[str, str]) -> AttrV2:
        """Attributes to report; size is what the VMX will read (see the /proc remark in the reference)."""

    def open(
        path: str, query: dict[str, str], mode: int, flags: int, permissions: int | None
    ) -> IFileHandle | Deferred[IFileHandle]:
        """Open it; raise OSError or `StatusError` to refuse."""


@dataclass(frozen=True)
class Resolved:
    handler: IFileHandler
    path: str
    query: dict[str, str]


class FileHandlerRegistry:
    """Handlers by scheme, asked in registration order for paths without one."""

    def __init__(self) -> None:
        self._handlers: dict[str, IFileHandler] = {}

    def register(self, scheme: str, handler: IFileHandler | None) -> None:
        """Add (or with None, remove) the handler for ``/<scheme>:/…``."""
        if handler is None:
            self._handlers.pop(scheme, None)
        else:
            self._handlers[scheme] = handler

    def resolve(self, path: str, *, opening: bool) -> Resolved | None:
        """The handler for ``path`` (a guest path, possibly with a ``?query``), or None for the file system."""
        scheme, rest = split_scheme(path)
        if scheme is not None and scheme in self._handlers:
            bare, query = split_query(rest)
            return Resolved(self._handlers[scheme], bare, query)
        if os.path.lexists(path):
            bare, query = path, {}  # a real name with a '?' in it is just a name
        else:
            bare, query = split_query(path)
        for handler in self._handlers.values():
            if handler.claims(bare, query, opening):
                return Resolved(handler, bare, query)
        return None
