"""CoAP ingress over real UDP on 127.0.0.1: an aiocoap client (and a raw socket where the
exact datagrams matter) against `CoapServer` with a recording ingest at the pipeline seam."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator

import cbor2
import msgpack
import pytest
from aiocoap import GET, POST, Context, Message, Unreliable, resource
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type

from edge.errors import RetriableError
from gateway.coap import CoapServer, CoapSettings
from gateway.ingest import Origin, Outcome
from gateway.testing import RecordingIngest

pytestmark = pytest.mark.integration

SEED = {"device_id": "sensor_001_line1", "device_type": "temperature",
        "timestamp": 1705322445000, "value": 72.5, "unit": "celsius",
        "location": {"facility": "factory_a", "line": 1, "zone": "assembly"},
        "quality": "good", "battery_voltage": 4.8}


def settings(**overrides: object) -> CoapSettings:
    base: dict[str, object] = {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 1.0}
    base.update(overrides)
    return CoapSettings(**base)  # type: ignore[arg-type]


@pytest.fixture
async def client() -> AsyncIterator[Context]:
    ctx = await Context.create_client_context(transports=["udp6"])
    yield ctx
    await ctx.shutdown()


async def post(client: Context, port: int, path: str, payload: bytes,
               content_format: int | None = None, *, confirmable: bool = True) -> Message:
    msg = Message(code=POST, uri=f"coap://127.0.0.1:{port}{path}", payload=payload,
                  transport_tuning=None if confirmable else Unreliable())
    if content_format is not None:
        msg.opt.content_format = content_format
    return await asyncio.wait_for(client.request(msg).response, 30)


async def test_json_single_reading_to_device_resource(client: Context) -> None:
    ingest = RecordingIngest()
    body = json.dumps(SEED).encode()
    async with CoapServer(settings(), ingest=ingest) as coap:
        response = await post(client, coap.port, "/r/sensor_001_line1", body, 50)
        stats = coap.stats()
    assert response.code == Code.CHANGED
    assert response.mtype == Type.ACK  # piggybacked on the ACK
    [(payload, origin, durable)] = ingest.calls
    assert payload == body
    assert origin.protocol == "coap"
    assert origin.device_hint == "sensor_001_line1"
    assert origin.content_type == "application/json"
    assert origin.peer.startswith("127.0.0.1:")
    assert durable is True
    assert stats.acks == 1 and stats.readings_accepted == 1 and stats.responses == {"2.04": 1}


async def test_json_batch_to_collection_resource_has_no_device_hint(client: Context) -> None:
    ingest = RecordingIngest()
    batch = json.dumps([{**SEED, "device_id": f"s{i}", "seq": i} for i in range(5)]).encode()
    async with CoapServer(settings(), ingest=ingest) as coap:
        response = await post(client, coap.port, "/r", batch, 50)
    assert response.code == Code.CHANGED
    [(payload, origin, _)] = ingest.calls
    assert payload == batch
    assert origin.device_hint is None


async def test_cbor_and_msgpack_get_their_content_type_hints(client: Context) -> None:
    ingest = RecordingIngest()
    as_cbor = cbor2.dumps(SEED)
    as_msgpack = msgpack.packb(SEED)
    async with CoapServer(settings(), ingest=ingest) as coap:
        r1 = await post(client, coap.port, "/r/sensor_001_line1", as_cbor, 60)
        r2 = await post(client, coap.port, "/r/sensor_001_line1", as_msgpack, 65001)
        r3 = await post(client, coap.port, "/r/sensor_001_line1", b"72.5", 0)
        r4 = await post(client, coap.port, "/r/sensor_001_line1", b"72.5")
    assert [r.code for r in (r1, r2, r3, r4)] == [Code.CHANGED] * 4
    assert [(c[0], c[1].content_type) for c in ingest.calls] == [
        (as_cbor, "application/cbor"), (as_msgpack, "application/msgpack"),
        (b"72.5", "text/plain"), (b"72.5", None)]


async def test_bad_input_gets_400_with_the_pipelines_diagnostic(client: Context) -> None:
    ingest = RecordingIngest(reject={b"{not json": "malformed_payload"})
    async with CoapServer(settings(), ingest=ingest) as coap:
        response = await post(client, coap.port, "/r/sensor_001_line1", b"{not json", 50)
        stats = coap.stats()
    assert response.code == Code.BAD_REQUEST
    assert response.payload == b"malformed_payload: scripted rejection"
    assert stats.rejected == {"malformed_payload": 1}
    assert stats.acks == 0


@pytest.mark.parametrize(("reason", "code"), [
    ("unknown_device", Code.FORBIDDEN), ("unauthorized", Code.UNAUTHORIZED),
    ("oversize", Code.REQUEST_ENTITY_TOO_LARGE), ("non_finite", Code.BAD_REQUEST)])
async def test_rejection_reasons_map_to_codes(client: Context, reason: str, code: Code) -> None:
    ingest = RecordingIngest(reject={b"1": reason})
    async with CoapServer(settings(), ingest=ingest) as coap:
        response = await post(client, coap.port, "/r/ghost", b"1", 0)
    assert response.code == code
    assert response.payload.startswith(reason.encode() + b": ")


async def test_blockwise_batch_larger_than_a_datagram_is_ingested_whole(client: Context) -> None:
    ingest = RecordingIngest()
    batch = json.dumps([{**SEED, "seq": i} for i in range(60)]).encode()
    assert len(batch) > 8 * 1024  # aiocoap sends it in several Block1 blocks
    async with CoapServer(settings(), ingest=ingest) as coap:
        response = await post(client, coap.port, "/r", batch, 50)
    assert response.code == Code.CHANGED
    assert [c[0] for c in ingest.calls] == [batch]


async def test_oversize_is_refused_with_413_and_size1_before_ingest(client: Context) -> None:
    ingest = RecordingIngest()
    async with CoapServer(settings(max_payload_bytes=4096), ingest=ingest) as coap:
        big = await post(client, coap.port, "/r", b"[" + b"1," * 5000 + b"1]", 50)
        small = await post(client, coap.port, "/r/a", b"x" * 600, 0)
        tiny = await post(client, coap.port, "/r/a", b"1", 0)
        stats = coap.stats()
    assert big.code == Code.REQUEST_ENTITY_TOO_LARGE
    assert big.opt.size1 == 4096
    assert b"oversize" in big.payload
    assert small.code == Code.CHANGED and tiny.code == Code.CHANGED
    assert [c[0] for c in ingest.calls] == [b"x" * 600, b"1"]
    assert stats.oversize_refused == 1


async def test_single_datagram_over_limit_is_refused(client: Context) -> None:
    ingest = RecordingIngest()
    async with CoapServer(settings(max_payload_bytes=100), ingest=ingest) as coap:
        response = await post(client, coap.port, "/r/a", b"7" * 101, 0)
    assert response.code == Code.REQUEST_ENTITY_TOO_LARGE
    assert ingest.calls == []


async def test_non_confirmable_post_is_not_durable(client: Context) -> None:
    ingest = RecordingIngest()
    async with CoapServer(settings(), ingest=ingest) as coap:
        response = await post(client, coap.port, "/r/a", b"1", 0, confirmable=False)
        stats = coap.stats()
    assert response.code == Code.CHANGED
    assert response.mtype == Type.NON
    [(_, _, durable)] = ingest.calls
    assert durable is False
    assert stats.acks == 0 and stats.readings_accepted == 1


async def test_get_is_405_and_unknown_path_404(client: Context) -> None:
    async with CoapServer(settings(), ingest=RecordingIngest()) as coap:
        get = await asyncio.wait_for(client.request(Message(
            code=GET, uri=f"coap://127.0.0.1:{coap.port}/r/a")).response, 10)
        nested = await post(client, coap.port, "/r/a/b", b"1", 0)
        elsewhere = await post(client, coap.port, "/x", b"1", 0)
    assert get.code == Code.METHOD_NOT_ALLOWED
    assert nested.code == Code.NOT_FOUND
    assert elsewhere.code == Code.NOT_FOUND


async def test_well_known_core_lists_the_readings_resource(client: Context) -> None:
    async with CoapServer(settings(), ingest=RecordingIngest()) as coap:
        response = await asyncio.wait_for(client.request(Message(
            code=GET, uri=f"coap://127.0.0.1:{coap.port}/.well-known/core")).response, 10)
    text = response.payload.decode()
    assert "</r>" in text and 'rt="fieldlink.readings"' in text


class _BusyIngest:
    async def ingest(self, payload: bytes, origin: Origin, *, durable: bool = True) -> Outcome:
        raise RetriableError("buffer could not commit", reason="buffer_busy")


async def test_buffer_that_cannot_commit_gets_503_with_max_age(client: Context) -> None:
    async with CoapServer(settings(retry_after_s=7), ingest=_BusyIngest()) as coap:
        response = await post(client, coap.port, "/r/a", b"1", 0)
        stats = coap.stats()
    assert response.code == Code.SERVICE_UNAVAILABLE
    assert response.opt.max_age == 7
    assert response.payload.startswith(b"buffer_busy")
    assert stats.unavailable == 1 and stats.acks == 0


async def test_commit_slower_than_ingest_timeout_gets_503_not_an_ack(client: Context) -> None:
    ingest = RecordingIngest(delay=1.0)
    async with CoapServer(settings(ingest_timeout=0.2, empty_ack_delay=5.0),
                          ingest=ingest) as coap:
        response = await post(client, coap.port, "/r/a", b"1", 0)
        assert response.code == Code.SERVICE_UNAVAILABLE
        await asyncio.sleep(1.0)
        # the commit itself was not cancelled: a retry would be a duplicate, not a loss
        assert ingest.committed == [b"1"]
        assert coap.stats().ingest_timeouts == 1


class _BrokenIngest:
    async def ingest(self, payload: bytes, origin: Origin, *, durable: bool = True) -> Outcome:
        raise ValueError("bug")


async def test_unexpected_ingest_error_is_500_and_the_server_keeps_serving(
        client: Context) -> None:
    async with CoapServer(settings(), ingest=_BrokenIngest()) as coap:
        first = await post(client, coap.port, "/r/a", b"1", 0)
        second = await post(client, coap.port, "/r/a", b"1", 0)
        assert coap.stats().internal_errors == 2
    assert first.code == second.code == Code.INTERNAL_SERVER_ERROR


# -- exact datagrams: when does the ACK leave? ------------------------------------------------

def _con_post(mid: int, token: bytes, path: tuple[str, ...], payload: bytes) -> bytes:
    msg = Message(code=POST, payload=payload)
    msg.mtype = Type.CON
    msg.mid = mid
    msg.token = token
    msg.opt.uri_path = path
    msg.opt.content_format = 0
    return msg.encode()


async def _datagrams(sock: socket.socket, until: float) -> list[tuple[float, Message]]:
    """Every datagram that arrives on `sock` within `until` seconds, with its arrival time."""
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    got: list[tuple[float, Message]] = []
    while (left := until - (time.monotonic() - start)) > 0:
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 2048), left)
        except TimeoutError:
            break
        got.append((time.monotonic() - start, Message.decode(data)))
    return got


@pytest.fixture
def raw_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


async def test_ack_is_the_204_and_leaves_only_after_the_commit(raw_socket: socket.socket) -> None:
    ingest = RecordingIngest(delay=0.3)
    async with CoapServer(settings(), ingest=ingest) as coap:
        raw_socket.sendto(_con_post(0x4242, b"\x07", ("r", "a"), b"21.5"),
                          ("127.0.0.1", coap.port))
        got = await _datagrams(raw_socket, 1.0)
    assert len(got) == 1, f"expected one piggybacked answer, got {got}"
    arrived, answer = got[0]
    assert answer.mtype == Type.ACK and answer.mid == 0x4242
    assert answer.code == Code.CHANGED
    assert arrived >= 0.29  # not before ingest returned (asyncio timers may fire ~1 ms early)
    assert ingest.committed == [b"21.5"]


async def test_the_timing_check_detects_an_early_empty_ack(raw_socket: socket.socket) -> None:
    """A stock aiocoap server (EMPTY_ACK_DELAY 0.1 s) with the same slow handler sends an
    empty ACK first: proof that the test above would fail without the hold-back."""

    class Slow(resource.Resource):
        async def render_post(self, request: Message) -> Message:
            await asyncio.sleep(0.3)
            return Message(code=Code.CHANGED)

    site = resource.Site()
    site.add_resource(["r", "a"], Slow())
    ctx = await Context.create_server_context(site, bind=("127.0.0.1", 0), transports=["udp6"])
    try:
        port = ctx.request_interfaces[0].token_interface.message_interface.transport \
            .get_extra_info("socket").getsockname()[1]
        raw_socket.sendto(_con_post(0x4343, b"\x08", ("r", "a"), b"1"), ("127.0.0.1", port))
        got = await _datagrams(raw_socket, 0.6)
    finally:
        await ctx.shutdown()
    assert got and got[0][1].mtype == Type.ACK and got[0][1].code == Code.EMPTY


async def test_retransmitted_con_is_ingested_once_and_answered_alike(
        raw_socket: socket.socket) -> None:
    ingest = RecordingIngest(delay=0.3)
    datagram = _con_post(0x5151, b"\x09", ("r", "a"), b"22.0")
    async with CoapServer(settings(), ingest=ingest) as coap:
        target = ("127.0.0.1", coap.port)
        raw_socket.sendto(datagram, target)
        await asyncio.sleep(0.1)
        raw_socket.sendto(datagram, target)  # retransmission while the commit is running
        first = await _datagrams(raw_socket, 0.8)
        raw_socket.sendto(datagram, target)  # retransmission after the answer was lost
        second = await _datagrams(raw_socket, 0.5)
    assert len(ingest.calls) == 1
    assert [m.code for _, m in first] == [Code.CHANGED]
    assert [(m.code, m.mid) for _, m in second] == [(Code.CHANGED, 0x5151)]


async def test_shutdown_answers_requests_already_committing(client: Context) -> None:
    ingest = RecordingIngest(delay=0.4)
    coap = CoapServer(settings(shutdown_grace_s=3.0), ingest=ingest)
    await coap.__aenter__()
    pending = asyncio.create_task(post(client, coap.port, "/r/a", b"1", 0))
    await asyncio.sleep(0.1)
    await coap.aclose()
    response = await pending
    assert response.code == Code.CHANGED
    assert ingest.committed == [b"1"]
    assert coap.stats().listening is False


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_an_icmp_error_does_not_silence_the_endpoint(loop: str) -> None:
    """One datagram used to silence the endpoint for good on uvloop (the gateway's loop): a
    confirmable response with a token nobody asked for is answered with RST, the RST meets a
    port that is already closed, the kernel queues the ICMP error, and libuv stopped polling
    the socket.  The next request must still be answered."""
    async def scenario() -> Code:
        async with CoapServer(settings(), ingest=RecordingIngest()) as coap:
            gone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            gone.sendto(b"\x41\x45\x05\xe0\x8e", ("127.0.0.1", coap.port))  # CON 2.05, token 8e
            gone.close()
            await asyncio.sleep(0.3)
            client = await Context.create_client_context(transports=["udp6"])
            try:
                response = await post(client, coap.port, "/r/sensor_001_line1",
                                      json.dumps(SEED).encode(), 50)
            finally:
                await client.shutdown()
            return response.code

    run = asyncio.run if loop == "asyncio" else pytest.importorskip("uvloop").run
    assert run(scenario()) == Code.CHANGED


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_the_simulators_coap_client_survives_a_gateway_that_was_down(loop: str) -> None:
    """The fleet's shared CoAP client: a request that met a closed port (the gateway down)
    used to silence the client socket for good on uvloop, so no CoAP device of the fleet was
    heard again after a gateway restart.  A request to the gateway once it is up must be
    answered."""
    from firmware_sim.coap import CoapClient

    async def scenario() -> Code:
        async with CoapClient() as client:
            assert client.ctx is not None
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                down = s.getsockname()[1]
            lost = client.ctx.request(Message(code=POST, uri=f"coap://127.0.0.1:{down}/r/d1",
                                              payload=b"1"), handle_blockwise=False)
            lost.response.add_done_callback(lambda f: f.cancelled() or f.exception())
            await asyncio.sleep(0.5)  # the POST met "port unreachable"
            async with CoapServer(settings(), ingest=RecordingIngest()) as coap:
                response = await asyncio.wait_for(client.ctx.request(Message(
                    code=POST, uri=f"coap://127.0.0.1:{coap.port}/r/sensor_001_line1",
                    payload=json.dumps(SEED).encode())).response, 20)
            del lost
            return response.code

    run = asyncio.run if loop == "asyncio" else pytest.importorskip("uvloop").run
    assert run(scenario()) == Code.CHANGED
