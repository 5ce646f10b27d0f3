"""Who may use the simulator's socket: peer credentials, per-peer connection limits, the control secret.

A real VMX is reachable only from inside its VM and through vSphere's
authenticated API.  The simulator's socket stands in for both, so it checks
who is at the other end: on a Unix socket the kernel says (SO_PEERCRED); over
TCP only a shared secret can.  See docs/security.md.
"""

from __future__ import annotations

import grp
import hashlib
import hmac
import os
import pwd
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..exit_codes import UsageError

SECRET_ENV = "VMTOOLS_SIM_SECRET_FILE"
CHALLENGE_MAGIC = b"AUTH"  # what the VMX sends a TCP control client before anything else
NONCE_SIZE = 32
ACCEPTED = b"OK"  # the VMX's word that the proof was right; AMP follows
PROOF_SIZE = hashlib.sha256().digest_size
PER_PEER = 64  # open connections from one uid (Unix) or one address (TCP)
PREAMBLE_TIMEOUT = 10.0  # seconds a new connection has to name its channel (and prove the secret)

_UCRED = struct.Struct("3i")  # pid, uid, gid


class SecretError(UsageError):
    """The control secret is missing, unreadable or empty (or, from a client's side, refused)."""


@dataclass(frozen=True)
class Peer:
    """The other end of a connection: a local process (``uid``) or a network address (``host``)."""

    uid: int | None = None
    gid: int | None = None
    pid: int | None = None
    host: str | None = None

    @property
    def key(self) -> str:
        """What connections are counted by: the user, or the address."""
        if self.uid is not None:
            return f"uid {self.uid}"
        return f"host {self.host}" if self.host is not None else "unknown peer"

    def __str__(self) -> str:
        return f"{self.key} (pid {self.pid})" if self.pid is not None else self.key


def peer_of(transport: object) -> Peer:
    """Who is at the other end: SO_PEERCRED on a Unix socket, the address over TCP."""
    handle = getattr(transport, "socket", None)
    if isinstance(handle, socket.socket) and handle.family == socket.AF_UNIX:
        pid, uid, gid = _UCRED.unpack(handle.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        return Peer(uid=uid, gid=gid, pid=pid)
    address = transport.getPeer() if hasattr(transport, "getPeer") else None  # type: ignore[attr-defined]
    host = getattr(address, "host", None)
    return Peer(host=str(host)) if host is not None else Peer()


def user_in_group(uid: int, gid: int, primary_gid: int | None = None) -> bool:
    """Whether user ``uid`` belongs to group ``gid`` (primary or supplementary)."""
    if primary_gid == gid:
        return True
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    return gid in os.getgrouplist(user.pw_name, user.pw_gid)


def group_id(name: str) -> int:
    """A group's id by name (or number); ValueError if there is no such group."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        raise ValueError(f"no group named {name!r}") from None


@dataclass(frozen=True)
class ControlAccess:
    """Who may use the control channel.

    Locally: the simulator's own user, root, and members of ``group`` if one
    was given.  Over TCP: whoever proves ``secret`` (none: no control over TCP).
    """

    owner: int
    group: int | None = None
    secret: bytes | None = None

    def allows_local(self, peer: Peer) -> bool:
        if peer.uid is None:
            return False
        if peer.uid in (self.owner, 0):
            return True
        return self.group is not None and user_in_group(peer.uid, self.group, peer.gid)


def default_access(group: int | None = None, secret: bytes | None = None) -> ControlAccess:
    return ControlAccess(owner=os.geteuid(), group=group, secret=secret)


def proof(secret: bytes, nonce: bytes) -> bytes:
    """The answer to a challenge: it shows the secret without sending it."""
    return hmac.new(secret, b"vmtools-sim control " + nonce, hashlib.sha256).digest()


def load_secret(path: str | None = None, environ: dict[str, str] | None = None) -> bytes | None:
    """The control secret from ``path``, else from the file `SECRET_ENV` names; None if neither is set.

    Only the first line counts, without its line ending; an empty secret is an error.
    """
    path = path or (os.environ if environ is None else environ).get(SECRET_ENV)
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            secret = handle.readline(4096).rstrip(b"\r\n")
    except OSError as error:
        raise SecretError(f"cannot read the control secret from {path}: {error.strerror}") from None
    if not secret:
        raise SecretError(f"the control secret file {path} is empty")
    return secret


class ConnectionLimits:
    """Open connections per peer key, at most ``per_peer`` each."""

    def __init__(self, per_peer: int = PER_PEER) -> None:
        self.per_peer = per_peer
        self._open: dict[str, int] = {}

    def admit(self, key: str) -> bool:
        count = self._open.get(key, 0)
        if count >= self.per_peer:
            return False
        self._open[key] = count + 1
        return True

    def release(self, key: str) -> None:
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)

    def open(self, key: str) -> int:
        return self._open.get(key, 0)


PeerLookup = Callable[[object], Peer]
