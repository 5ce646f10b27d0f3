"""tools.conf, open-vm-tools' configuration file, as far as `twistd vmtools` reads it.

The file is a GLib key file: ``[group]`` headers, ``key = value`` lines and
``#`` comments.  Only the settings this project implements are read; the
rest of a real /etc/vmware-tools/tools.conf is ignored, so one file can
serve vmtoolsd and us.  Command-line options win over the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off"})


class ToolsConfError(ValueError):
    """tools.conf cannot be read, or one of the settings we use is malformed."""


@dataclass(frozen=True)
class ToolsConf:
    """Settings by ``(group, key)``; an empty ToolsConf is "no file"."""

    path: str | None = None
    groups: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def get(self, group: str, key: str) -> str | None:
        return self.groups.get(group, {}).get(key)

    def get_float(self, group: str, key: str, *, minimum: float = 0.0) -> float | None:
        raw = self.get(group, key)
        if raw is None:
            return None
        try:
            value = float(raw)
        except ValueError:
            raise ToolsConfError(self._where(group, key, f"expected a number, not {raw!r}")) from None
        if value < minimum:
            raise ToolsConfError(self._where(group, key, f"must be at least {minimum}, not {raw!r}"))
        return value

    def get_bool(self, group: str, key: str) -> bool | None:
        raw = self.get(group, key)
        if raw is None:
            return None
        word = raw.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise ToolsConfError(self._where(group, key, f"expected true or false, not {raw!r}"))

    def get_list(self, group: str, key: str) -> list[str] | None:
        """A comma-separated list (open-vm-tools' form for exclude-nics and friends)."""
        raw = self.get(group, key)
        if raw is None:
            return None
        return [item.strip() for item in raw.split(",") if item.strip()]

    def _where(self, group: str, key: str, problem: str) -> str:
        return f"{self.path or 'tools.conf'}: [{group}] {key}: {problem}"


def load_tools_conf(path: str) -> ToolsConf:
    """Read ``path``; a missing or malformed file is a `ToolsConfError` naming it."""
    import configparser  # only with --config: an empty ToolsConf needs no parser

    parser = configparser.ConfigParser(
        interpolation=None, strict=False, delimiters=("=",), comment_prefixes=("#",), inline_comment_prefixes=None
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive, as in GLib
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as error:
        raise ToolsConfError(f"cannot read {path}: {error.strerror or error}") from None
    except (configparser.Error, UnicodeDecodeError) as error:
        raise ToolsConfError(f"{path} is not a tools.conf key file: {error}") from None
    groups = {name: {key: value.strip() for key, value in parser.items(name)} for name in parser.sections()}
    return ToolsConf(path, groups)
