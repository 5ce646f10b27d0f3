"""`IAuthenticator`: how a guest operation's login is checked, and whom it then acts as.

The default, `PAMAuthenticator`, checks the name and password through PAM's
``vmtoolsd`` service (as vmtoolsd does when VGAuth is off) in a thread, and
acts as that account.  `NoAuthenticator` (``twistd vmtools --auth none``)
accepts any login and acts as the service's own user: an explicit opt-in.
Failed logins are rate limited per user name (`LoginThrottle`): while a name
is held back its logins fail at once, without asking PAM.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import Interface, implementer

from .accounts import GuestUser

if TYPE_CHECKING:
    # The Vix codec is loaded with the first guest operation, not when the service is built.
    from ..codecs.vix import Credentials
    from .vix_errors import VixOperationError

PAM_SERVICE = "vmtoolsd"  # /etc/pam.d/vmtoolsd, installed by open-vm-tools


class IAuthenticator(Interface):
    def authenticate(credentials: Credentials) -> Deferred[GuestUser]:
        """The account the login may act as; fails with `VixOperationError` (INVALID_LOGIN_CREDENTIALS)."""


def invalid_login(user: str) -> VixOperationError:
    from ..codecs.vix import VixCode
    from .vix_errors import VixOperationError

    return VixOperationError(VixCode.INVALID_LOGIN_CREDENTIALS, f"invalid login for {user!r}")


@implementer(IAuthenticator)
class NoAuthenticator:
    """Accepts every login and acts as the service's own user (``--auth none``)."""

    def __init__(self, user: GuestUser | None = None) -> None:
        self.user = user or GuestUser.current()

    def authenticate(self, credentials: Credentials) -> Deferred[GuestUser]:
        return succeed(self.user)


@dataclass
class LoginThrottle:
    """Per-name back-off after failed logins: 1 s after the ``free``-th failure, doubling to ``ceiling``.

    A success clears the name.  At most ``max_names`` names are tracked (the
    oldest is forgotten first), so a flood of made-up names cannot grow it.
    """

    now: Callable[[], float]
    free: int = 3
    ceiling: float = 60.0
    max_names: int = 1024
    _failures: dict[str, tuple[int, float]] = field(default_factory=dict)

    def held_back(self, name: str) -> bool:
        count, until = self._failures.get(name, (0, 0.0))
        return count >= self.free and self.now() < until

    def failed(self, name: str) -> None:
        count = self._failures.pop(name, (0, 0.0))[0] + 1
        delay = 0.0 if count < self.free else min(self.ceiling, 2.0 ** (count - self.free))
        self._failures[name] = (count, self.now() + delay)
        while len(self._failures) > self.max_names:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, name: str) -> None:
        self._failures.pop(name, None)


@dataclass
class RecentLogins:
    """Logins that succeeded lately, so that each packet of a transfer is not a PAM conversation.

    vmtoolsd checks the password of every HGFS packet; a PAM check costs a
    password hash (milliseconds), and a 1 GiB transfer is ~17,000 packets.
    An entry is the name and a keyed hash of the password (never the password
    itself), valid ``keep`` seconds after its last use and ``max_age`` after
    the check that made it; another password for the name is a miss.
    """

    now: Callable[[], float]
    keep: float = 30.0
    max_age: float = 300.0
    max_entries: int = 256
    _key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    _entries: dict[tuple[str, bytes], tuple[GuestUser, float, float]] = field(default_factory=dict)

    def _id(self, credentials: Credentials) -> tuple[str, bytes]:
        digest = hashlib.blake2b(credentials.password.encode("utf-8"), key=self._key, digest_size=32).digest()
        return credentials.user, digest

    def get(self, credentials: Credentials) -> GuestUser | None:
        key = self._id(credentials)
        entry = self._entries.get(key)
        if entry is None:
            return None
        user, checked, used = entry
        now = self.now()
        if now - used > self.keep or now - checked > self.max_age:
            del self._entries[key]
            return None
        self._entries[key] = (user, checked, now)
        return user

    def remember(self, credentials: Credentials, user: GuestUser) -> None:
        now = self.now()
        self._entries[self._id(credentials)] = (user, now, now)
        while len(self._entries) > self.max_entries:
            del self._entries[next(iter(self._entries))]


def pam_check(user: str, password: str, service: str = PAM_SERVICE) -> bool:
    """One PAM conversation (blocking: PAM may sleep after a failure)."""
    import pam

    return bool(pam.pam().authenticate(user, password, service=service))


@implementer(IAuthenticator)
class PAMAuthenticator:
    """Name and password through PAM, off the reactor thread; acts as the account that logged in.

    ``check`` (default `pam_check`) and ``run`` (default: the reactor's
    thread pool) are seams for tests.
    """

    log = Logger()

    def __init__(
        self,
        reactor: object,
        *,
        service: str = PAM_SERVICE,
        check: Callable[[str, str, str], bool] = pam_check,
        run: Callable[..., Deferred[bool]] | None = None,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self.reactor = reactor
        self.service = service
        self.check = check
        self.run = run or self._in_thread
        self.throttle = throttle or LoginThrottle(now=reactor.seconds)  # type: ignore[attr-defined]

    def _in_thread(self, function: Callable[..., bool], *args: object) -> Deferred[bool]:
        pool = self.reactor.getThreadPool()  # type: ignore[attr-defined]
        return deferToThreadPool(self.reactor, pool, function, *args)  # type: ignore[arg-type]

    def authenticate(self, credentials: Credentials) -> Deferred[GuestUser]:
        name = credentials.user
        if not name or not credentials.password or self.throttle.held_back(name):
            self.throttle.failed(name)
            self.log.warn("guest login refused for {user!r}", user=name)
            refused: Deferred[GuestUser] = Deferred()
            refused.errback(invalid_login(name))
            return refused
        checking = self.run(self.check, name, credentials.password, self.service)
        return checking.addCallback(self._checked, name)

    def _checked(self, accepted: bool, name: str) -> GuestUser:
        user = GuestUser.named(name) if accepted else None
        if user is None:
            self.throttle.failed(name)
            self.log.warn("guest login failed for {user!r}", user=name)
            raise invalid_login(name)
        self.throttle.succeeded(name)
        return user
