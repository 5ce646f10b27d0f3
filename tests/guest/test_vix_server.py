"""The Vix command server: dispatch, logins, processes through Vix, and bad input (in memory)."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from tests.guest.vix_support import LOGIN, answered, call, make_server, raw_call, relayed_args
from tests.support import failure_of, result_of
from twisted_vmtools.codecs import vix
from twisted_vmtools.codecs.vix import Op, VixCode
from twisted_vmtools.guest.accounts import GuestUser
from twisted_vmtools.guest.auth import IAuthenticator, LoginThrottle, NoAuthenticator, PAMAuthenticator, invalid_login
from twisted_vmtools.guest.processes import ProcessManager, PythonProcess
from twisted_vmtools.guest.vix_errors import VixOperationError
from twisted_vmtools.guest.vix_feature import VixFeature
from twisted_vmtools.protocols.tclo import TCLODispatcher


@implementer(IAuthenticator)
class OnePassword:
    def __init__(self) -> None:
        self.seen: list[vix.Credentials] = []

    def authenticate(self, credentials: vix.Credentials) -> Deferred[GuestUser]:
        self.seen.append(credentials)
        if credentials == LOGIN:
            return succeed(GuestUser.current())
        return fail(invalid_login(credentials.user))


def test_a_wrong_password_runs_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = make_server(authenticator=OnePassword())
    ran: list[object] = []

    def record(process: PythonProcess) -> int:
        ran.append(process)
        return 0

    server.processes.register("record", record)
    bad = vix.Credentials("tester", "wrong")
    assert call(server, Op.START_PROGRAM, vix.StartProgram("record"), bad).error == VixCode.INVALID_LOGIN_CREDENTIALS
    target = tmp_path / "d"
    assert call(server, Op.CREATE_DIRECTORY_EX, vix.PathRequest(str(target)), bad).error == (
        VixCode.INVALID_LOGIN_CREDENTIALS)
    assert ran == [] and not target.exists()
    assert call(server, Op.START_PROGRAM, vix.StartProgram("record")).error == VixCode.OK and len(ran) == 1


def test_the_reply_is_vmtoolsds_text() -> None:
    server = make_server(authenticator=OnePassword())
    reply = answered(server, relayed_args(Op.START_PROGRAM, vix.StartProgram("x"), vix.Credentials("a", "b")))
    assert reply == b"3050 0 \0"  # what vmtoolsd answers a bad login (protocol.md §7.1)


def test_other_credential_types_are_not_supported() -> None:
    server = make_server()
    request = vix.Request(op=Op.LIST_FILES, body=vix.ListFiles("/").encode(), credential=b"\0" * 8,
                          credential_type=vix.CredentialType.TICKETED_SESSION)
    args = vix.relayed_command(request.encode()).split(b" ", 1)[1]
    assert raw_call(server, args).error == VixCode.NOT_SUPPORTED


def test_start_program_answers_the_pid_and_list_shows_it() -> None:
    server = make_server()

    def quick(process: PythonProcess) -> int:
        process.stdout.write(process.environment["GREETING"].encode())
        return 4

    server.processes.register("quick", quick)
    reply = call(server, Op.START_PROGRAM, vix.StartProgram("quick", "arg", None, ("GREETING=hi",)))
    pid = int(reply.result)
    record = server.processes.get(pid)
    assert record is not None and record.io is not None and record.io.stdout.read() == b"hi"
    listed = call(server, Op.LIST_PROCESSES_EX, vix.ListProcesses((pid,)))
    [info] = vix.decode_processes(listed.result.decode())
    assert (info.pid, info.cmd, info.name, info.exit_code, info.owner) == (pid, "quick", "quick arg", 4,
                                                                          GuestUser.current().name)
    assert call(server, Op.START_PROGRAM, vix.StartProgram("quick", None, None, ("NOEQUALS",))).error == (
        VixCode.INVALID_ARG)


def test_kill_through_vix() -> None:
    server = make_server()
    server.processes.register("wait", lambda process: Deferred())
    pid = int(call(server, Op.START_PROGRAM, vix.StartProgram("wait")).result)
    assert call(server, Op.TERMINATE_PROCESS, vix.KillProcess(pid)).error == VixCode.OK
    assert call(server, Op.TERMINATE_PROCESS, vix.KillProcess(pid)).error == VixCode.NO_SUCH_PROCESS
    assert call(server, Op.KILL_PROCESS, vix.KillProcess(os.getpid())).error == VixCode.GUEST_USER_PERMISSIONS


def test_process_listing_pages_when_large() -> None:
    clock = Clock()
    server = make_server(clock, max_result=2000)
    server.processes.register("n", lambda process: 0)
    pids = [int(call(server, Op.START_PROGRAM, vix.StartProgram("n", "x" * 40)).result) for _ in range(100)]
    first = vix.decode_process_page(call(server, Op.LIST_PROCESSES_EX, vix.ListProcesses(tuple(pids))).result)
    assert first is not None and first.key is not None and first.total_size is not None
    text = first.chunk
    left = first.left_to_send
    while left:
        page = vix.decode_process_page(
            call(server, Op.LIST_PROCESSES_EX, vix.ListProcesses(key=first.key, offset=len(text))).result)
        assert page is not None and page.key is None
        text += page.chunk
        left = page.left_to_send
    assert len(text) == first.total_size
    assert [p.pid for p in vix.decode_processes(text.decode())] == sorted(pids)
    expired = call(server, Op.LIST_PROCESSES_EX, vix.ListProcesses(key=first.key, offset=0))
    assert expired.error == VixCode.INVALID_ARG


def test_read_environment() -> None:
    server = make_server()
    user = GuestUser.current()
    everything = vix.decode_environment(call(server, Op.READ_ENV_VARIABLES, vix.ReadEnvironment()).result)
    assert f"HOME={user.home}" in everything and f"USER={user.name}" in everything
    some = call(server, Op.READ_ENV_VARIABLES, vix.ReadEnvironment(("USER", "NOT_SET_ANYWHERE"))).result
    assert vix.decode_environment(some) == [f"USER={user.name}"]


def test_disabled_operations() -> None:
    server = make_server(disabled=frozenset({"ListFilesInGuest"}))
    assert call(server, Op.LIST_FILES, vix.ListFiles("/", max_results=1)).error == VixCode.OPERATION_DISABLED
    properties = vix.decode_properties(base64.b64decode(call(server, Op.GET_TOOLS_STATE, vix.NoBody(), None).result))
    assert properties[vix.Property.GUEST_LIST_FILES_ENABLED] is False
    assert properties[vix.Property.GUEST_START_PROGRAM_ENABLED] is True


def test_tools_properties_need_no_login() -> None:
    reply = make_server().tools_properties(b"")
    decoded = vix.decode_reply(reply, binary=True)
    properties = vix.decode_properties(base64.b64decode(decoded.result))
    assert properties[vix.Property.GUEST_OS_FAMILY] == 1 and vix.Property.GUEST_NAME in properties


@pytest.mark.parametrize("args, code", [
    (b"", VixCode.INVALID_MESSAGE_HEADER),
    (b'"name"', VixCode.INVALID_MESSAGE_HEADER),
    (b'"name"\0', VixCode.INVALID_MESSAGE_HEADER),
    (b'"name"\0' + b"\x01\x00\x0d\xd0" + b"\0" * 60, VixCode.INVALID_MESSAGE_HEADER),
])
def test_malformed_requests_get_error_replies(args: bytes, code: int) -> None:
    assert raw_call(make_server(), args).error == code


def test_truncated_bodies_and_unknown_ops() -> None:
    server = make_server()
    whole = vix.build_request(Op.LIST_FILES, vix.ListFiles("/tmp"), LOGIN)
    cut = vix.Request(op=Op.LIST_FILES, body=whole.body[:-3], credential=whole.credential,
                      credential_type=whole.credential_type)
    assert raw_call(server, vix.relayed_command(cut.encode()).split(b" ", 1)[1]).error == VixCode.INVALID_MESSAGE_BODY
    unknown = vix.Request(op=4242, credential=whole.credential, credential_type=whole.credential_type)
    args = vix.relayed_command(unknown.encode()).split(b" ", 1)[1]
    assert raw_call(server, args).error == VixCode.UNRECOGNIZED_COMMAND_IN_GUEST
    # The service is alive after all of it.
    assert call(server, Op.LIST_FILES, vix.ListFiles("/", max_results=1)).error == VixCode.OK


@given(st.binary(max_size=120))
def test_any_bytes_get_a_vix_reply(data: bytes) -> None:
    reply = answered(make_server(), b'"x"\0' + data)
    assert vix.decode_reply(reply).error != VixCode.OK or data == b""


@given(st.integers(0, 200))
def test_any_truncation_of_a_real_request_gets_a_vix_error(cut: int) -> None:
    raw = vix.build_request(Op.MOVE_GUEST_FILE_EX, vix.Move("/a", "/b"), LOGIN).encode()
    if cut >= len(raw):
        return
    expected = VixCode.INVALID_MESSAGE_HEADER if cut < 23 else VixCode.INVALID_MESSAGE_BODY
    assert raw_call(make_server(), b'"x"\0' + raw[:cut]).error == expected


def test_binary_replies_for_binary_requests() -> None:
    server = make_server()
    server.register_op(Op.HGFS_SEND_PACKET, lambda request, user: b"\x00\x01raw")
    request = vix.Request(op=Op.HGFS_SEND_PACKET, body=vix.HgfsPacket(b"p").encode(), credential=LOGIN.encode(),
                          credential_type=LOGIN.type, common_flags=vix.CommonFlags.REQUEST | 0x80)
    reply = answered(server, vix.relayed_command(request.encode()).split(b" ", 1)[1])
    assert reply == b"0 0 #\x00\x01raw"  # foundryToolsDaemon.c: '#' ends the text of a binary reply


def login_code(d: Deferred[GuestUser]) -> int:
    failure = failure_of(d)
    assert isinstance(failure.value, VixOperationError)
    return failure.value.code


def test_login_throttle() -> None:
    clock = Clock()
    throttle = LoginThrottle(now=clock.seconds, free=2, ceiling=4)
    checks: list[str] = []

    def check(user: str, password: str, service: str) -> bool:
        checks.append(password)
        return password == "right"

    auth = PAMAuthenticator(clock, check=check, run=lambda f, *a: succeed(f(*a)), throttle=throttle)
    bad, good = vix.Credentials("u", "bad"), vix.Credentials("root", "right")
    for _ in range(2):
        assert login_code(auth.authenticate(bad)) == VixCode.INVALID_LOGIN_CREDENTIALS
    assert checks == ["bad", "bad"]
    # held back now: refused without asking PAM
    assert login_code(auth.authenticate(bad)) == VixCode.INVALID_LOGIN_CREDENTIALS
    assert checks == ["bad", "bad"]
    clock.advance(5)
    # PAM said yes, but there is no account "u"
    assert login_code(auth.authenticate(vix.Credentials("u", "right"))) == VixCode.INVALID_LOGIN_CREDENTIALS
    user = result_of(auth.authenticate(good))
    assert user.uid == 0
    assert login_code(auth.authenticate(vix.Credentials("root", ""))) == VixCode.INVALID_LOGIN_CREDENTIALS


def test_feature_installs_its_commands() -> None:
    clock = Clock()
    dispatcher = TCLODispatcher()
    feature = VixFeature(clock, processes=ProcessManager(clock), authenticator=OnePassword())
    feature.install(dispatcher)
    reply = result_of(dispatcher.handle(b"Vix_1_Relayed_Command " + relayed_args(
        Op.VALIDATE_CREDENTIALS, vix.NoBody())))
    assert reply == b"OK 0 0 \0"
    assert result_of(dispatcher.handle(b"Vix_1_Get_ToolsProperties")).startswith(b"OK 0 0 ")


def test_the_relayed_command_takes_a_view_and_answers_a_packet_in_pieces_joined_once() -> None:
    # An HGFS transfer's packet reaches its op as a view into the TCLO command (not copied to split
    # off the name), and its reply's file data reaches the dispatcher's one join as it was made.
    clock = Clock()
    dispatcher = TCLODispatcher()
    feature = VixFeature(clock, processes=ProcessManager(clock), authenticator=NoAuthenticator(GuestUser.current()))
    feature.install(dispatcher)
    seen: list[object] = []
    data = memoryview(b"\x00\x01file data")

    def op(request: vix.Request, user: object) -> list[bytes | memoryview]:
        seen.append(request.body)
        return [b"head", data]

    feature.server.register_op(Op.HGFS_SEND_PACKET, op)
    command = b"Vix_1_Relayed_Command " + relayed_args(Op.HGFS_SEND_PACKET, vix.HgfsPacket(b"\x01" * 600))
    reply = result_of(dispatcher.handle(command))
    assert isinstance(seen[0], memoryview) and seen[0].obj is command
    assert reply.startswith(b"OK ")
    assert vix.decode_reply(reply[3:], binary=True, marked=True).result == b"head\x00\x01file data"


def test_twistd_options(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from twisted.python import usage

    from twisted_vmtools.guest.auth import NoAuthenticator
    from twisted_vmtools.tap import Options, authenticator, disabled_guest_operations
    from twisted_vmtools.toolsconf import load_tools_conf

    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--auth", "anything"])
    options = Options()
    options.parseOptions([])
    assert options["auth"] == "pam"  # never "none" unless asked for
    assert isinstance(authenticator(Clock(), "pam"), PAMAuthenticator)
    assert isinstance(authenticator(Clock(), "none"), NoAuthenticator)
    conf = tmp_path / "tools.conf"
    conf.write_text("[guestoperations]\nStartProgramInGuest.disabled = true\n")
    assert disabled_guest_operations(load_tools_conf(str(conf))) == {"StartProgramInGuest"}
    conf.write_text("[guestoperations]\ndisabled = true\n")
    assert "all" in disabled_guest_operations(load_tools_conf(str(conf)))


def test_default_features_serve_guest_operations_and_their_process_io() -> None:
    from twisted_vmtools.guest.hgfs_feature import HGFSFeature
    from twisted_vmtools.guest.hgfs_proc import ProcessIOHandler
    from twisted_vmtools.guest.processes import StartRequest
    from twisted_vmtools.service import default_features

    clock = Clock()
    features = default_features(clock, guest_info_interval=None, guest_auth=OnePassword())
    [vix_feature] = [f for f in features if isinstance(f, VixFeature)]
    [hgfs] = [f.server for f in features if isinstance(f, HGFSFeature)]
    vix_feature.processes.register("wait", lambda process: Deferred())
    pid = vix_feature.processes.start(StartRequest("wait"), GuestUser.current()).pid
    resolved = hgfs.handlers.resolve(f"/proc/{pid}/stdout", opening=True)
    assert resolved is not None and isinstance(resolved.handler, ProcessIOHandler)


def test_auth_none_is_announced_as_a_warning() -> None:
    from twisted.logger import ILogObserver, LogLevel, globalLogPublisher

    from twisted_vmtools.guest.auth import NoAuthenticator

    events: list[dict[str, object]] = []

    @implementer(ILogObserver)
    def observer(event: dict[str, object]) -> None:
        events.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        VixFeature(Clock(), authenticator=NoAuthenticator()).startService()
        VixFeature(Clock(), authenticator=OnePassword()).startService()
    finally:
        globalLogPublisher.removeObserver(observer)
    warnings = [e for e in events if e.get("log_level") == LogLevel.warn and "ANY login" in str(e.get("log_format"))]
    assert len(warnings) == 1


def test_the_feature_builds_its_server_and_process_manager_on_first_use() -> None:
    from twisted_vmtools.guest.fileops_runner import InlineRunner

    clock = Clock()
    feature = VixFeature(clock, authenticator=OnePassword(), files=InlineRunner())
    dispatcher = TCLODispatcher()
    feature.install(dispatcher)
    assert feature._server is None and feature._processes is None  # an idle guest holds neither
    reply = result_of(dispatcher.handle(b"Vix_1_Get_ToolsProperties"))
    assert reply.startswith(b"OK ") and feature._server is not None
    assert feature.server.processes is feature.processes and feature.server.authenticator is feature.authenticator
    command = vix.relayed_command(vix.build_request(Op.START_PROGRAM, vix.StartProgram("n"), LOGIN).encode())
    feature.processes.register("n", lambda process: 0)
    assert vix.decode_reply(result_of(dispatcher.handle(command))[3:]).error == VixCode.OK
    feature.startService()
    feature.stopService()


class CountingLogins:
    """Accepts one password and counts the checks."""

    def __init__(self) -> None:
        self.checks = 0

    def authenticate(self, credentials: vix.Credentials) -> Deferred[GuestUser]:
        self.checks += 1
        if credentials.password == LOGIN.password:
            return succeed(GuestUser.current())
        refused: Deferred[GuestUser] = Deferred()
        refused.errback(VixOperationError(VixCode.INVALID_LOGIN_CREDENTIALS, "no"))
        return refused


def hgfs_call(server: Any, login: vix.Credentials) -> vix.Reply:
    args = relayed_args(Op.HGFS_SEND_PACKET, vix.HgfsPacket(b"\x01" * 8), login)
    reply = answered(server, args)
    return vix.decode_reply(reply, binary=True, marked=True)


def test_a_transfers_packets_reuse_a_recent_login_and_a_refused_one_is_a_permissions_error() -> None:
    clock = Clock()
    logins = CountingLogins()
    server = make_server(clock, authenticator=logins)
    server.register_op(Op.HGFS_SEND_PACKET, lambda request, user: bytes(vix.HgfsPacket.decode(request.body).packet))
    for _ in range(5):
        reply = hgfs_call(server, LOGIN)
        assert reply.ok and reply.result == b"\x01" * 8
    assert logins.checks == 1  # one PAM conversation for the whole transfer
    # vixTools.c rewrites a refused login of HGFS_SEND_PACKET as GUEST_USER_PERMISSIONS.
    assert hgfs_call(server, vix.Credentials(LOGIN.user, "wrong")).error == VixCode.GUEST_USER_PERMISSIONS
    assert logins.checks == 2
    clock.advance(31)  # quiet longer than a transfer pauses: checked again
    assert hgfs_call(server, LOGIN).ok and logins.checks == 3
    for _ in range(13):
        clock.advance(25)  # in use, but no login is trusted for more than 5 minutes
        assert hgfs_call(server, LOGIN).ok
    assert logins.checks == 4
    # Other ops always check.
    assert call(server, Op.VALIDATE_CREDENTIALS, vix.NoBody()).ok and logins.checks == 5


def test_an_hgfs_request_without_a_packet_fails_before_the_login() -> None:
    logins = CountingLogins()
    server = make_server(authenticator=logins)
    server.register_op(Op.HGFS_SEND_PACKET, lambda request, user: b"")
    args = relayed_args(Op.HGFS_SEND_PACKET, vix.HgfsPacket(b""), LOGIN)
    assert vix.decode_reply(answered(server, args), binary=True).error == VixCode.FAIL
    assert logins.checks == 0
