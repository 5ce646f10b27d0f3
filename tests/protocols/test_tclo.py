from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.logger import capturedLogs, formatEvent
from zope.interface.verify import verifyObject

from tests.support import result_of
from twisted_vmtools.channels.interfaces import ITCLOCommands
from twisted_vmtools.protocols.tclo import AlreadyRegistered, TCLODispatcher, TCLOHandlerError


def reply_of(dispatcher: TCLODispatcher, command: bytes) -> bytes:
    reply = result_of(dispatcher.handle(command))
    assert isinstance(reply, bytes)
    return reply


def test_handler_gets_arguments_after_one_space() -> None:
    dispatcher = TCLODispatcher()
    seen: list[bytes] = []
    def echo(args: bytes) -> bytes:
        seen.append(args)
        return args

    dispatcher.register(b"echo", echo)
    assert reply_of(dispatcher, b"echo  two spaces") == b"OK  two spaces"
    assert seen == [b" two spaces"]
    assert reply_of(dispatcher, b"echo") == b"OK "


def test_unknown_and_empty_commands() -> None:
    dispatcher = TCLODispatcher()
    assert reply_of(dispatcher, b"nothing here") == b"ERROR Unknown Command"
    assert reply_of(dispatcher, b"") == b"ERROR Bad command"
    assert reply_of(dispatcher, b" leading") == b"ERROR Bad command"


def test_deferred_and_coroutine_handlers() -> None:
    dispatcher = TCLODispatcher()
    later: Deferred[bytes] = Deferred()
    dispatcher.register(b"later", lambda args: later)

    async def coroutine(args: bytes) -> bytes:
        return await succeed(b"from a coroutine")

    dispatcher.register(b"co", coroutine)
    results: list[object] = []
    dispatcher.handle(b"later").addBoth(results.append)
    assert results == []
    later.callback(b"done")
    assert results == [b"OK done"]
    assert reply_of(dispatcher, b"co") == b"OK from a coroutine"


def test_failing_handlers_answer_error_and_service_goes_on() -> None:
    dispatcher = TCLODispatcher()

    def refuses(args: bytes) -> bytes:
        raise TCLOHandlerError("State change already in progress")

    def crashes(args: bytes) -> bytes:
        raise ZeroDivisionError("boom")

    dispatcher.register(b"refuses", refuses)
    dispatcher.register(b"crashes", crashes)
    dispatcher.register(b"wrong", lambda args: 42)  # type: ignore[arg-type, return-value]
    dispatcher.register(b"ping", lambda args: b"")
    assert reply_of(dispatcher, b"refuses") == b"ERROR State change already in progress"
    assert reply_of(dispatcher, b"crashes") == b"ERROR boom"
    assert reply_of(dispatcher, b"wrong").startswith(b"ERROR ")
    assert reply_of(dispatcher, b"ping") == b"OK "


def test_binary_arguments_pass_through() -> None:
    dispatcher = TCLODispatcher()
    dispatcher.register(b"f", lambda args: args[::-1])
    assert reply_of(dispatcher, b"f \x00\x01\xff") == b"OK \xff\x01\x00"


def test_a_handler_answering_something_else_than_bytes_later_gets_an_error_reply() -> None:
    dispatcher = TCLODispatcher()

    async def wrong(args: bytes) -> bytes:
        return None  # type: ignore[return-value]

    dispatcher.register(b"wrong", wrong)
    assert reply_of(dispatcher, b"wrong").startswith(b"ERROR ")


def test_a_second_handler_for_a_command_is_refused() -> None:
    dispatcher = TCLODispatcher()
    dispatcher.register(b"reset", lambda args: b"ATR toolbox")
    with pytest.raises(AlreadyRegistered, match="observe it instead"):
        dispatcher.register(b"reset", lambda args: b"ATR other")
    assert reply_of(dispatcher, b"reset") == b"OK ATR toolbox"  # the first owner keeps it
    assert dispatcher.registered() == [b"reset"]


def test_observers_run_in_order_after_an_ok_and_the_reply_waits_for_them() -> None:
    dispatcher = TCLODispatcher()
    dispatcher.register(b"Set_Option", lambda args: b"")
    seen: list[tuple[str, bytes]] = []
    later: Deferred[None] = Deferred()

    async def second(args: bytes) -> None:
        seen.append(("second", args))
        await later

    dispatcher.observe(b"Set_Option", lambda args: seen.append(("first", args)))
    dispatcher.observe(b"Set_Option", second)
    dispatcher.observe(b"Set_Option", lambda args: seen.append(("third", args)))
    replies: list[object] = []
    dispatcher.handle(b"Set_Option broadcastIP 1").addBoth(replies.append)
    assert seen == [("first", b"broadcastIP 1"), ("second", b"broadcastIP 1")]
    assert replies == []  # the VMX hears back once every observer is done
    later.callback(None)
    assert seen[-1] == ("third", b"broadcastIP 1")
    assert replies == [b"OK "]


def test_observers_do_not_run_after_an_error_or_for_an_unknown_command() -> None:
    dispatcher = TCLODispatcher()

    def refuses(args: bytes) -> bytes:
        raise TCLOHandlerError("no")

    dispatcher.register(b"refuses", refuses)
    seen: list[bytes] = []
    dispatcher.observe(b"refuses", seen.append)
    dispatcher.observe(b"nobody", seen.append)
    assert reply_of(dispatcher, b"refuses x") == b"ERROR no"
    assert reply_of(dispatcher, b"nobody") == b"ERROR Unknown Command"
    assert seen == []


def test_a_failing_observer_is_logged_and_the_reply_stands() -> None:
    dispatcher = TCLODispatcher()
    dispatcher.register(b"reset", lambda args: b"ATR toolbox")
    seen: list[bytes] = []

    def broken(args: bytes) -> None:
        raise RuntimeError("observer bug")

    dispatcher.observe(b"reset", broken)
    dispatcher.observe(b"reset", seen.append)
    assert reply_of(dispatcher, b"reset") == b"OK ATR toolbox"
    assert seen == [b""]  # the next observer still ran


def test_unsubscribing_ends_the_observation() -> None:
    dispatcher = TCLODispatcher()
    dispatcher.register(b"ping", lambda args: b"")
    seen: list[bytes] = []
    unsubscribe = dispatcher.observe(b"ping", seen.append)
    reply_of(dispatcher, b"ping")
    unsubscribe()
    unsubscribe()  # twice is harmless
    reply_of(dispatcher, b"ping")
    assert seen == [b""]
    assert verifyObject(ITCLOCommands, dispatcher)


def test_trace_shows_commands_and_replies_as_text() -> None:
    dispatcher = TCLODispatcher(trace=True)
    dispatcher.register(b"echo", lambda args: args)
    with capturedLogs() as events:
        reply_of(dispatcher, b"echo caf\xe9\n")
    assert [formatEvent(event) for event in events] == ["TCLO ← echo caf\\xe9\\n", "TCLO → OK caf\\xe9\\n"]


def test_a_body_in_pieces_is_joined_once_behind_ok() -> None:
    dispatcher = TCLODispatcher()
    data = bytes(range(256)) * 4
    dispatcher.register(b"f", lambda args: [b"head:", memoryview(data)[4:], args])
    assert reply_of(dispatcher, b"f tail") == b"OK head:" + data[4:] + b"tail"


def test_a_handler_registered_for_views_gets_its_arguments_uncopied() -> None:
    dispatcher = TCLODispatcher()
    seen: list[object] = []

    def handler(args: bytes) -> bytes:
        seen.append(args)
        return bytes(args[:3])

    dispatcher.register(b"f", handler, views=True)
    dispatcher.register(b"g", handler)
    command = b"f " + bytes(range(256)) * 10
    assert reply_of(dispatcher, command) == b"OK \x00\x01\x02"
    view = seen[0]
    assert isinstance(view, memoryview) and view.obj is command and view == command[2:]
    assert reply_of(dispatcher, b"g xyz") == b"OK xyz" and type(seen[1]) is bytes
    assert reply_of(dispatcher, b"f") == b"OK " and seen[2] == b""
    dispatcher.unregister(b"f")
    dispatcher.register(b"f", handler)
    assert reply_of(dispatcher, b"f abc") == b"OK abc" and type(seen[3]) is bytes
