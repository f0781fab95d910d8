"""Security: who may talk to the gateway and to the cloud, and what never shows in a log.

Gateway (anonymous access off, a credentials file of device and operator accounts, a TLS
listener that requires client certificates and takes the certificate's CN as the account):

* anonymous CONNECT → CONNACK 5; wrong password, unknown user → CONNACK 4;
* a device publishing under another device's topic: acknowledged (so it does not retry
  forever) but neither ingested nor routed, counted as an ACL refusal; a payload naming
  another device on its own topic is dead-lettered (`device_mismatch`);
* a device subscribing to `alerts/#` → SUBACK 0x80;
* TLS: a client certificate signed by the CA is accepted without a password and its reading
  stored; no certificate, or a self-signed one with the same CN, is refused.

Cloud ingest: bad signature, expired and future timestamps, unknown gateway, a batch of one
gateway signed by another → 401 with the reason; a replay within the window is answered as
a duplicate and produces nothing; a replay after the window → 401 expired.

Dashboard (`fieldlink cloud web`): every data endpoint answers 401 without a session (and
with a forged cookie); after a login the same endpoint answers 200.

A fleet of password-authenticated devices runs meanwhile; everything it got acknowledged
must be in Kafka, InfluxDB and Parquet.  At the end every captured process log is searched
for every secret used (uplink secrets, device, operator and dashboard passwords).
"""

from __future__ import annotations

import http.cookiejar
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .. import ingest_probe
from ..mqtt_fuzz import connect, connect_auth, publish, reading, subscribe
from ..pki import make_pki
from ..procs import (
    FIELDLINK,
    HOST,
    ServiceMissing,
    free_port,
    http_get,
    metric_by,
    metric_sum,
    port_open,
    run_cli,
    shared_service,
    wait_until,
)
from ..readback import influx_readings, kafka_readings, parquet_readings
from ..report import ScenarioResult, progress
from ..site import MEASUREMENTS, Context, Site
from ..tally import Expected, compare

NAME = "security"
KINDS = ("temperature", "pressure")
CONNACK_OK = b"\x20\x02\x00\x00"


def _fleet_ids(prefix: str, devices: int) -> list[str]:
    per = max(1, devices // len(KINDS))
    return [f"{prefix}_{k[:4]}_{n:03d}_l{('1', '2', '3')[n % 3]}" for k in KINDS
            for n in range(per)]


def _exchange(port: int, data: bytes, want: int, tls: ssl.SSLContext | None = None,
              timeout_s: float = 15) -> bytes:
    """Send `data`, read until `want` bytes arrived or the gateway closed the connection."""
    raw = socket.create_connection((HOST, port), timeout_s)
    sock: socket.socket = raw
    try:
        if tls is not None:
            sock = tls.wrap_socket(raw, server_hostname=HOST)
        sock.settimeout(timeout_s)
        sock.sendall(data)
        got = b""
        while len(got) < want:
            chunk = sock.recv(want - len(got))
            if not chunk:
                break
            got += chunk
        return got
    finally:
        sock.close()


def _tls_refused(port: int, ctx: ssl.SSLContext) -> str:
    """"refused: ..." when the TLS listener does not let this client in, else what it got."""
    try:
        got = _exchange(port, connect(b"tls-probe"), 4, tls=ctx, timeout_s=10)
    except (ssl.SSLError, ConnectionError, OSError) as exc:
        return f"refused: {type(exc).__name__}"
    return "refused: closed" if got != CONNACK_OK else f"ACCEPTED {got!r}"


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(NAME, trials=1)
    try:
        kafka = shared_service("kafka")
        influx = shared_service("influxdb")
    except ServiceMissing as exc:
        result.skipped = str(exc)
        return result
    from gateway.auth.credentials import Account, save_accounts
    from gateway.auth.passwords import hash_password

    t_start = time.monotonic()
    base = ctx.run_dir / "security-setup"
    base.mkdir(parents=True, exist_ok=True)
    fleet = _fleet_ids("sc", 6)
    tls_dev, ops = "sc_tls_dev", "sc_ops"
    passwords = {d: ctx.secrets.new(f"password-{d}") for d in [*fleet, tls_dev]}
    passwords[ops] = ctx.secrets.new("password-operator")
    creds = base / "mqtt-credentials.json"
    save_accounts(creds, {name: Account(name, "operator" if name == ops else "device",
                                        hash_password(pw)) for name, pw in passwords.items()})
    sim_creds = base / "sim-credentials.yaml"
    sim_creds.write_text("".join(f"{d}: \"{passwords[d]}\"\n" for d in fleet))
    pki = make_pki(base / "pki", tls_dev)
    other_gw, other_secret = "gw-security-other", ctx.secrets.new("uplink-secret-other")
    web_port = free_port()
    users = base / "web-users.json"
    site = Site(ctx, NAME, kafka=kafka.bootstrap_servers, influx_url=influx.url,
                anonymous=False, credentials=creds,
                tls={"certfile": str(pki.server_cert), "keyfile": str(pki.server_key),
                     "cafile": str(pki.ca)},
                extra_gateways={other_gw: other_secret},
                cloud={"replay_window_s": 3.0, "web_port": web_port, "users_file": users,
                       "log_level": "debug"}, log_level="debug")
    web_password = ctx.secrets.new("password-dashboard")
    try:
        site.cloud.start()
        site.start_gateway()
        assert site.gw.tls_port is not None
        sim, _ = site.sim("sc", duration_s=8, devices=6, rate_hz=10, username="{device_id}",
                          credentials_file=sim_creds)
        port = site.gw.mqtt_port
        d1, d2 = fleet[0], fleet[1]
        before = site.metrics()
        # -- MQTT authentication
        anon = _exchange(port, connect(b"anon"), 4)
        wrong = _exchange(port, connect_auth("wrong", d1, "not-the-password"), 4)
        unknown = _exchange(port, connect_auth("unknown", "sc_nobody", "whatever"), 4)
        result.check("anonymous CONNECT refused (CONNACK 5)", anon == b"\x20\x02\x00\x05",
                     repr(anon))
        result.check("wrong password refused (CONNACK 4)", wrong == b"\x20\x02\x00\x04",
                     repr(wrong))
        result.check("unknown user refused (CONNACK 4)", unknown == b"\x20\x02\x00\x04",
                     repr(unknown))
        # -- ACL: another device's topic, another device in the payload, alert topics
        cross = _exchange(port, connect_auth("x1", d1, passwords[d1])
                          + publish(f"factory/l1/temperature/{d2}".encode(),
                                    reading(d2, 777_777), pid=3), 8)
        mismatch = _exchange(port, connect_auth("x2", d1, passwords[d1])
                             + publish(f"factory/l1/temperature/{d1}".encode(),
                                       reading(d2, 777_778), pid=4), 8)
        sub = _exchange(port, connect_auth("x3", d1, passwords[d1])
                        + subscribe(5, "alerts/#"), 9)
        result.check("publishing under another device's topic: acknowledged, not taken",
                     cross == CONNACK_OK + b"\x40\x02\x00\x03", repr(cross))
        result.check("a payload naming another device: acknowledged, dead-lettered",
                     mismatch == CONNACK_OK + b"\x40\x02\x00\x04", repr(mismatch))
        result.check("a device may not subscribe to alerts/#",
                     sub == CONNACK_OK + b"\x90\x03\x00\x05\x80", repr(sub))
        # -- TLS with client certificates
        good_tls = ssl.create_default_context(cafile=str(pki.ca))
        good_tls.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        tls_pub = _exchange(site.gw.tls_port, connect(b"tls-good")
                            + publish(f"factory/l1/temperature/{tls_dev}".encode(),
                                      reading(tls_dev, 424_242), pid=9), 8, tls=good_tls)
        result.check("TLS: a CA-signed client certificate is the account (no password)",
                     tls_pub == CONNACK_OK + b"\x40\x02\x00\x09", repr(tls_pub))
        no_cert = ssl.create_default_context(cafile=str(pki.ca))
        rogue = ssl.create_default_context(cafile=str(pki.ca))
        rogue.load_cert_chain(str(pki.rogue_cert), str(pki.rogue_key))
        refused = {"no_certificate": _tls_refused(site.gw.tls_port, no_cert),
                   "self_signed_certificate": _tls_refused(site.gw.tls_port, rogue)}
        result.check("TLS: no or untrusted client certificate refused",
                     all(v.startswith("refused") for v in refused.values()), str(refused))
        time.sleep(0.5)
        after = site.metrics()
        auth_fail = metric_by(after, "fieldlink_gateway_mqtt_auth_failures_total", "reason")
        acl = (metric_sum(after, "fieldlink_gateway_mqtt_acl_refusals_total", operation="publish")
               - metric_sum(before, "fieldlink_gateway_mqtt_acl_refusals_total",
                            operation="publish"))
        dead = metric_by(after, "fieldlink_gateway_pipeline_dead_letters_total", "reason")
        result.check("refusals counted by reason",
                     auth_fail.get("anonymous_refused", 0) >= 1
                     and auth_fail.get("bad_password", 0) >= 1
                     and auth_fail.get("unknown_user", 0) >= 1 and acl == 1
                     and dead.get("device_mismatch", 0) == 1,
                     f"auth failures {auth_fail}, ACL refusals {acl:.0f}, dead letters {dead}")
        result.rejected.update({f"mqtt_auth:{k}": int(v) for k, v in auth_fail.items() if v})
        result.rejected["mqtt_acl:publish"] += int(acl)
        # -- cloud ingest
        _ingest(site, other_gw, other_secret, result)
        # -- dashboard
        _dashboard(site, web_port, users, web_password, result)
        # -- the fleet, and what reached the stores
        sim.wait(120)
        final = site.wait_drained(120)
        result.rejected.update({f"gateway:{k}": int(v) for k, v in site.rejected(final).items()
                                if v})
        site.gateway.terminate()
        site.wait_caught_up(300)
        expected = Expected.from_ledgers(site.ledgers)
        if tls_pub.endswith(b"\x40\x02\x00\x09"):
            expected.acked.add((tls_dev, "temperature", 424_242))
            expected.sent.add((tls_dev, "temperature", 424_242))
        result.acknowledged = len(expected.acked)
        f = site.cloud_files
        k = kafka_readings(f.kafka, f.topics.readings).without("sx_")
        result.add_store(compare(expected, k))
        result.add_store(compare(expected, influx_readings(f.influx_url, f.database,
                                                           MEASUREMENTS).without("sx_")))
        result.add_store(compare(expected, parquet_readings(f.archive).without("sx_")))
        smuggled = [key for key in k.copies if key[2] in (777_777, 777_778)]
        result.check("refused publishes never reached the cloud", not smuggled, str(smuggled))
        result.check("the fleet authenticated with passwords got readings through",
                     result.acknowledged > 100, f"{result.acknowledged} acknowledged")
        result.figures.update({"tls_refusals": refused, "mqtt_auth_failures": auth_fail,
                               "secrets_checked": len(ctx.secrets.values)})
    except Exception as exc:  # noqa: BLE001 - reported as the scenario's error
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        site.finish(result)
        result.seconds = time.monotonic() - t_start
    progress(f"{NAME}: searched {len(site.procs.logs())} logs for "
             f"{len(ctx.secrets.values)} secrets: {len(result.leaks)} found")
    return result


def _probe_copies(site: Site) -> int:
    """Copies in the readings topic of the probe batch's readings (device `sx_NN`, the
    sequence numbers of batch 2·10⁹)."""
    contents = kafka_readings(site.cloud_files.kafka, site.cloud_files.topics.readings)
    return sum(n for (device, _m, seq), n in contents.copies.items()
               if device.startswith("sx_") and seq // 1000 == 2 * 10**9)


def _ingest(site: Site, other_gw: str, other_secret: str, result: ScenarioResult) -> None:
    url = site.cloud_files.ingest_url
    gw, secret = site.gateway_id, site.uplink_secret
    now = int(time.time() * 1000)
    body = ingest_probe.frame(gw, 2 * 10**9)
    other_body = ingest_probe.frame(other_gw, 2 * 10**9 + 1)
    probes = {
        "bad_signature": ingest_probe.post(url, body, ingest_probe.signed(
            "not-the-secret-0123456789", gw, body)),
        "expired": ingest_probe.post(url, body, ingest_probe.signed(secret, gw, body,
                                                                   now - 600_000)),
        "future": ingest_probe.post(url, body, ingest_probe.signed(secret, gw, body,
                                                                  now + 600_000)),
        "unknown_gateway": ingest_probe.post(url, body, ingest_probe.signed(
            "some-secret-0123456789", "gw-nobody", body)),
        # a batch of the other gateway, signed with this gateway's credentials
        "gateway_mismatch": ingest_probe.post(url, other_body, ingest_probe.signed(
            secret, gw, other_body)),
    }
    for reason, (status, answer) in probes.items():
        result.check(f"ingest refuses {reason.replace('_', ' ')} (401 {reason})",
                     status == 401 and answer.get("error") == reason, f"{status} {answer}")
    # replay within the window: answered from the batch ledger, nothing produced again.
    # Counted as copies of the probe's own readings: the fleet's uplink produces to the same
    # topic meanwhile, so the topic's record count proves nothing.
    headers = ingest_probe.signed(secret, gw, body)
    first = ingest_probe.post(url, body, headers)
    copies = _probe_copies(site)
    replay = ingest_probe.post(url, body, headers)
    time.sleep(1.0)  # a produce the replay wrongly started would have landed by now
    again = _probe_copies(site)
    result.check("a replay within the window produces nothing",
                 first[0] == 200 and replay[0] == 200 and replay[1].get("duplicate") is True
                 and copies == 5 and again == copies,
                 f"first {first}, replay {replay}, copies of the probe's 5 readings in Kafka "
                 f"{copies} -> {again}")
    # replay after the window (3 s here)
    time.sleep(4.0)
    late = ingest_probe.post(url, body, headers)
    result.check("a replay after the window is refused (401 expired)",
                 late[0] == 401 and late[1].get("error") == "expired", str(late))


def _dashboard(site: Site, port: int, users: Path, password: str,
               result: ScenarioResult) -> None:
    out = run_cli("cloud", "web", "users", "add", "admin", "--password-stdin", "-c",
                  str(site.cloud_files.path), input_text=password + "\n")
    if out.returncode != 0:
        result.check("dashboard account created", False, out.stderr[-500:])
        return
    web = site.procs.add("web", [*FIELDLINK, "cloud", "web", "-c", str(site.cloud_files.path)])
    web.start()
    wait_until("dashboard listening", lambda: port_open(port), 60, procs=site.procs)
    base = f"http://{HOST}:{port}"
    data = ["/api/session", "/api/fleet", "/api/devices", "/api/devices/sc_temp_000_l1",
            "/api/devices/sc_temp_000_l1/series", "/api/alerts", "/api/alerts/stream", "/"]
    anonymous = {path: http_get(base + path)[0] for path in data}
    from cloud.web.sessions import COOKIE

    forged = {path: http_get(base + path, headers={"Cookie": f"{COOKIE}=forged-{'x' * 40}"})[0]
              for path in data}
    result.check("dashboard data refused without a login (401)",
                 all(v == 401 for v in anonymous.values()), str(anonymous))
    result.check("dashboard data refused with a forged session cookie (401)",
                 all(v == 401 for v in forged.values()), str(forged))
    # positive control: a login opens the same endpoint
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(base + "/login", timeout=10) as resp:
        page = resp.read().decode()
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    form = urllib.parse.urlencode({"username": "admin", "password": password,
                                   "csrf": m.group(1) if m else "", "next": "/"}).encode()
    try:
        with opener.open(base + "/login", data=form, timeout=30) as resp:
            resp.read()
        with opener.open(base + "/api/fleet", timeout=30) as resp:
            status = resp.status
    except urllib.error.HTTPError as e:
        status = e.code
    result.check("after a login the data endpoint answers (200)", status == 200, str(status))
    post_ack = _post_status(base + "/api/alerts/ack")
    result.check("dashboard POST refused without a login (401)", post_ack == 401,
                 str(post_ack))
    web.terminate()


def _post_status(url: str) -> int:
    req = urllib.request.Request(url, data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
