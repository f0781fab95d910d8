"""The gateway's CoAP ingress: sensors POST readings, the answer comes after the commit.

Resources::

    POST /r/{device_id}    readings of one device; the path segment is the device hint
    POST /r                readings that name their device in the payload
    GET  /.well-known/core the resource list (RFC 6690)

A GET on /r or /r/{id} is 4.05 Method Not Allowed.

Acknowledgement guarantee.  A confirmable (CON) POST is answered — 2.04 piggybacked on the
ACK — only after `Ingest.ingest(…, durable=True)` returned, i.e. after the readings are in a
committed transaction.  aiocoap's message layer would by default send an *empty* ACK when a
handler takes longer than `TransportTuning.EMPTY_ACK_DELAY` (0.1 s) and the response later
as a separate CON; a sensor that got that empty ACK stops retransmitting although nothing
was committed yet.  `CoapServer` therefore gives every incoming request a transport tuning
whose `EMPTY_ACK_DELAY` is `CoapSettings.empty_ack_delay` (default 30 s), and bounds the wait
for the commit with `ingest_timeout` (default 20 s, always smaller): a commit slower than that
is answered 5.03 Service Unavailable with Max-Age, never with an early ACK.  While the
handler runs, retransmissions of the same CON (same message id) are swallowed by aiocoap's
deduplication, and the one response is re-sent for later duplicates.

Non-confirmable POSTs are ingested with `durable=False` and answered with a NON response.

Answers: 2.04 accepted (also when every reading was a duplicate); 4.00 / 4.01 / 4.03 / 4.13 /
4.15 when the pipeline refused the payload (it has dead-lettered and counted it; the
diagnostic payload is "<reason>: <detail>", see `mapping.code_for_rejection`); 4.13 with
Size1 when the payload (or a Block1 upload, at its first block past the limit) exceeds
`max_payload_bytes` — refused before ingest, counted in `stats().oversize_refused`, nothing
dead-lettered because the bytes were never received in full and the sensor still holds
them; 5.03 with Max-Age when the buffer cannot commit (`RetriableError`), the commit timed
out or the server is shutting down; 5.00 for an unexpected error (logged, counted).

Block-wise uploads (RFC 7959 Block1) are reassembled by aiocoap before the handler runs, so
a batch larger than one datagram (aiocoap clients switch to 1024-byte blocks by themselves)
is ingested as one payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiocoap import Context, Message, resource
from aiocoap.messagemanager import MessageManager
from aiocoap.numbers.codes import Code
from aiocoap.numbers.constants import TransportTuning
from aiocoap.numbers.types import Type
from aiocoap.util import socknumbers
from aiocoap.util.linkformat import LinkFormat

from edge.errors import ConfigError, RetriableError
from gateway.coap.mapping import (
    DEFAULT_MSGPACK_CONTENT_FORMAT,
    code_for_rejection,
    content_type_for,
    diagnostic,
    exceeds_limit,
)
from gateway.ingest import Ingest, Origin, Outcome

log = logging.getLogger("fieldlink.gateway.coap")


@dataclass(frozen=True, slots=True)
class CoapSettings:
    #: "::" listens on every IPv6 and (v4-mapped) IPv4 address
    host: str = "::"
    #: 0 picks a free port (see `CoapServer.port`)
    port: int = 5683
    max_payload_bytes: int = 65536
    #: seconds before aiocoap would send an empty ACK; must exceed the worst commit time
    empty_ack_delay: float = 30.0
    #: the longest a request waits for its commit before it is answered 5.03
    ingest_timeout: float = 20.0
    #: Max-Age (seconds) of a 5.03 answer: when the sensor should try again
    retry_after_s: int = 5
    msgpack_content_formats: tuple[int, ...] = (DEFAULT_MSGPACK_CONTENT_FORMAT,)
    #: on shutdown, how long requests already being committed may take to be answered
    shutdown_grace_s: float = 5.0

    def __post_init__(self) -> None:
        problems: list[tuple[str, str]] = []
        if not 0 <= self.port <= 65535:
            problems.append(("coap.port", f"{self.port} is not a port number (0-65535)"))
        if self.max_payload_bytes <= 0:
            problems.append(("coap.max_payload_bytes", "must be positive"))
        if self.ingest_timeout <= 0:
            problems.append(("coap.ingest_timeout", "must be positive"))
        if self.empty_ack_delay <= self.ingest_timeout:
            problems.append(("coap.empty_ack_delay",
                             f"{self.empty_ack_delay} s must be larger than ingest_timeout "
                             f"({self.ingest_timeout} s), or a slow commit is acknowledged "
                             "before it happened"))
        if self.retry_after_s < 0:
            problems.append(("coap.retry_after_s", "must not be negative"))
        if problems:
            raise ConfigError("coap", problems)


@dataclass(slots=True)
class CoapStats:
    """A snapshot of the CoAP ingress counters (monotonic since start, except gauges)."""

    listening: bool = False
    requests: int = 0
    #: successful answers to confirmable requests: the sensor's reading is committed
    acks: int = 0
    readings_accepted: int = 0
    duplicates: int = 0
    #: payloads the pipeline refused (dead-lettered there), by reason
    rejected: dict[str, int] = field(default_factory=dict)
    #: answers sent, by dotted code ("2.04", "4.00", …)
    responses: dict[str, int] = field(default_factory=dict)
    #: refused before ingest for size (not dead-lettered: never received in full)
    oversize_refused: int = 0
    #: 5.03 answers: buffer busy, commit timeout or shutting down
    unavailable: int = 0
    ingest_timeouts: int = 0
    internal_errors: int = 0
    in_flight: int = 0
    #: total seconds spent waiting for ingest (÷ `ingest_calls` = mean commit wait)
    ingest_seconds: float = 0.0
    ingest_calls: int = 0


class _CommitFirstTuning(TransportTuning):
    """Transport tuning that holds the ACK back until the handler answered."""

    def __init__(self, empty_ack_delay: float) -> None:
        self.EMPTY_ACK_DELAY = empty_ack_delay


class _Readings(resource.Resource):
    """POST handler shared by /r and /r/{device_id}."""

    rt = "fieldlink.readings"

    def __init__(self, server: CoapServer, *, per_device: bool) -> None:
        super().__init__()
        self._server = server
        self._per_device = per_device
        self.ct = " ".join(str(n) for n in (0, 50, 60, *server.settings.msgpack_content_formats))

    async def render_to_pipe(self, pipe: Any) -> None:
        # Checked before aiocoap's Block1 spool assembles anything, so an oversize upload
        # is refused at its first block past the limit instead of after buffering it all.
        request = pipe.request
        if request.code == Code.POST:
            limit = self._server.settings.max_payload_bytes
            block1 = request.opt.block1
            if exceeds_limit(len(request.payload), limit,
                             block_number=block1.block_number if block1 else None,
                             block_size=block1.size if block1 else None,
                             size1=request.opt.size1):
                response = self._server._too_large(request)
                pipe.add_response(response, is_last=True)
                return
        await super().render_to_pipe(pipe)

    async def render_post(self, request: Message) -> Message:
        path = request.opt.uri_path
        if self._per_device:
            if len(path) != 1 or not path[0]:
                return self._server._respond(Message(
                    code=Code.NOT_FOUND, payload=b"expected /r/{device_id}"))
            hint: str | None = path[0]
        else:
            hint = None
        return await self._server._handle_post(request, hint)

    def get_link_description(self) -> dict[str, str] | None:
        if self._per_device:
            return None
        return {**super().get_link_description(),
                "title": "POST readings; one device: /r/{device_id}"}


class _DeviceReadings(_Readings, resource.PathCapable):
    """/r/{device_id}: a path-capable child, so aiocoap's Site hands it the remaining path."""

    def get_resources_as_linkheader(self) -> LinkFormat:
        return LinkFormat([])


class CoapServer:
    """`async with CoapServer(settings, ingest=pipeline) as coap:` serves until the block ends.

    Who calls what: aiocoap's receive path runs one render task per request; that task calls
    `ingest.ingest()` (concurrently for different requests — ordering across requests is not
    guaranteed, as with any UDP sender) and answers when it returned.  `stats()` is cheap and
    safe to call from the metrics scrape; `health()` is a health-check callable.
    """

    def __init__(self, settings: CoapSettings, *, ingest: Ingest) -> None:
        self.settings = settings
        self._ingest = ingest
        self._ctx: Context | None = None
        self._stats = CoapStats()
        self._draining = False
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound UDP port (the real one when settings.port was 0)."""
        if self._port is None:
            raise RuntimeError("CoapServer is not running")
        return self._port

    def stats(self) -> CoapStats:
        s = self._stats
        return CoapStats(
            listening=self._ctx is not None and not self._draining, requests=s.requests,
            acks=s.acks, readings_accepted=s.readings_accepted, duplicates=s.duplicates,
            rejected=dict(s.rejected), responses=dict(s.responses),
            oversize_refused=s.oversize_refused, unavailable=s.unavailable,
            ingest_timeouts=s.ingest_timeouts, internal_errors=s.internal_errors,
            in_flight=self._active, ingest_seconds=s.ingest_seconds,
            ingest_calls=s.ingest_calls)

    def health(self) -> tuple[bool, str]:
        if self._ctx is None or self._draining:
            return False, "CoAP endpoint not listening"
        return True, f"listening on udp port {self._port}"

    async def __aenter__(self) -> CoapServer:
        site = resource.Site()
        site.add_resource([".well-known", "core"],
                          resource.WKCResource(site.get_resources_as_linkheader, impl_info=None))
        site.add_resource(["r"], _Readings(self, per_device=False))
        site.add_resource(["r"], _DeviceReadings(self, per_device=True))
        # Only the UDP transport: aiocoap's default list would also open TCP/TLS/WebSocket
        # listeners on the same port.
        ctx = await Context.create_server_context(
            site, bind=(self.settings.host, self.settings.port), transports=["udp6"],
            loggername="fieldlink.gateway.coap.aiocoap")
        try:
            _install_tuning(ctx, _CommitFirstTuning(self.settings.empty_ack_delay))
            _no_icmp_error_queue(ctx)
            self._port = _bound_port(ctx)
        except BaseException:
            await ctx.shutdown()
            raise
        self._ctx = ctx
        self._draining = False
        log.info("coap listening", extra={"fields": {
            "host": self.settings.host, "port": self._port,
            "empty_ack_delay_s": self.settings.empty_ack_delay}})
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop taking requests, let those being committed be answered, close the socket."""
        ctx, self._ctx = self._ctx, None
        if ctx is None:
            return
        self._draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), self.settings.shutdown_grace_s)
        except TimeoutError:
            log.warning("coap shutdown: requests still waiting for their commit",
                        extra={"fields": {"in_flight": self._active}})
        await ctx.shutdown()
        log.info("coap stopped")

    # -- request handling (called from aiocoap render tasks) ---------------------------------

    def _respond(self, response: Message, *, confirmable: bool = False) -> Message:
        code = response.code.dotted if response.code is not None else "2.04"
        self._stats.responses[code] = self._stats.responses.get(code, 0) + 1
        if confirmable and response.code is not None and response.code.is_successful():
            self._stats.acks += 1
        return response

    def _too_large(self, request: Message) -> Message:
        self._stats.requests += 1
        self._stats.oversize_refused += 1
        limit = self.settings.max_payload_bytes
        log.info("coap payload over the limit refused", extra={"fields": {
            "peer": _peer(request), "limit": limit, "size1": request.opt.size1}})
        response = Message(code=Code.REQUEST_ENTITY_TOO_LARGE,
                           payload=diagnostic("oversize", f"payload exceeds {limit} bytes"))
        response.opt.size1 = limit
        return self._respond(response)

    def _unavailable(self, reason: str, detail: str) -> Message:
        self._stats.unavailable += 1
        response = Message(code=Code.SERVICE_UNAVAILABLE, payload=diagnostic(reason, detail))
        response.opt.max_age = self.settings.retry_after_s
        return self._respond(response)

    async def _handle_post(self, request: Message, device_hint: str | None) -> Message:
        self._stats.requests += 1
        if self._draining:
            return self._unavailable("shutting_down", "gateway is restarting")
        confirmable = request.mtype is not Type.NON
        origin = Origin(protocol="coap", peer=_peer(request), device_hint=device_hint,
                        content_type=content_type_for(request.opt.content_format,
                                                      self.settings.msgpack_content_formats))
        self._active += 1
        self._idle.clear()
        try:
            outcome = await self._ingest_bounded(request.payload, origin, confirmable)
        except RetriableError as err:
            log.warning("coap ingest could not commit", extra={"fields": {
                "peer": origin.peer, "reason": err.reason, "error": err.message}})
            return self._unavailable(err.reason, err.message)
        except TimeoutError:
            self._stats.ingest_timeouts += 1
            log.warning("coap commit wait exceeded ingest_timeout", extra={"fields": {
                "peer": origin.peer, "timeout_s": self.settings.ingest_timeout}})
            return self._unavailable("commit_timeout",
                                     f"not committed within {self.settings.ingest_timeout} s")
        except Exception:
            self._stats.internal_errors += 1
            log.exception("coap ingest failed unexpectedly",
                          extra={"fields": {"peer": origin.peer}})
            return self._respond(Message(code=Code.INTERNAL_SERVER_ERROR,
                                         payload=diagnostic("internal_error")))
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()
        return self._answer(outcome, origin, confirmable)

    async def _ingest_bounded(self, payload: bytes, origin: Origin, durable: bool) -> Outcome:
        # The ingest runs as its own task behind a shield: a timeout (or aiocoap cancelling
        # the render task because the peer lost interest) must not cancel a commit halfway;
        # a sensor retry after a timeout is then recognised as a duplicate by the buffer.
        task = asyncio.create_task(self._ingest.ingest(payload, origin, durable=durable),
                                   name=f"coap-ingest {origin.peer}")
        task.add_done_callback(_log_late_failure)
        started = time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.settings.ingest_timeout)
        finally:
            self._stats.ingest_calls += 1
            self._stats.ingest_seconds += time.monotonic() - started

    def _answer(self, outcome: Outcome, origin: Origin, confirmable: bool) -> Message:
        # a partly refused batch still stored its good readings: count them either way
        self._stats.readings_accepted += outcome.accepted
        self._stats.duplicates += outcome.duplicates
        if outcome.rejected is not None:
            reason = outcome.rejected
            self._stats.rejected[reason] = self._stats.rejected.get(reason, 0) + 1
            log.debug("coap payload rejected", extra={"fields": {
                "peer": origin.peer, "device": origin.device_hint, "reason": reason}})
            return self._respond(Message(code=code_for_rejection(reason),
                                         payload=diagnostic(reason, outcome.detail)))
        return self._respond(Message(code=Code.CHANGED), confirmable=confirmable)


def _peer(request: Message) -> str:
    try:
        return str(request.remote.hostinfo)
    except Exception:  # an exotic remote without host info must not fail the request
        return "?"


def _log_late_failure(task: asyncio.Task[Outcome]) -> None:
    if task.cancelled():
        return
    err = task.exception()
    if err is not None and not isinstance(err, RetriableError):
        log.error("coap ingest task failed", exc_info=err)


def _message_managers(ctx: Context) -> list[MessageManager]:
    found = []
    for interface in ctx.request_interfaces:
        candidate = getattr(interface, "token_interface", None)
        if isinstance(candidate, MessageManager):
            found.append(candidate)
    return found


def _install_tuning(ctx: Context, tuning: TransportTuning) -> None:
    """Give every incoming request `tuning` before aiocoap's message layer sees it.

    aiocoap reads EMPTY_ACK_DELAY from the *request's* transport tuning, and a decoded
    request carries the library default; wrapping the message manager's `dispatch_message`
    (the entry point the UDP transport calls for every datagram) is the narrowest place to
    change it for this server alone, leaving other aiocoap contexts in the process as they
    are.  Refuses to start when the hook point is missing, rather than acknowledge early.
    """
    managers = _message_managers(ctx)
    if not managers:
        raise RuntimeError("aiocoap internals changed: no message manager to hold ACKs back")
    for manager in managers:
        original = manager.dispatch_message

        def dispatch(message: Message, _original: Any = original) -> None:
            if message.code.is_request():
                message.transport_tuning = tuning
            _original(message)

        manager.dispatch_message = dispatch  # type: ignore[method-assign]


def _server_sockets(ctx: Context) -> list[socket.socket]:
    out = []
    for manager in _message_managers(ctx):
        transport = getattr(getattr(manager, "message_interface", None), "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            out.append(sock)
    return out


def _no_icmp_error_queue(ctx: Context) -> None:
    """Turn off the ICMP error queue (IP_RECVERR / IPV6_RECVERR) that aiocoap's udp6 transport
    turns on for the server socket.

    Why: on uvloop (the gateway's event loop) a queued ICMP error makes epoll report EPOLLERR
    for the socket, and libuv then stops the poll handle for good — the endpoint never reads
    again, while /healthz still says it listens.  One answer meeting a closed port is enough
    (for instance an RST to a confirmable response with an unknown token, sent from a socket
    that is gone): found by the torture suite's CoAP fuzzing.  Nothing is lost by turning it
    off: ICMP errors only fail requests this context sends, and a server sends none."""
    if not socknumbers.HAS_RECVERR:
        return
    for sock in _server_sockets(ctx):
        for level, option in ((socket.IPPROTO_IPV6, socknumbers.IPV6_RECVERR),
                              (socket.IPPROTO_IP, socknumbers.IP_RECVERR)):
            with contextlib.suppress(OSError):  # IPv4-only socket: no IPv6 level
                sock.setsockopt(level, option, 0)


def _bound_port(ctx: Context) -> int:
    for sock in _server_sockets(ctx):
        return int(sock.getsockname()[1])
    raise RuntimeError("CoAP server socket not found")
