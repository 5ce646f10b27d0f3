"""`GuestUser`: the account a guest operation acts as, and the environment its programs get."""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass

ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USER_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class GuestUser:
    """A guest account: who a program runs as and whose permissions a file operation has."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str

    @classmethod
    def from_passwd(cls, entry: pwd.struct_passwd) -> GuestUser:
        try:
            groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        except OSError:
            groups = (entry.pw_gid,)
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir or "/", entry.pw_shell or "/bin/sh")

    @classmethod
    def named(cls, name: str) -> GuestUser | None:
        try:
            return cls.from_passwd(pwd.getpwnam(name))
        except (KeyError, ValueError):
            return None

    @classmethod
    def current(cls) -> GuestUser:
        """The account this service runs as (``--auth none`` acts as it)."""
        try:
            return cls.from_passwd(pwd.getpwuid(os.geteuid()))
        except KeyError:
            uid = os.geteuid()
            return cls(str(uid), uid, os.getegid(), tuple(os.getgroups()), "/", "/bin/sh")

    @property
    def is_service_user(self) -> bool:
        """Whether acting as this user needs no change of identity."""
        return self.uid == os.geteuid()

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """A login's clean environment (what vmtoolsd gives an impersonated program), plus ``extra``."""
        env = {
            "HOME": self.home,
            "USER": self.name,
            "LOGNAME": self.name,
            "SHELL": self.shell,
            "PATH": ROOT_PATH if self.uid == 0 else USER_PATH,
        }
        for key in ("LANG", "TZ"):
            if key in os.environ:
                env[key] = os.environ[key]
        env.update(extra or {})
        return env
