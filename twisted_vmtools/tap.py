"""``twistd vmtools``: options and service construction (the plugin lives in twisted/plugins)."""

from __future__ import annotations

import ipaddress
import math
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from twisted.application.service import IService, MultiService
from twisted.python import usage

from .channels.interfaces import IGuestChannel
from .endpoint_strings import SERVER_FORMS, EndpointStringError, client_for, parse_server
from .exit_codes import ToolError, UsageError, report
from .guest.guestinfo import DEFAULT_INTERVAL
from .guest.hgfs_files import UploadJournal
from .guest.netinfo import primary_ip
from .guest.sysinfo import DEFAULT_EXCLUDE_NICS, SystemGuestInfoSource
from .heap import keep_packets_in_heap
from .service import ToolsService, default_features
from .simsocket import default_simulator_socket
from .tap_power import POWER_PARAMETERS, check_power_options, power_handler
from .toolsconf import ToolsConf, ToolsConfError, load_tools_conf

if TYPE_CHECKING:
    from .guest.auth import IAuthenticator


AUTH_CHOICES = ("pam", "none")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the VMware guest tools.  Inside a VMware VM the default transport (auto) picks vsock, then "
        "the backdoor.  Elsewhere use --simulate (an embedded simulated VMX) or --transport unix:PATH "
        "to reach a running `vmtools-sim serve`."
    )
    optParameters = [
        ["transport", "t", None, "auto (the default), backdoor, vsock, unix:PATH or tcp:HOST:PORT"],
        ["socket", "s", None, f"with --simulate: where the embedded VMX listens, {SERVER_FORMS} "
                              "(default: a per-user path)"],
        ["primary-ip", None, None, "the address reported for Set_Option broadcastIP (default: first usable IPv4)"],
        ["guestinfo-interval", None, None,
         "seconds between NIC/IP, host name, OS and uptime reports; 0 disables (default: tools.conf, else 30)"],
        ["config", "c", None, "a tools.conf file ([guestinfo] poll-interval, exclude-nics, [powerops] scripts)"],
        ["transfer-state", None, None,
         "where uploads in progress are noted, so that the next start removes what an interrupted one left "
         "(default: /var/lib/twisted_vmtools/hgfs for root, else ~/.local/state/twisted_vmtools/hgfs)"],
        *POWER_PARAMETERS,
        ["auth", None, "pam",
         "how guest-operation logins are checked: pam (the vmtoolsd PAM service), or none: accept ANY login "
         "and act as this service's user (an explicit opt-in, logged as a warning)"],
    ]
    prog = "twistd vmtools"  # how its errors begin (python -m twisted_vmtools says so instead)
    optFlags = [
        ["simulate", None, "run against an embedded simulated VMX; its control socket stays up for vmtools-sim"],
        ["trace", None, "log every RPC in both directions"],
        ["tls", None, "let Twisted load pyOpenSSL (about 12 MB resident), for a --power-hook that speaks TLS; "
                      "the tools themselves never do, so by default it is kept out (see twisted_vmtools/no_tls.py)"],
    ]

    def opt_version(self) -> None:
        """Print the version of twisted_vmtools and exit."""
        from . import __version__

        print(f"twisted_vmtools {__version__}")
        raise SystemExit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Under twistd, a usage error ends the process as the other tools' do: one sentence, exit 2
        (twistd's own prints its whole usage and exits 1).  Standalone, `usage.UsageError` propagates."""
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            if getattr(self, "parent", None) is None:
                raise
            _exit(UsageError(str(error)), self.prog)

    def postOptions(self) -> None:
        if not self["tls"]:
            # First: checking --transport loads Twisted's endpoints, which import pyOpenSSL (no_tls.py).
            from .no_tls import keep_tls_out

            keep_tls_out()
        check_where(self)
        if self["primary-ip"] is not None:
            self["primary-ip"] = ip_address(self["primary-ip"])
        if self["auth"] not in AUTH_CHOICES:
            raise usage.UsageError(f"--auth must be one of {', '.join(AUTH_CHOICES)}, not {self['auth']!r}")
        self["tools-conf"] = read_tools_conf(self["config"])
        guest_info_interval(self["guestinfo-interval"], self["tools-conf"])
        check_power_options(self)


def check_where(options: usage.Options) -> None:
    """``--transport`` reaches a VMX, ``--simulate [--socket]`` makes one: one or the other, each value checked."""
    from .channels.select import check_transport

    if options["simulate"] and options["transport"] is not None:
        raise usage.UsageError("--transport and --simulate exclude each other: --simulate is the transport")
    if options["socket"] is not None and not options["simulate"]:
        raise usage.UsageError("--socket is where the VMX of --simulate listens: use it with --simulate "
                               "(--transport names a VMX that runs elsewhere)")
    try:
        if options["transport"] is not None:
            check_transport(options["transport"])
    except ToolError as error:
        raise usage.UsageError(f"--transport: {error}") from None
    try:
        if options["socket"] is not None:
            client_for(parse_server(options["socket"]))
    except EndpointStringError as error:
        raise usage.UsageError(f"--socket: {error}") from None


def ip_address(text: str) -> str:
    """``--primary-ip``: an IPv4 or IPv6 address, written as the guest will report it."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise usage.UsageError(f"--primary-ip {text!r} is not an IP address") from None


def _exit(error: ToolError, prog: str = "twistd vmtools") -> NoReturn:
    # The real stderr: once twistd has begun logging, sys.stderr goes into its log.
    report(prog, error, sys.__stderr__ or sys.stderr)
    raise SystemExit(int(error.exit_code))


def read_tools_conf(path: str | None) -> ToolsConf:
    """``--config``: the tools.conf to read (none: an empty one)."""
    if path is None:
        return ToolsConf()
    try:
        return load_tools_conf(path)
    except ToolsConfError as error:
        raise usage.UsageError(str(error)) from None


def guest_info_interval(value: object, conf: ToolsConf | None = None) -> float | None:
    """``--guestinfo-interval`` (else tools.conf's ``[guestinfo] poll-interval``, else 30 s)
    as `ToolsService` takes it: seconds, or None for "never"."""
    if value is None:
        try:
            configured = (conf or ToolsConf()).get_float("guestinfo", "poll-interval")
        except ToolsConfError as error:
            raise usage.UsageError(str(error)) from None
        return (DEFAULT_INTERVAL if configured is None else configured) or None
    try:
        interval = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise usage.UsageError("--guestinfo-interval must be a number of seconds") from None
    if not math.isfinite(interval) or interval < 0:
        raise usage.UsageError(f"--guestinfo-interval {value!r} is not a number of seconds, 0 or more")
    return interval or None


def guest_info_source(conf: ToolsConf | None) -> SystemGuestInfoSource:
    """This machine's facts, with tools.conf's ``[guestinfo] exclude-nics`` if it sets one."""
    exclude = (conf or ToolsConf()).get_list("guestinfo", "exclude-nics")
    return SystemGuestInfoSource(exclude_nics=DEFAULT_EXCLUDE_NICS if exclude is None else exclude)


def primary_ip_option(value: str | None, source: SystemGuestInfoSource) -> Callable[[], str | None] | str:
    """``--primary-ip``, else the first usable IPv4 address of a NIC the report includes."""
    return value if value else lambda: primary_ip(source.nic_filter)


def make_channel(reactor: object, transport: str) -> IGuestChannel:
    """The channel ``--transport`` names (see twisted_vmtools.channels.select)."""
    from .channels.select import make_channel as select_channel

    return select_channel(transport, reactor)


def makeService(options: Options, reactor: object | None = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    keep_packets_in_heap()  # HGFS packets of 520 KB, each read and answered without page faults
    trace = bool(options["trace"])
    prog = getattr(options, "prog", Options.prog)
    if options["simulate"]:
        from .channels.stream import StreamChannel
        from .vmx.simulator import SimulatorService

        where = options["socket"] or default_simulator_socket()
        from .vmx.simulator import claim_socket

        top = _ExitIfCannotListen(getattr(options, "parent", None), prog)
        try:
            claim_socket(where)
            SimulatorService(reactor, where, trace=trace).setServiceParent(top)  # type: ignore[arg-type]
        except ToolError as error:
            _exit(error, prog)
        channel: IGuestChannel = StreamChannel(reactor, client_for(parse_server(where)))  # type: ignore[arg-type]
        tools_service(reactor, channel, options).setServiceParent(top)
        return top
    try:
        channel = make_channel(reactor, options["transport"] or "auto")
    except ToolError as error:
        # A clear sentence, not a traceback: "not a VMware VM" is the usual mistake outside one.
        _exit(error, prog)
    return tools_service(reactor, channel, options)


class _ExitIfCannotListen(MultiService):
    """``--simulate`` under ``twistd -n``: a socket the VMX cannot listen on ends twistd at once, in
    one sentence and exit code 4 (twistd would log a traceback, then run a guest with no VMX).

    Daemonized, the error goes to twistd's own start-up report (its status pipe), as any other does.
    """

    def __init__(self, twistd_config: usage.Options | None, prog: str) -> None:
        super().__init__()
        self._config = twistd_config
        self._prog = prog

    def privilegedStartService(self) -> None:
        from .exit_codes import CannotListen

        try:
            super().privilegedStartService()
        except CannotListen as error:
            config = self._config
            if config is not None and not config.get("nodaemon", True):
                raise
            if config is not None and config.get("pidfile"):
                _remove_pidfile(config["pidfile"])
            _exit(error, self._prog)


def _remove_pidfile(path: str) -> None:
    """twistd's pid file, if it is ours: twistd removes it only on an Exception, and we exit."""
    try:
        with open(path) as handle:
            if int(handle.read().strip() or 0) == os.getpid():
                os.unlink(path)
    except (OSError, ValueError):
        pass


def tools_service(reactor: object, channel: IGuestChannel, options: Options) -> ToolsService:
    """The guest tools as the options (and the tools.conf they name) configure them."""
    conf = options.get("tools-conf")
    source = guest_info_source(conf)
    features = default_features(
        reactor,
        primary_ip=primary_ip_option(options["primary-ip"], source),
        guest_info_interval=guest_info_interval(options["guestinfo-interval"], conf),
        guest_info_source=source,
        power_handler=power_handler(options, reactor, conf),
        upload_journal=UploadJournal(options["transfer-state"]) if options["transfer-state"] else None,
        guest_auth=authenticator(reactor, options.get("auth", "pam")),
        guest_operations_disabled=disabled_guest_operations(conf or ToolsConf()),
    )
    return ToolsService(reactor, channel, features=features, trace=bool(options["trace"]))


def authenticator(reactor: object, auth: str) -> IAuthenticator:
    """``--auth``: PAM, or (``none``) any login acting as this service's user."""
    # Imported here: vmtools-sim imports this module for its defaults and must start fast.
    from .guest.auth import NoAuthenticator, PAMAuthenticator

    return NoAuthenticator() if auth == "none" else PAMAuthenticator(reactor)


def disabled_guest_operations(conf: ToolsConf) -> frozenset[str]:
    """``[guestoperations] disabled`` (all of them) and ``<ApiName>.disabled`` (one), as vmtoolsd reads them."""
    if not conf.groups.get("guestoperations"):
        return frozenset()  # the usual case: no need to load the command server for its API names
    from .guest.vix_server import API_NAMES

    try:
        disabled = {name for name in set(API_NAMES.values()) if conf.get_bool("guestoperations", f"{name}.disabled")}
        if conf.get_bool("guestoperations", "disabled"):
            disabled.add("all")
    except ToolsConfError as error:
        raise usage.UsageError(str(error)) from None
    return frozenset(disabled)
