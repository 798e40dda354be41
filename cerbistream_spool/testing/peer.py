"""A local, Service Bus-compatible AMQP 1.0 peer built on python-qpid-proton.

This is a **dev/test tool, not a production broker**. It accepts what the
azure-servicebus SDK (7.x, pyamqp transport) sends to a queue, records it in
memory and settles it. It stores nothing durably, delivers nothing to
receivers and implements only the slice of the Service Bus protocol that a
*sender* needs:

* a CBS ``put-token`` exchange on ``$cbs`` (answered 202, or 401 when
  ``auth_fail`` is set);
* sender links to any entity (the link target address is the queue name);
* single messages (one AMQP message per delivery) and SDK batches (one
  delivery whose body is a run of data sections, each an encoded message);
* fault switches, settable at runtime: ``busy_rate``, ``close_after``,
  ``settle_delay``, ``auth_fail``.

Typical use in a test::

    with LocalPeer.start() as peer:
        client = ServiceBusClient.from_connection_string(peer.connection_string())
        ...
        assert peer.wait_for(1, timeout=5)
        rec = peer.accepted()[0]

The proton reactor runs in a background thread; every public method is
thread-safe and returns within a bounded time.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import random
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    Iterator,
    List,
    Optional,
    Set,
    Tuple,
    TypeVar,
    cast,
)

from proton import (
    Condition,
    Connection,
    Delivery,
    Described,
    Endpoint,
    Handler,
    Message,
    Sender,
    symbol,
)
from proton.reactor import Container

# the public names are those of cerbistream_spool.testing (its __all__)

log = logging.getLogger("cerbistream_spool.testing")

LOOPBACK = "127.0.0.1"
SERVER_BUSY = "com.microsoft:server-busy"
CONNECTION_FORCED = "amqp:connection:forced"
DECODE_ERROR = "amqp:decode-error"
CBS_ADDRESS = "$cbs"
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
#: Credit window granted to every client sender link.
CREDIT_WINDOW = 500
#: How long the reactor may block in select() before it looks at commands.
_TICK_S = 0.05
#: How long stop() lets clients answer our AMQP close before sockets are cut.
_CLOSE_GRACE_S = 0.2

#: error info attached to every error we send (the SDK needs it non-empty)
_FAULT_INFO: Any = {symbol("x-opt-amqp-peer"): "fault-injection"}

_F = TypeVar("_F", bound=Callable[..., Any])


# ---------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class AcceptedMessage:
    """One message the peer accepted (a batch yields one record per message).

    ``body`` is the concatenated data sections (the SDK always sends the body
    as a data section); for an amqp-value/sequence body it is the decoded
    Python value.
    """

    entity: str
    message_id: Any
    body: Any
    content_type: Optional[str]
    application_properties: Dict[str, Any]
    correlation_id: Any = None
    subject: Optional[str] = None
    annotations: Dict[str, Any] = field(default_factory=dict)
    #: peer-wide sequence number of the delivery that carried the message (1-based)
    delivery_seq: int = 0
    #: index inside its batch, or ``None`` for a single (non-batch) delivery
    batch_index: Optional[int] = None
    batch_size: int = 1
    #: peer-local id of the AMQP connection (1-based, grows across restarts)
    connection_id: int = 0
    received_at: float = 0.0


# ---------------------------------------------------------------------------
# wire helpers (pure functions, unit-testable)

_DATA = 0x75
_PREFIX_SECTIONS = frozenset(range(0x70, 0x75))  # header .. application-properties
_MESSAGE_SECTIONS = frozenset(range(0x70, 0x79))
_SECTION_SYMBOLS = {
    b"amqp:header:list": 0x70,
    b"amqp:delivery-annotations:map": 0x71,
    b"amqp:message-annotations:map": 0x72,
    b"amqp:properties:list": 0x73,
    b"amqp:application-properties:map": 0x74,
    b"amqp:data:binary": 0x75,
    b"amqp:amqp-sequence:list": 0x76,
    b"amqp:amqp-value:*": 0x77,
    b"amqp:footer:map": 0x78,
}
# width of the size prefix for variable/compound/array encodings, by high nibble
_SIZE_WIDTH = {0xA: 1, 0xB: 4, 0xC: 1, 0xD: 4, 0xE: 1, 0xF: 4}
_FIXED_WIDTH = {0x4: 0, 0x5: 1, 0x6: 2, 0x7: 4, 0x8: 8, 0x9: 16}


class _Malformed(ValueError):
    pass


def _need(buf: memoryview, end: int) -> None:
    if end > len(buf):
        raise _Malformed("truncated AMQP value")


def _skip_value(buf: memoryview, off: int) -> int:
    """Return the offset just past the AMQP-encoded value starting at ``off``."""
    _need(buf, off + 1)
    code = buf[off]
    if code == 0x00:  # described: descriptor, then value
        return _skip_value(buf, _skip_value(buf, off + 1))
    hi = code >> 4
    if hi in _FIXED_WIDTH:
        end = off + 1 + _FIXED_WIDTH[hi]
    elif hi in _SIZE_WIDTH:
        width = _SIZE_WIDTH[hi]
        _need(buf, off + 1 + width)
        size = int.from_bytes(buf[off + 1 : off + 1 + width], "big")
        end = off + 1 + width + size
    else:
        raise _Malformed(f"unknown AMQP format code 0x{code:02x}")
    _need(buf, end)
    return end


def _section_code(buf: memoryview, off: int) -> Tuple[int, int]:
    """Read a section descriptor at ``off``: (section code or -1, offset of its value)."""
    _need(buf, off + 2)
    if buf[off] != 0x00:
        raise _Malformed("a message section must be a described value")
    code = buf[off + 1]
    if code == 0x53:  # smallulong
        _need(buf, off + 3)
        return buf[off + 2], off + 3
    if code == 0x80:  # ulong
        _need(buf, off + 10)
        return int.from_bytes(buf[off + 2 : off + 10], "big"), off + 10
    if code in (0xA3, 0xB3):  # symbol
        end = _skip_value(buf, off + 1)
        width = 1 if code == 0xA3 else 4
        name = bytes(buf[off + 2 + width : end])
        return _SECTION_SYMBOLS.get(name, -1), end
    value_off = _skip_value(buf, off + 1)
    return -1, value_off


def _binary(buf: memoryview, off: int) -> Tuple[bytes, int]:
    _need(buf, off + 1)
    ctor = buf[off]
    if ctor == 0xA0:
        width = 1
    elif ctor == 0xB0:
        width = 4
    else:
        raise _Malformed(f"data section holds 0x{ctor:02x}, not binary")
    _need(buf, off + 1 + width)
    size = int.from_bytes(buf[off + 1 : off + 1 + width], "big")
    start = off + 1 + width
    _need(buf, start + size)
    # copy: never hand out views into a buffer that may be reused
    return bytes(buf[start : start + size]), start + size


def _looks_like_message(section: bytes) -> bool:
    if len(section) < 3 or section[0] != 0x00:
        return False
    if section[1] == 0x53:
        return section[2] in _MESSAGE_SECTIONS
    return section[1] in (0x80, 0xA3, 0xB3)


def split_batch(payload: bytes) -> Optional[List[bytes]]:
    """Split an SDK batch payload into its encoded inner messages.

    A batch (message-format 0x80013700) is one delivery whose body is a run of
    data sections, each an encoded AMQP message; the SDK puts the first
    message's properties section in front of them. python-qpid-proton 0.40
    does not expose a delivery's message-format, so this is structural: zero
    or more header/annotations/properties sections, then only data sections,
    each of which starts like an encoded message. Returns ``None`` for
    anything else (a normal single message, whose data body is the payload).
    """
    buf = memoryview(payload)
    out: List[bytes] = []
    off = 0
    try:
        while off < len(buf):
            code, value_off = _section_code(buf, off)
            if code == _DATA:
                section, off = _binary(buf, value_off)
                if not _looks_like_message(section):
                    return None
                out.append(section)
            elif code in _PREFIX_SECTIONS and not out:
                off = _skip_value(buf, value_off)
            else:
                return None
    except _Malformed:
        return None
    finally:
        buf.release()
    return out or None


def _answer_open(endpoint: Any) -> None:
    """Open our end of a connection, session or link the client opened."""
    if endpoint.state & Endpoint.LOCAL_UNINIT:
        endpoint.open()


def _answer_close(endpoint: Any) -> None:
    """Close our end of a connection, session or link the client closed."""
    if not endpoint.state & Endpoint.LOCAL_CLOSED:
        endpoint.close()


def entity_name(address: Optional[str]) -> str:
    """Queue name from a link target address.

    The SDK attaches to ``amqps://host:port/<entity>``; a bare name is kept.
    """
    address = address or ""
    if "://" in address:
        rest = address.split("://", 1)[1]
        address = rest.split("/", 1)[1] if "/" in rest else ""
    return address.strip("/")


def _plain(value: Any) -> Any:
    """Turn proton's typed subclasses (symbol, ulong, Described...) into plain Python."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Described):
        return {"descriptor": _plain(value.descriptor), "value": _plain(value.value)}
    return value


def decode_message(encoded: bytes) -> Dict[str, Any]:
    """Decode one encoded AMQP message into plain fields (see AcceptedMessage)."""
    msg = Message()
    msg.decode(encoded)
    body = msg.body
    if isinstance(body, (bytes, bytearray, memoryview)):
        body = bytes(body)
    elif isinstance(body, list) and body and all(isinstance(b, (bytes, memoryview)) for b in body):
        body = b"".join(bytes(b) for b in body)
    else:
        body = _plain(body)
    return {
        "message_id": _plain(msg.id),
        "body": body,
        "content_type": _plain(msg.content_type) or None,
        "application_properties": _plain(dict(msg.properties or {})),
        "correlation_id": _plain(msg.correlation_id),
        "subject": _plain(msg.subject),
        "annotations": _plain(dict(msg.annotations or {})),
    }


# ---------------------------------------------------------------------------
# reactor-side handler


def _guarded(fn: _F) -> _F:
    """Never let an exception escape into proton's dispatch loop.

    The reactor does not pop an event whose handler raised, so an escaping
    exception would be re-dispatched forever. Log it instead.
    """

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except Exception:
            log.exception("amqp_peer: error in %s", fn.__name__)
            return None

    return wrapper  # type: ignore[return-value]


class _ConnState:
    __slots__ = ("cbs_replies", "cbs_sender", "dead", "id")

    def __init__(self, conn_id: int) -> None:
        self.id = conn_id
        self.cbs_sender: Optional[Sender] = None
        self.cbs_replies: Deque[Message] = deque()
        self.dead = False


class _Timer(Handler):
    """Adapter so a plain callable can be scheduled on the proton Container."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn

    def on_timer_task(self, _event: Any) -> None:
        try:
            self.fn()
        except Exception:
            log.exception("amqp_peer: error in scheduled task")


class _PeerHandler:
    """Proton event handler; runs only on the reactor thread."""

    def __init__(self, peer: LocalPeer) -> None:
        self.peer = peer
        self.container: Optional[Container] = None
        self.conns: Dict[int, Connection] = {}
        self.states: Dict[int, _ConnState] = {}

    # -- helpers ----------------------------------------------------------

    def _state(self, conn: Connection) -> _ConnState:
        cid = getattr(conn, "peer_conn_id", None)
        if cid is None or cid not in self.states:
            cid = self.peer._next_conn_id()
            conn.peer_conn_id = cid
            self.states[cid] = _ConnState(cid)
            self.conns[cid] = conn
        return self.states[cid]

    def _forget(self, conn: Connection) -> None:
        cid = getattr(conn, "peer_conn_id", None)
        if cid is not None:
            st = self.states.pop(cid, None)
            if st is not None:
                st.dead = True
            self.conns.pop(cid, None)

    def close_connection(self, conn: Connection, description: str, abort: bool = False) -> None:
        st = self._state(conn)
        st.dead = True
        if abort:
            transport = conn.transport
            if transport is not None:
                transport.close_head()
                transport.close_tail()
        elif not conn.state & Endpoint.LOCAL_CLOSED:
            # info must be non-empty: the SDK indexes error[2] (see _reject)
            conn.condition = Condition(CONNECTION_FORCED, description, _FAULT_INFO)
            conn.close()

    def abort_all(self) -> None:
        for conn in list(self.conns.values()):
            try:
                transport = conn.transport
                if transport is not None:
                    transport.close_head()
                    transport.close_tail()
            except Exception:
                log.debug("amqp_peer: abort failed", exc_info=True)
            self._forget(conn)

    # -- endpoint lifecycle (a permissive Handshaker) ------------------------

    @_guarded
    def on_connection_bound(self, event: Any) -> None:
        # The SDK's emulator mode skips SASL (plain AMQP header); other clients
        # may use ANONYMOUS or PLAIN. Either way auth is the CBS put-token.
        sasl = event.transport.sasl()
        sasl.allowed_mechs("ANONYMOUS PLAIN")
        self._state(event.connection)
        self.peer._count("connections")

    @_guarded
    def on_connection_remote_open(self, event: Any) -> None:
        self._state(event.connection)
        _answer_open(event.connection)

    @_guarded
    def on_connection_remote_close(self, event: Any) -> None:
        _answer_close(event.connection)

    @_guarded
    def on_transport_closed(self, event: Any) -> None:
        conn = event.connection
        if conn is not None:
            self._forget(conn)

    @_guarded
    def on_connection_final(self, event: Any) -> None:
        self._forget(event.connection)

    @_guarded
    def on_session_remote_open(self, event: Any) -> None:
        _answer_open(event.session)

    @_guarded
    def on_session_remote_close(self, event: Any) -> None:
        _answer_close(event.session)

    @_guarded
    def on_link_remote_open(self, event: Any) -> None:
        link = event.link
        if link.state & Endpoint.LOCAL_UNINIT:
            link.source.copy(link.remote_source)
            link.target.copy(link.remote_target)
            if link.is_receiver:
                link.max_message_size = self.peer.max_message_size
            link.open()
        st = self._state(link.connection)
        if link.is_receiver:
            address = link.remote_target.address or ""
            if entity_name(address) != CBS_ADDRESS:
                self.peer._note_entity(entity_name(address))
            link.flow(CREDIT_WINDOW)
        elif entity_name(link.remote_source.address) == CBS_ADDRESS:
            st.cbs_sender = link
            self._flush_cbs(st)

    @_guarded
    def on_link_remote_close(self, event: Any) -> None:
        link = event.link
        st = self.states.get(getattr(link.connection, "peer_conn_id", -1))
        if st is not None and st.cbs_sender is link:
            st.cbs_sender = None
        _answer_close(link)

    @_guarded
    def on_link_flow(self, event: Any) -> None:
        link = event.link
        if link.is_sender:
            st = self.states.get(getattr(link.connection, "peer_conn_id", -1))
            if st is not None and st.cbs_sender is link:
                self._flush_cbs(st)

    # -- CBS ----------------------------------------------------------------

    def _flush_cbs(self, st: _ConnState) -> None:
        link = st.cbs_sender
        while link is not None and st.cbs_replies and link.credit > 0:
            reply = st.cbs_replies.popleft()
            dlv = reply.send(link)
            dlv.settle()  # pre-settled; the SDK does not need to ack it

    def _on_cbs_request(self, conn: Connection, payload: bytes) -> None:
        st = self._state(conn)
        req = Message()
        req.decode(payload)
        props: Dict[str, Any] = dict(req.properties or {})
        op = props.get("operation")
        fail = self.peer.auth_fail
        self.peer._count("cbs_requests")
        if fail:
            self.peer._count("cbs_rejected")
            code, desc = 401, "Unauthorized (amqp_peer auth_fail=True)"
        elif op != "put-token":
            code, desc = 400, f"unsupported CBS operation {op!r}"
        else:
            code, desc = 202, "Accepted"
        reply = Message(
            correlation_id=req.id,
            properties={"status-code": code, "status-description": desc},
        )
        if req.reply_to:
            reply.address = req.reply_to
        st.cbs_replies.append(reply)
        self._flush_cbs(st)

    # -- deliveries -----------------------------------------------------------

    @_guarded
    def on_delivery(self, event: Any) -> None:
        dlv: Delivery = event.delivery
        link = dlv.link
        if not link.is_receiver:
            return  # disposition update for one of our (pre-settled) CBS replies
        if dlv.aborted:  # the client gave up on a partial transfer
            dlv.settle()
            return
        if dlv.partial:
            return
        payload = link.recv(dlv.pending) or b""
        link.advance()
        if link.credit < CREDIT_WINDOW // 2:
            link.flow(CREDIT_WINDOW - link.credit)
        conn = link.connection
        target = link.remote_target.address or ""
        if entity_name(target) == CBS_ADDRESS:
            self._on_cbs_request(conn, payload)
            dlv.update(Delivery.ACCEPTED)
            dlv.settle()
            return
        st = self._state(conn)
        peer = self.peer
        seq = peer._count("deliveries")
        if st.dead:  # pipelined behind a close_after: never settled
            peer._count("dropped_deliveries")
            return
        if peer._consume_close_after():
            peer._count("dropped_deliveries")
            log.info("amqp_peer: close_after reached; dropping delivery %d and the connection", seq)
            self.close_connection(conn, "amqp_peer close_after fault", abort=peer.close_abort)
            return
        if peer._roll_busy():
            self._reject(dlv, SERVER_BUSY, "amqp_peer busy_rate fault: server busy, retry later")
            return
        try:
            records = self._decode(payload, entity_name(target), seq, st.id)
        except Exception as exc:  # noqa: BLE001 — any undecodable delivery is rejected
            self._reject(dlv, DECODE_ERROR, f"amqp_peer could not decode the delivery: {exc}")
            return
        delay = peer.settle_delay
        if delay > 0 and self.container is not None:
            self.container.schedule(delay, _Timer(lambda: self._accept(dlv, records, st)))
        else:
            self._accept(dlv, records, st)

    def _decode(self, payload: bytes, entity: str, seq: int, conn_id: int) -> List[AcceptedMessage]:
        now = time.time()
        sections = split_batch(payload)
        if sections is None:
            return [
                AcceptedMessage(
                    entity=entity,
                    delivery_seq=seq,
                    connection_id=conn_id,
                    received_at=now,
                    **decode_message(payload),
                )
            ]
        return [
            AcceptedMessage(
                entity=entity,
                delivery_seq=seq,
                batch_index=i,
                batch_size=len(sections),
                connection_id=conn_id,
                received_at=now,
                **decode_message(section),
            )
            for i, section in enumerate(sections)
        ]

    def _reject(self, dlv: Delivery, condition: str, description: str) -> None:
        # The SDK reads error[0..2] of a rejected outcome (condition, description,
        # info) and its completion callback fails when any is missing; proton
        # omits trailing nulls, so ``info`` must be a non-empty map.
        dlv.local.condition = Condition(condition, description, _FAULT_INFO)
        dlv.update(Delivery.REJECTED)
        dlv.settle()
        self.peer._count("rejected_deliveries")

    def _accept(self, dlv: Delivery, records: List[AcceptedMessage], st: _ConnState) -> None:
        if st.dead or dlv.link.state & Endpoint.LOCAL_CLOSED:
            self.peer._count("dropped_deliveries")
            return
        if not dlv.settled:  # a pre-settled transfer (remote settled) needs no outcome
            dlv.update(Delivery.ACCEPTED)
        dlv.settle()
        self.peer._record(records)


# ---------------------------------------------------------------------------
# the public peer


def _check_bindable(port: int) -> None:
    """Raise OSError if ``127.0.0.1:port`` cannot be bound.

    proton's listener leaks its socket (a ResourceWarning) when bind fails,
    so find out with a socket we close ourselves first.
    """
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((LOOPBACK, port))


class _StartDescriptor:
    """``LocalPeer.start(**kw)`` constructs+starts; ``peer.start()`` (re)starts."""

    def __get__(self, obj: Optional[LocalPeer], owner: type) -> Callable[..., LocalPeer]:
        if obj is None:
            return owner.launch  # type: ignore[attr-defined, no-any-return]
        return obj._start


class LocalPeer:
    """In-process Service Bus-compatible AMQP peer on ``127.0.0.1``.

    Not a production broker: see the module docstring and docs/TESTING.md.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        busy_rate: float = 0.0,
        close_after: Optional[int] = None,
        close_abort: bool = False,
        settle_delay: float = 0.0,
        auth_fail: bool = False,
        seed: int = 0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_records: Optional[int] = None,
        on_accept: Optional[Callable[[AcceptedMessage], None]] = None,
    ) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._port = int(port)
        self.max_message_size = int(max_message_size)
        self._records: Deque[AcceptedMessage] = deque(maxlen=max_records)
        self._stats: Dict[str, int] = {}
        self._entities: List[str] = []
        self._conn_ids = itertools.count(1)
        self._rng = random.Random(seed)  # noqa: S311 — seeded fault injection, not crypto
        self._busy_rate = 0.0
        self._close_after: Optional[int] = None
        self._settle_delay = 0.0
        self.busy_rate = busy_rate
        self.close_after = close_after
        self.settle_delay = settle_delay
        #: ``close_after`` cuts the TCP socket instead of sending an AMQP close.
        self.close_abort = bool(close_abort)
        #: answer CBS put-token with 401 instead of 202 (read on every request)
        self.auth_fail = bool(auth_fail)
        self.on_accept = on_accept
        self._thread: Optional[threading.Thread] = None
        self._stop_requested = threading.Event()
        self._ready = threading.Event()
        self._reset_stats()

    # -- lifecycle -----------------------------------------------------------

    start = _StartDescriptor()

    @classmethod
    def launch(cls, port: int = 0, **kwargs: Any) -> LocalPeer:
        """Construct a peer and start it (what ``LocalPeer.start(...)`` calls)."""
        return cls(port, **kwargs)._start()

    def _start(self) -> LocalPeer:
        """Bind ``127.0.0.1:port`` and run the reactor in a daemon thread.

        Binding happens in the caller's thread, so a taken port raises here.
        After a ``stop()`` this re-binds the same port (SO_REUSEADDR).
        """
        if self.running:
            return self
        if self._port:
            _check_bindable(self._port)
        handler = _PeerHandler(self)
        container = Container(handler)
        handler.container = container
        acceptor = container.acceptor(LOOPBACK, str(self._port))
        sock = cast(socket.socket, acceptor._selectable._delegate)  # proton keeps it here
        self._port = sock.getsockname()[1]
        self._stop_requested.clear()
        self._ready.clear()
        io_handler = getattr(container.global_handler, "base", None)
        self._thread = threading.Thread(
            target=self._run,
            args=(container, handler, acceptor, io_handler),
            name=f"amqp-peer-{self._port}",
            daemon=True,
        )
        self._thread.start()
        self._ready.wait(5.0)
        log.info("amqp_peer listening on %s:%d", LOOPBACK, self._port)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close every client connection and the listener; bounded by ``timeout``.

        Clients get an AMQP close (``amqp:connection:forced``); sockets still
        open after a short grace are cut. Idempotent.
        """
        thread = self._thread
        if thread is None:
            return
        self._stop_requested.set()
        thread.join(timeout)
        if thread.is_alive():
            log.warning("amqp_peer: reactor thread did not stop within %.1fs", timeout)
        self._thread = None

    def restart(self, down_for: float = 0.0) -> LocalPeer:
        """``stop()``, wait ``down_for`` seconds, ``start()`` on the same port."""
        self.stop()
        if down_for > 0:
            time.sleep(down_for)
        return self._start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> LocalPeer:
        return self._start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addressing ----------------------------------------------------------

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def port(self) -> int:
        """The bound port (the picked one when constructed with ``port=0``)."""
        return self._port

    def connection_string(self, entity: Optional[str] = None) -> str:
        """A Service Bus connection string the SDK accepts for this peer.

        ``UseDevelopmentEmulator=true`` makes the SDK keep the port and speak
        plain AMQP (no TLS). With ``entity`` an ``EntityPath`` is appended.
        """
        if self._port == 0:
            raise RuntimeError("peer has no port yet; start() it first")
        cs = (
            f"Endpoint=sb://{LOOPBACK}:{self._port};SharedAccessKeyName=k;"
            f"SharedAccessKey=v;UseDevelopmentEmulator=true"
        )
        if entity:
            cs += f";EntityPath={entity}"
        return cs

    # -- fault switches --------------------------------------------------------

    @property
    def busy_rate(self) -> float:
        """Probability (0..1) of rejecting a delivery with ``com.microsoft:server-busy``."""
        return self._busy_rate

    @busy_rate.setter
    def busy_rate(self, value: float) -> None:
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError("busy_rate must be within 0..1")
        self._busy_rate = value

    @property
    def close_after(self) -> Optional[int]:
        """Close the connection on the N-th next delivery (one-shot; None = off).

        The N-1 deliveries before it are handled normally. The N-th is neither
        settled nor recorded: the connection is closed while it is in flight,
        so the client sees a failure and has to resend it. The switch then
        resets to ``None``.
        """
        with self._lock:
            return self._close_after

    @close_after.setter
    def close_after(self, value: Optional[int]) -> None:
        if value is not None and int(value) < 1:
            raise ValueError("close_after must be >= 1 or None")
        with self._lock:
            self._close_after = None if value is None else int(value)

    @property
    def settle_delay(self) -> float:
        """Seconds to wait before settling each accepted delivery."""
        return self._settle_delay

    @settle_delay.setter
    def settle_delay(self, value: float) -> None:
        value = float(value)
        if value < 0:
            raise ValueError("settle_delay must be >= 0")
        self._settle_delay = value

    def seed(self, seed: int) -> None:
        """Re-seed the random source behind ``busy_rate``."""
        with self._lock:
            self._rng.seed(seed)

    # -- observations ---------------------------------------------------------------

    def accepted(self) -> List[AcceptedMessage]:
        """Snapshot of accepted messages, in acceptance order."""
        with self._lock:
            return list(self._records)

    def events(self) -> List[Dict[str, Any]]:
        """The JSON bodies of accepted messages, decoded: the ``ScoringEventDto`` dicts a
        drainer shipped (docs/TESTING.md), in acceptance order. Other bodies are left out."""
        out: List[Dict[str, Any]] = []
        for rec in self.accepted():
            body = rec.body
            if isinstance(body, (bytes, str)):
                try:
                    value = json.loads(body)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    out.append(value)
        return out

    def message_ids(self) -> List[Any]:
        """The ``message_id`` of each accepted message (``LogId`` for our events)."""
        with self._lock:
            return [r.message_id for r in self._records]

    def entities(self) -> List[str]:
        """Link target addresses clients attached sender links to, first-seen order."""
        with self._lock:
            return list(self._entities)

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        """Block until at least ``count`` messages are recorded; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._records) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.25))
            return True

    def clear(self) -> None:
        """Forget recorded messages and reset counters (fault switches stay)."""
        with self._lock:
            self._records.clear()
            self._reset_stats()

    def stats(self) -> Dict[str, int]:
        """Counters since construction or the last ``clear()``.

        ``deliveries`` (sender deliveries received, CBS excluded),
        ``accepted_deliveries``, ``rejected_deliveries`` (busy + decode errors),
        ``dropped_deliveries`` (left unsettled: close_after, or client gone
        before a delayed settle), ``accepted_messages`` (a batch counts each
        message), ``connections``, ``cbs_requests``, ``cbs_rejected``.
        """
        with self._lock:
            return dict(self._stats)

    # -- internals (called on the reactor thread) ------------------------------------

    def _reset_stats(self) -> None:
        self._stats = dict.fromkeys(
            (
                "deliveries",
                "accepted_deliveries",
                "rejected_deliveries",
                "dropped_deliveries",
                "accepted_messages",
                "connections",
                "cbs_requests",
                "cbs_rejected",
            ),
            0,
        )

    def _count(self, key: str, n: int = 1) -> int:
        with self._lock:
            self._stats[key] = self._stats.get(key, 0) + n
            return self._stats[key]

    def _next_conn_id(self) -> int:
        with self._lock:
            return next(self._conn_ids)

    def _note_entity(self, address: str) -> None:
        with self._lock:
            if address not in self._entities:
                self._entities.append(address)

    def _consume_close_after(self) -> bool:
        with self._lock:
            if self._close_after is None:
                return False
            self._close_after -= 1
            if self._close_after > 0:
                return False
            self._close_after = None
            return True

    def _roll_busy(self) -> bool:
        rate = self._busy_rate
        if rate <= 0.0:
            return False
        with self._lock:
            return self._rng.random() < rate

    def _record(self, records: List[AcceptedMessage]) -> None:
        with self._cond:
            self._records.extend(records)
            self._stats["accepted_deliveries"] += 1
            self._stats["accepted_messages"] += len(records)
            self._cond.notify_all()
        callback = self.on_accept
        if callback is not None:
            for rec in records:
                try:
                    callback(rec)
                except Exception:
                    log.exception("amqp_peer: on_accept callback failed")

    def _run(
        self, container: Container, handler: _PeerHandler, acceptor: Any, io_handler: Any
    ) -> None:
        """Reactor loop. Each ``process()`` returns after at most ``_TICK_S``."""
        container.timeout = _TICK_S
        container.start()
        self._ready.set()
        stop_deadline: Optional[float] = None
        try:
            while True:
                if self._stop_requested.is_set() and stop_deadline is None:
                    stop_deadline = time.monotonic() + _CLOSE_GRACE_S
                    acceptor.close()
                    for conn in list(handler.conns.values()):
                        handler.close_connection(conn, "amqp_peer stopping")
                if stop_deadline is not None and (
                    not handler.conns or time.monotonic() >= stop_deadline
                ):
                    handler.abort_all()
                    container.stop()
                    break
                if not container.process():
                    break
            # drain: let terminated selectables close their sockets
            for _ in range(100):
                if not container.process():
                    break
        except Exception:
            log.exception("amqp_peer: reactor loop failed")
        finally:
            self._close_leftover_sockets(acceptor, io_handler)

    @staticmethod
    def _close_leftover_sockets(acceptor: Any, io_handler: Any) -> None:
        """Close any socket proton did not (avoids ResourceWarning on GC)."""
        selectables: Set[Any] = set()
        selector = getattr(io_handler, "_selector", None)
        selectables.update(getattr(selector, "_selectables", ()) or ())
        sel = getattr(acceptor, "_selectable", None)
        if sel is not None:
            selectables.add(sel)
        for s in selectables:
            delegate = getattr(s, "_delegate", None)
            close = getattr(delegate, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.debug("amqp_peer: closing a socket failed", exc_info=True)


@contextlib.contextmanager
def local_peer(port: int = 0, **kwargs: Any) -> Iterator[LocalPeer]:
    """``with local_peer(busy_rate=0.5) as peer: ...`` (same as ``with LocalPeer.start(...)``)."""
    peer = LocalPeer.launch(port, **kwargs)
    try:
        yield peer
    finally:
        peer.stop()
