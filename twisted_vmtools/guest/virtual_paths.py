"""Guest paths that name something other than a plain file: ``/<scheme>:/path?query``.

Shared by the HGFS server's handler registry and the Vix checks of
InitiateFileTransferToGuest/FromGuest, so that both read a virtual path the
same way (``/archive:/srv/dir?format=tgz&prefix=a%2Fb``).  Stdlib only: the
per-account file-operation helper imports it.
"""

from __future__ import annotations

from urllib.parse import parse_qs

ARCHIVE_SCHEME = "archive"


def split_scheme(path: str) -> tuple[str | None, str]:
    """``/archive:/srv/x?f=1`` → (``archive``, ``/srv/x?f=1``); a path without a scheme → (None, path)."""
    first, slash, rest = path[1:].partition("/")
    if path.startswith("/") and first.endswith(":") and len(first) > 1 and slash:
        return first[:-1], "/" + rest
    return None, path


def split_query(path: str) -> tuple[str, dict[str, str]]:
    """``/srv/dir?format=tgz&prefix=a%2Fb`` → (``/srv/dir``, {format: tgz, prefix: a/b})."""
    bare, mark, text = path.partition("?")
    if not mark:
        return path, {}
    return bare, {key: values[-1] for key, values in parse_qs(text, keep_blank_values=True).items()}
