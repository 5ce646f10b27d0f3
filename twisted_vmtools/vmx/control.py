"""The simulator's control channel: AMP over the same socket the guest uses.

`vmtools-sim status|tclo|guestinfo` connect to a running simulator's socket,
send the ``CTRL`` preamble, then speak AMP.
"""

from __future__ import annotations

import json
from typing import NoReturn

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from ..codecs.stream import StreamKind
from ..endpoint_strings import parse_client
from ..framing import widen
from .access import ACCEPTED, CHALLENGE_MAGIC, NONCE_SIZE, SECRET_ENV, SecretError, load_secret, peer_of, proof
from .backpressure import ReadsPausedByWrites
from .model import VMX
from .power import PowerOp, power_responder
from .ratelimit import RateLimitedLog
from .rpc_text import SHOWN_BYTES
from .stores import GuestInfoRefused, guestinfo_key, guestinfo_key_bytes
from .tclo_queue import GuestGone, NoGuest, TCLORefused, TCLOTimeout


class BigBytes(amp.Argument):
    """Bytes of any length: AMP caps one value at 64 KiB, so long ones span several keys.

    ``name`` holds the number of chunks; ``name.0``, ``name.1``… hold them.
    """

    CHUNK = 0xFFFF

    def toBox(self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, object], proto: object) -> None:
        value = objects[name.decode("ascii")]
        assert isinstance(value, bytes)
        chunks = [value[i : i + self.CHUNK] for i in range(0, len(value), self.CHUNK)] or [b""]
        strings[name] = str(len(chunks)).encode()
        for index, chunk in enumerate(chunks):
            strings[name + b".%d" % index] = chunk

    def fromBox(self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, object], proto: object) -> None:
        count = strings.pop(name)
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"{name.decode('ascii')} is not split into 1 or more chunks: {count[:20]!r}")
        objects[name.decode("ascii")] = b"".join(strings.pop(name + b".%d" % i) for i in range(int(count)))


class BigText(BigBytes):
    """Text of any length (UTF-8 on the wire)."""

    def toBox(self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, object], proto: object) -> None:
        key = name.decode("ascii")
        text = objects[key]
        assert isinstance(text, str)
        super().toBox(name, strings, {key: text.encode("utf-8")}, proto)

    def fromBox(self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, object], proto: object) -> None:
        super().fromBox(name, strings, objects, proto)
        key = name.decode("ascii")
        value = objects[key]
        assert isinstance(value, bytes)
        objects[key] = value.decode("utf-8")


class GuestInfoKeyArgument(amp.Argument):
    """A guestinfo key: any bytes on the wire, the store's text (`guestinfo_key`) in Python.

    Not `amp.Unicode`: a key need not be UTF-8 (``guestinfo set`` passes the
    bytes of its argument as they are), and one that is not must not fail to
    encode on the client or to decode in the VMX.  A client may pass bytes.
    """

    def toString(self, inObject: str | bytes) -> bytes:  # noqa: N802
        return inObject if isinstance(inObject, bytes) else guestinfo_key_bytes(inObject)

    def fromString(self, inString: bytes) -> str:  # noqa: N802
        return guestinfo_key(inString)


BAD_ARGUMENTS = b"BAD_ARGUMENTS"


class ControlArgumentError(amp.RemoteAmpError):
    """A control command whose arguments do not parse.  The peer gets this
    one sentence (error code BAD_ARGUMENTS) and the connection stays up,
    where AMP would log a traceback, answer "Unknown Error" and hang up."""

    def __init__(self, description: str) -> None:
        super().__init__(BAD_ARGUMENTS, description)


class ControlCommand(amp.Command):
    """A control command: malformed arguments raise `ControlArgumentError`."""

    @classmethod
    def parseArguments(cls, box: amp.AmpBox, protocol: object) -> dict[str, object]:  # noqa: N802
        try:
            return super().parseArguments(box, protocol)  # type: ignore[no-any-return]
        except KeyError as error:
            key = error.args[0] if error.args else b"?"
            name = key.decode("ascii", "replace") if isinstance(key, bytes) else str(key)
            raise ControlArgumentError(f"{cls.__name__}: missing argument {name}") from None
        except (ValueError, TypeError, OverflowError) as error:
            raise ControlArgumentError(f"{cls.__name__}: malformed argument: {error}") from None


class Status(ControlCommand):
    response = [(b"status", BigText())]


class Hello(ControlCommand):
    """Answered at once: a client asks it first, so that a socket where something else listens (and
    answers nothing) fails within `ANSWER_TIMEOUT` instead of leaving the client waiting forever."""


ANSWER_TIMEOUT = 10.0  # seconds for the connection, the secret's challenge and Hello's answer


class SendTCLO(ControlCommand):
    arguments = [(b"command", BigBytes()), (b"timeout", amp.Float())]
    response = [(b"reply", BigBytes())]
    # NoGuest before GuestGone, its base: AMP sends the first class that matches.
    errors = {TCLOTimeout: b"TCLO_TIMEOUT", NoGuest: b"NO_GUEST", GuestGone: b"GUEST_GONE",
              TCLORefused: b"TCLO_REFUSED"}


class GuestInfoGet(ControlCommand):
    arguments = [(b"key", GuestInfoKeyArgument())]
    response = [(b"found", amp.Boolean()), (b"value", BigBytes())]


class GuestInfoSet(ControlCommand):
    arguments = [(b"key", GuestInfoKeyArgument()), (b"value", BigBytes())]
    errors = {GuestInfoRefused: b"GUESTINFO_REFUSED"}


LOG_PAGE = 100  # records per RPCLog answer: an AMP value holds at most 64 KiB
LOG_DATA_LIMIT = SHOWN_BYTES  # bytes of each record's data sent: what `log` shows


class RPCLog(ControlCommand):
    """The last ``last`` RPC records (at most `LOG_PAGE`), data cut to `LOG_DATA_LIMIT` bytes."""

    arguments = [(b"last", amp.Integer())]
    response = [
        (
            b"records",
            amp.AmpList(
                [
                    (b"when", amp.Float()),
                    (b"direction", amp.Unicode()),
                    (b"channel", amp.Unicode()),
                    (b"data", amp.String()),
                    (b"size", amp.Integer()),
                ]
            ),
        )
    ]


MAX_BOX_BYTES = 4 << 20  # a 1 MiB value or command as BigBytes, with room; nothing legitimate is larger
MAX_BOX_KEYS = 128
BAD_INPUT_LOG = RateLimitedLog(Logger(namespace="twisted_vmtools.vmx.control"))


class BadControlInput(Exception):
    """A control request that does not parse: answered with an error, logged in one line."""


class _Closed:
    """Where answers go once the connection is gone (a late TCLO reply, say): nowhere."""

    def sendBox(self, box: object) -> None:
        raise amp.ConnectionLost()

    def unhandledError(self, failure: Failure) -> None:
        pass


class ControlServer(amp.AMP, ReadsPausedByWrites):
    """Answers control commands against one VMX.

    Its input is bounded (a box over `MAX_BOX_BYTES` or `MAX_BOX_KEYS`
    closes the connection), and bad input costs one log line per peer,
    rate limited across peers, never a traceback.
    """

    def __init__(self, vmx: VMX, bad_input_log: RateLimitedLog | None = None) -> None:
        super().__init__()
        self.vmx = vmx
        self._bad_input_log = bad_input_log or BAD_INPUT_LOG
        self._box_bytes = 0
        self._box_keys = 0
        self._refused = False

    # AMP logs every connection; a status query is not worth two lines in the VMX's log.
    def makeConnection(self, transport: object) -> None:
        widen(transport)  # HGFS packets of 520 KB ride SendTCLO: whole ones per read and send
        amp.BinaryBoxProtocol.makeConnection(self, transport)  # type: ignore[arg-type]
        self.hold_reads_while_writing()  # a client that sends requests but never reads answers

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        # Drop what a half-sent box holds now, and the self-references that made every
        # closed connection wait for a full garbage collection to give its memory back.
        self._currentBox = None
        self._unprocessed = b""
        self.boxSender = _Closed()  # type: ignore[assignment]
        self.boxReceiver = self.locator = None  # type: ignore[assignment]

    # -- bounded, quiet parsing

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        try:
            super().dataReceived(data)
        except Exception as error:  # whatever the parser or AMP's dispatch raise for a malformed box
            self._refuse(f"{type(error).__name__}: {str(error)[:120]}")

    def pauseProducing(self) -> None:
        super().pauseProducing()
        self.paused = True  # boxes already read wait in the parser's buffer (one read's worth)

    def resumeProducing(self) -> None:
        super().resumeProducing()
        if not self._refused and self.transport is not None:
            self.paused = False
            self.dataReceived(b"")

    def proto_init(self, string: bytes) -> str:
        self._box_bytes = self._box_keys = 0
        return super().proto_init(string)  # type: ignore[no-any-return]

    def proto_value(self, string: bytes) -> str:
        self._box_bytes += len(string) + len(self._currentKey or b"")
        self._box_keys += 1
        if self._box_bytes > MAX_BOX_BYTES or self._box_keys > MAX_BOX_KEYS:
            self._refuse(f"AMP box over {MAX_BOX_BYTES} bytes or {MAX_BOX_KEYS} keys")
            return "key"
        return super().proto_value(string)  # type: ignore[no-any-return]

    def lengthLimitExceeded(self, length: int) -> None:
        self._refuse(f"AMP key of {length} bytes")

    def dispatchCommand(self, box: amp.AmpBox) -> Deferred[object]:
        # A box whose arguments do not parse would otherwise be logged with a traceback.
        def quietly(failure: Failure) -> Failure:
            if failure.check(amp.RemoteAmpError):
                return failure
            self._report(f"bad {box.get(amp.COMMAND, b'?')[:40]!r} request: {failure.getErrorMessage()[:120]}")
            return Failure(amp.RemoteAmpError(b"BAD_REQUEST", failure.getErrorMessage()[:200]))

        dispatched: Deferred[object] = super().dispatchCommand(box)
        return dispatched.addErrback(quietly)

    def unhandledError(self, failure: Failure) -> None:
        self._report(f"unhandled: {failure.getErrorMessage()[:120]}")

    def _refuse(self, why: str) -> None:
        self._refused = True
        self.paused = True  # the string parser stops at once
        self._currentBox = None
        self._unprocessed = b""
        self._report(why + "; closing")
        if self.transport is not None:
            self.transport.loseConnection()

    def _report(self, why: str) -> None:
        if getattr(self, "_reported", False):
            return  # one line per peer
        self._reported = True
        try:
            peer = str(peer_of(self.transport))
        except OSError:
            peer = "a closed peer"
        self._bad_input_log.warn("control peer {peer}: {why}", peer=peer, why=why)

    @Hello.responder
    def hello(self) -> dict[str, object]:
        return {}

    @Status.responder
    def status(self) -> dict[str, str]:
        return {"status": json.dumps(self.vmx.status())}

    @SendTCLO.responder
    def send_tclo(self, command: bytes, timeout: float) -> object:
        self.vmx.require_guest()
        return self.vmx.send(command, timeout).addCallback(lambda reply: {"reply": reply})

    @GuestInfoGet.responder
    def guestinfo_get(self, key: str) -> dict[str, object]:
        value = self.vmx.guestinfo.get(key)
        return {"found": value is not None, "value": value or b""}

    @RPCLog.responder
    def rpc_log(self, last: int) -> dict[str, object]:
        records = list(self.vmx.records)[-max(0, min(last, LOG_PAGE)) :] if last > 0 else []
        return {
            "records": [
                {"when": r.when, "direction": r.direction, "channel": r.channel,
                 "data": r.data[:LOG_DATA_LIMIT], "size": r.size}
                for r in records
            ]
        }

    @PowerOp.responder
    def power(self, operation: str, timeout: float) -> object:
        return ensureDeferred(power_responder(self.vmx, operation, timeout))

    @GuestInfoSet.responder
    def guestinfo_set(self, key: str, value: bytes) -> dict[str, object]:
        self.vmx.guestinfo[key] = value
        return {}


class ControlClient(amp.AMP):
    """The client end: names the channel, answers the secret's challenge if given one, then speaks AMP.

    ``ready`` fires with the client once commands may be sent: at once on a
    Unix socket (the VMX checks the peer's uid), after the challenge over TCP.
    """

    def __init__(self, secret: bytes | None = None) -> None:
        super().__init__()
        self._secret = secret
        self._challenge: bytearray | None = bytearray() if secret is not None else None
        self._verdict: bytearray | None = None  # after the proof: the VMX's ACCEPTED
        self._first = secret is None  # the first bytes from the VMX are still to come
        self._refusal: Exception | None = None
        self.ready: Deferred[ControlClient] = Deferred()

    def connectionMade(self) -> None:
        widen(self.transport)  # `guest upload|download` moves 520 KB HGFS packets through SendTCLO
        self.transport.write(StreamKind.CONTROL.preamble)  # type: ignore[union-attr]
        super().connectionMade()
        if self._secret is None:
            self.ready.callback(self)

    def dataReceived(self, data: bytes) -> None:
        if self._challenge is not None:
            data = self._answer_challenge(data)
        if self._verdict is not None:
            data = self._read_verdict(data)
        elif self._first and data:
            self._first = False
            if data.startswith(CHALLENGE_MAGIC):
                self._refuse(SecretError(f"the simulator asks for the shared secret (set {SECRET_ENV})"))
        if data and self._refusal is None:
            super().dataReceived(data)

    def _answer_challenge(self, data: bytes) -> bytes:
        assert self._challenge is not None and self._secret is not None
        missing = len(CHALLENGE_MAGIC) + NONCE_SIZE - len(self._challenge)
        self._challenge += data[:missing]
        if len(self._challenge) < len(CHALLENGE_MAGIC) + NONCE_SIZE:
            return b""
        challenge, self._challenge = bytes(self._challenge), None
        if not challenge.startswith(CHALLENGE_MAGIC):
            self._refuse(SecretError("the simulator sent no challenge: is this a Unix socket, or not a simulator?"))
            return b""
        self.transport.write(proof(self._secret, challenge[len(CHALLENGE_MAGIC) :]))  # type: ignore[union-attr]
        self._verdict = bytearray()
        return data[missing:]

    def _read_verdict(self, data: bytes) -> bytes:
        assert self._verdict is not None
        missing = len(ACCEPTED) - len(self._verdict)
        self._verdict += data[:missing]
        if len(self._verdict) < len(ACCEPTED):
            return b""
        if self._verdict != ACCEPTED:
            self._refuse(SecretError("the simulator did not accept the shared secret"))
            return b""
        self._verdict = None
        self.ready.callback(self)
        return data[missing:]

    def _refuse(self, error: Exception) -> None:
        self._refusal = error
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._refusal is not None:
            reason = Failure(self._refusal)
        if not self.ready.called:
            self.ready.errback(reason if self._refusal else Failure(ConnectionError(
                "the simulator closed the control channel (not allowed for this user, or a wrong secret)"
            )))
        super().connectionLost(reason)


def control_secret(where: str, path: str | None = None) -> bytes | None:
    """The secret a client proves when its ``--socket`` is TCP (from ``path`` or `SECRET_ENV`); None on Unix."""
    return load_secret(path) if parse_client(where).path is None else None


class NoAnswer(Exception):
    """Something is at the address, but no simulator answered there in time."""


async def connect_control(
    endpoint: IStreamClientEndpoint,
    secret: bytes | None = None,
    clock: IReactorTime | None = None,
    timeout: float = ANSWER_TIMEOUT,
) -> ControlClient:
    """A `ControlClient` connected through ``endpoint``, ready for commands (secret proven if given).

    With a ``clock``, `NoAnswer` if the simulator has not answered `Hello`
    within ``timeout`` seconds (the connection is then dropped).
    """
    client = ControlClient(secret)
    handshake = ensureDeferred(_handshake(endpoint, client))
    if clock is not None:
        handshake.addTimeout(timeout, clock, onTimeoutCancel=lambda result, after: _silent(client, after))
    return await handshake


async def _handshake(endpoint: IStreamClientEndpoint, client: ControlClient) -> ControlClient:
    await connectProtocol(endpoint, client)
    await client.ready
    await client.callRemote(Hello)
    return client


def _silent(client: ControlClient, timeout: float) -> NoReturn:
    if client.transport is not None:
        client.transport.abortConnection()  # type: ignore[attr-defined]
    raise NoAnswer(f"nothing answered within {timeout:g} s (is it a simulator?)")
