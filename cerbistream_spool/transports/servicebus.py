"""ServiceBusTransport: azure-servicebus sender with broker-sized batches (docs/CONTRACT.md §2).

One client and sender stay open across batches and are reopened after any
failure. Batches come from ``create_message_batch()`` so the size limit is the
broker's. Every ``send()`` is bounded by ``send_timeout_s`` as a whole (connect,
SASL, CBS, link attach, transfer): the SDK gets the timeouts it takes, and a
watchdog shuts the sockets down at the deadline, because the SDK's SASL
handshake reads with no timeout at all (a peer that accepts TCP and never
answers would hold it forever). ``interrupt()`` does the same at once, from any
thread. SDK errors are mapped to :class:`TransientTransportError` (retry) or
:class:`PermanentTransportError` (auth, missing entity, bad connection string:
retrying without a fix cannot help; a one-shot drain stops, a long-running
drainer keeps the records and keeps trying, slowly).

Entra ID: ``fully_qualified_namespace`` (``<name>.servicebus.windows.net``) with a
``credential`` (anything with ``get_token``; None: ``DefaultAzureCredential`` from
the ``identity`` extra, made once), as in ``ServiceBusClient(namespace, credential)``.
A namespace written ``amqp://host:port`` is spoken to in plain AMQP on that port
(a local peer, as ``UseDevelopmentEmulator=true`` does for a connection string).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any, List, Optional, Sequence, Tuple, cast

from azure.servicebus import ServiceBusClient, ServiceBusMessage
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    MessagingEntityDisabledError,
    MessagingEntityNotFoundError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
)

from cerbistream_spool.errors import PermanentTransportError, TransientTransportError
from cerbistream_spool.transports.base import OutgoingMessage, SendResult

__all__ = ["AUTH_CONFIRM_AFTER", "MAX_BATCH_MESSAGES", "ServiceBusTransport"]

MAX_BATCH_MESSAGES = 4500  # undocumented per-batch message cap on the Standard tier
# A refused token is final only after this many refusals in a row, each on a new
# connection after a backoff: one refusal can be a SAS key being rotated or a
# token issued a moment before the policy changed; three in a row are a wrong key.
AUTH_CONFIRM_AFTER = 3
_AUTH = (ServiceBusAuthenticationError, ServiceBusAuthorizationError)
_ENTITY = (MessagingEntityNotFoundError, MessagingEntityDisabledError)


class ServiceBusTransport:
    """Ships messages to one Service Bus queue."""

    def __init__(
        self,
        *,
        queue_name: str,
        connection_string: Optional[str] = None,
        fully_qualified_namespace: Optional[str] = None,
        credential: Any = None,
        send_timeout_s: float = 30.0,
        retry_total: int = 0,
    ) -> None:
        if not connection_string and not fully_qualified_namespace:
            raise PermanentTransportError("a connection string or a namespace is required")
        if connection_string and fully_qualified_namespace:
            raise PermanentTransportError(
                "pass a connection string or a namespace (Entra ID), not both"
            )
        self.queue_name = queue_name
        self.send_timeout_s = send_timeout_s
        self.max_batch_bytes: Optional[int] = None
        self._connection_string = connection_string
        self._namespace = fully_qualified_namespace
        self._credential = credential
        self._retry_total = retry_total  # our drainer retries with backoff; the SDK must not
        self._client: Any = None
        self._sender: Any = None
        self._amqp_clients: List[Any] = []  # see _keep_amqp_clients
        self._lock = threading.Lock()
        self._aborted: Optional[str] = None  # why the watchdog or interrupt() cut the sockets
        self._cut_transports: List[Any] = []  # SDK transports _abort shut down, closed in _reset
        self._interrupted = False

    def settings_problem(self) -> Optional[str]:
        """What is wrong with the connection string or queue name, found without the network."""
        try:
            client, sender = self._new_client()  # parses the connection string and queue name
        except PermanentTransportError as exc:
            return str(exc)
        sender.close()
        client.close()
        return None

    def send(self, messages: Sequence[OutgoingMessage]) -> SendResult:
        """Send in order in broker-sized batches within ``send_timeout_s``; see the module."""
        with self._lock:
            if self._interrupted:
                raise TransientTransportError("send interrupted: the drainer is stopping")
            self._aborted = None
            reason = f"send timed out after {self.send_timeout_s:g}s"
            watchdog = threading.Timer(self.send_timeout_s, self._abort, (reason,))
            watchdog.daemon = True
            watchdog.start()
            try:
                return self._send(messages)
            except PermanentTransportError:
                self._reset()
                raise
            except Exception as exc:
                self._reset()
                raise self._classify(exc) from exc
            finally:
                watchdog.cancel()

    def interrupt(self) -> None:
        """End a send in progress now (any thread, or a signal handler); later sends fail."""
        self._interrupted = True
        self._abort("send interrupted: the drainer is stopping")

    def close(self) -> None:
        """Close sender and client (the transport may be used again afterwards)."""
        with self._lock:
            self._reset()
            self._interrupted = False

    def _classify(self, exc: Exception) -> Exception:
        name = f"{type(exc).__name__}: {exc}"
        if self._aborted is not None:
            return TransientTransportError(f"{self._aborted} ({name})")
        if isinstance(exc, MessageSizeExceededError):  # the whole batch refused: retry smaller
            return TransientTransportError(f"batch refused as too large: {exc}")
        if isinstance(exc, _AUTH):
            return PermanentTransportError(name, confirm_after=AUTH_CONFIRM_AFTER)
        if isinstance(exc, _ENTITY):
            return PermanentTransportError(f"queue {self.queue_name!r}: {name}")
        return TransientTransportError(name)

    def _abort(self, reason: str) -> None:
        """Shut down the sockets of every AMQP client in use: a blocked read returns at once.

        The SDK may drop its reference to a connection it failed to open, so the
        transports cut here are kept and closed by ``_reset``.
        """
        self._aborted = reason
        for amqp_client in list(self._amqp_clients):
            transport = getattr(getattr(amqp_client, "_connection", None), "_transport", None)
            if transport is None:
                continue
            self._cut_transports.append(transport)
            sock = getattr(transport, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _new_client(self) -> Tuple[Any, Any]:
        """A client and its sender; bad settings raise PermanentTransportError (no network)."""
        options: Any = {"retry_total": self._retry_total}
        try:
            if self._connection_string:
                client = ServiceBusClient.from_connection_string(self._connection_string, **options)
            else:
                namespace = str(self._namespace).strip()
                if namespace.lower().startswith("amqp://"):
                    options["use_tls"] = False  # a local peer: plain AMQP, the port kept
                if self._credential is None:  # once: its token cache outlives reconnects
                    self._credential = _default_credential()
                client = ServiceBusClient(namespace, self._credential, **options)
            try:
                sender = client.get_queue_sender(self.queue_name)
            except BaseException:
                client.close()
                raise
        except ValueError as exc:  # malformed connection string, empty queue name
            raise PermanentTransportError(f"bad connection settings: {exc}") from exc
        return client, sender

    def _open(self) -> Any:
        if self._sender is None:
            self._client, self._sender = self._new_client()
            self._keep_amqp_clients(self._sender)
        return self._sender

    def _send(self, messages: Sequence[OutgoingMessage]) -> SendResult:
        sender = self._open()
        result = SendResult()
        batch = sender.create_message_batch()
        self.max_batch_bytes = batch.max_size_in_bytes
        for message in messages:
            sb_message = ServiceBusMessage(
                message.body,
                message_id=message.message_id,
                content_type=message.content_type,
                application_properties=cast(Any, message.application_properties),
            )
            if len(batch) >= MAX_BATCH_MESSAGES:
                sender.send_messages(batch, timeout=self.send_timeout_s)
                batch = sender.create_message_batch()
            try:
                batch.add_message(sb_message)
                continue
            except MessageSizeExceededError:
                if len(batch) == 0:
                    result.rejected.append((message, "larger than the broker's batch limit"))
                    continue
            sender.send_messages(batch, timeout=self.send_timeout_s)
            batch = sender.create_message_batch()
            try:
                batch.add_message(sb_message)
            except MessageSizeExceededError:
                result.rejected.append((message, "larger than the broker's batch limit"))
        if len(batch):
            sender.send_messages(batch, timeout=self.send_timeout_s)
        return result

    def _reset(self) -> None:
        sender, client = self._sender, self._client
        self._sender = self._client = None
        for closable in (sender, client):
            if closable is not None:
                with contextlib.suppress(Exception):  # already failing; reopened next time
                    closable.close()
        amqp_clients, self._amqp_clients = self._amqp_clients, []
        for amqp_client in amqp_clients:
            _close_socket(amqp_client)
        cut, self._cut_transports = self._cut_transports, []
        for transport in cut:
            with contextlib.suppress(Exception):
                transport.close()

    def _keep_amqp_clients(self, sender: Any) -> None:
        """Remember each AMQP client ``sender`` creates, to close its socket in ``_reset``.

        When a connection fails before its AMQP session exists (broker restarting,
        TCP accepted then reset), the SDK drops its client with the socket still
        open: ``AMQPClient.close()`` returns early without a session, and
        ``Connection.close()`` skips the transport once in state END
        (Azure/azure-sdk-for-python#46830). One socket per failed reconnect would
        then stay open until the garbage collector finds it.
        """
        create = getattr(sender, "_create_handler", None)
        if create is None:  # SDK internals changed: nothing to hook, nothing worse than before
            return

        def create_and_keep(*args: Any, **kwargs: Any) -> Any:
            result = create(*args, **kwargs)
            self._amqp_clients.append(getattr(sender, "_handler", None))
            return result

        sender._create_handler = create_and_keep


def _close_socket(amqp_client: Any) -> None:
    """Close the transport (socket) of an SDK AMQP client; no-op when already closed."""
    transport = getattr(getattr(amqp_client, "_connection", None), "_transport", None)
    if transport is not None:
        with contextlib.suppress(Exception):
            transport.close()


def _default_credential() -> Any:
    try:
        from azure.identity import DefaultAzureCredential  # noqa: PLC0415 — optional extra
    except ImportError as exc:
        raise PermanentTransportError(
            "fully_qualified_namespace needs azure-identity:"
            " pip install 'cerbistream_spool[identity]'"
        ) from exc
    return DefaultAzureCredential()
