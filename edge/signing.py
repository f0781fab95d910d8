"""Request signing between a gateway's uplink and the cloud ingest: HMAC-SHA256, scheme v1.

Pure functions, no I/O; the caller passes the clock (`now_ms`).

Who calls what: the gateway uplink calls `sign_request(secret, gateway_id, body, now_ms)` and
sends the returned headers with the body; cloud ingest calls `verify_request(...)` on every
request before it looks at the body, then `check_gateway(auth, frame_gateway)` once it has
read the batch header.

    X-Fieldlink-Gateway:   gw-1
    X-Fieldlink-Timestamp: 1705322445000                 (ms since the epoch, UTC)
    X-Fieldlink-Signature: v1=<64 hex digits>

    signature = HMAC-SHA256(secret, f"{gateway}.{timestamp}.".encode() + body)

Guarantees
----------
* The signature covers the gateway id, the timestamp and every byte of the body, so none of
  them can be changed without the secret.  Comparison is constant-time (`hmac.compare_digest`).
* A request whose timestamp is further than `window_ms` from the verifier's clock, in either
  direction, is refused (`StaleTimestamp`, reason "expired" or "future"): a captured request
  cannot be replayed later than that.  Within the window a replay is a resend of the same
  batch, which ingest answers from its batch de-duplication (`"duplicate": true`), so it
  changes nothing.
* `X-Fieldlink-Signature` may carry several comma-separated `scheme=hex` items; any valid
  `v1` item is accepted and unknown schemes are ignored, so a later scheme can be rolled out
  alongside v1.
* Errors never contain the secret or the expected signature.

Errors (all `edge.errors.FatalError`, so the request must not be retried as is; ingest
answers 401 with `reason`): `MissingHeader`, `UnknownGateway`, `BadSignature`,
`StaleTimestamp`, `GatewayMismatch`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from edge.errors import FatalError

__all__ = [
    "GATEWAY_HEADER",
    "SCHEME",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "AuthError",
    "BadSignature",
    "GatewayMismatch",
    "MissingHeader",
    "SignedRequest",
    "StaleTimestamp",
    "UnknownGateway",
    "check_gateway",
    "sign_request",
    "signature",
    "verify_request",
]

GATEWAY_HEADER = "X-Fieldlink-Gateway"
TIMESTAMP_HEADER = "X-Fieldlink-Timestamp"
SIGNATURE_HEADER = "X-Fieldlink-Signature"
SCHEME = "v1"
#: a longer header value is refused before any work is done with it
_MAX_HEADER = 1024


class AuthError(FatalError):
    """The request is not authentic; `reason` says why (a metrics label, a 401 body field)."""

    reason = "auth_failed"


class MissingHeader(AuthError):
    """A signing header is absent or unreadable."""

    reason = "missing_header"


class UnknownGateway(AuthError):
    reason = "unknown_gateway"


class BadSignature(AuthError):
    reason = "bad_signature"


class StaleTimestamp(AuthError):
    """Outside the replay window; `reason` is "expired" (too old) or "future"."""

    reason = "expired"


class GatewayMismatch(AuthError):
    """The batch names another gateway than the one that signed the request."""

    reason = "gateway_mismatch"


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """What a successful `verify_request` established."""

    gateway_id: str
    timestamp_ms: int
    #: verifier clock minus signed timestamp (positive: the request is that old)
    skew_ms: int


def _key(secret: bytes | str) -> bytes:
    return secret.encode() if isinstance(secret, str) else bytes(secret)


def signature(secret: bytes | str, gateway_id: str, timestamp_ms: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of scheme v1 (without the `v1=` prefix)."""
    mac = hmac.new(_key(secret), f"{gateway_id}.{timestamp_ms}.".encode(), hashlib.sha256)
    mac.update(body)
    return mac.hexdigest()


def sign_request(secret: bytes | str, gateway_id: str, body: bytes,
                 now_ms: int) -> dict[str, str]:
    """The three headers that authenticate `body` as sent by `gateway_id` at `now_ms`."""
    if not gateway_id or any(c in gateway_id for c in ".\r\n"):
        # "." separates the signed fields; CR/LF cannot travel in a header
        raise ValueError(f"gateway id {gateway_id!r} cannot be signed")
    return {
        GATEWAY_HEADER: gateway_id,
        TIMESTAMP_HEADER: str(int(now_ms)),
        SIGNATURE_HEADER: f"{SCHEME}={signature(secret, gateway_id, int(now_ms), body)}",
    }


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        # plain dicts are case-sensitive; HTTP header names are not
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    if value is None or not value.strip():
        raise MissingHeader(f"header {name} is missing")
    if len(value) > _MAX_HEADER:
        raise MissingHeader(f"header {name} is longer than {_MAX_HEADER} characters")
    return value.strip()


SecretsLookup = Mapping[str, bytes | str | None] | Callable[[str], bytes | str | None]


def verify_request(secrets: SecretsLookup, headers: Mapping[str, str], body: bytes,
                   now_ms: int, window_ms: int, *,
                   frame_gateway: str | None = None) -> SignedRequest:
    """Check the signing headers of a request against `body`; raise an `AuthError` if bad.

    `secrets` maps a gateway id to its secret (a mapping or a function; None: unknown).
    Checks, in order: headers present, gateway known, signature, timestamp within
    `window_ms` of `now_ms` (so "expired" is only ever said of an authentic request).
    With `frame_gateway` (the gateway id inside the body) it must be the signing gateway
    too (`check_gateway`).
    """
    gateway_id = _header(headers, GATEWAY_HEADER)
    raw_ts = _header(headers, TIMESTAMP_HEADER)
    raw_sig = _header(headers, SIGNATURE_HEADER)
    if not raw_ts.isascii() or not raw_ts.isdigit() or len(raw_ts) > 16:
        raise MissingHeader(f"{TIMESTAMP_HEADER} is not a millisecond timestamp")
    timestamp_ms = int(raw_ts)
    lookup = secrets.get if isinstance(secrets, Mapping) else secrets
    secret = lookup(gateway_id)
    if secret is None:
        raise UnknownGateway(f"gateway {gateway_id!r} is not registered")
    expected = signature(secret, gateway_id, timestamp_ms, body).encode()
    offered = [item.strip().partition("=") for item in raw_sig.split(",")]
    candidates = [value.strip() for scheme, sep, value in offered if sep and scheme == SCHEME]
    if not candidates:
        raise BadSignature(f"{SIGNATURE_HEADER} has no {SCHEME}= signature")
    # every candidate is compared, so the time taken does not tell which one was close
    ok = False
    for candidate in candidates:
        ok |= hmac.compare_digest(expected, candidate.lower().encode("ascii", "replace"))
    if not ok:
        raise BadSignature("signature does not match the body (wrong secret or altered "
                           "request)")
    skew = now_ms - timestamp_ms
    if skew > window_ms:
        raise StaleTimestamp(f"request signed {skew} ms ago, more than the {window_ms} ms "
                             "replay window", reason="expired")
    if -skew > window_ms:
        raise StaleTimestamp(f"request signed {-skew} ms in the future, more than the "
                             f"{window_ms} ms window (check the gateway's clock)",
                             reason="future")
    auth = SignedRequest(gateway_id=gateway_id, timestamp_ms=timestamp_ms, skew_ms=skew)
    if frame_gateway is not None:
        check_gateway(auth, frame_gateway)
    return auth


def check_gateway(auth: SignedRequest, frame_gateway: str) -> None:
    """Raise `GatewayMismatch` unless the batch was built by the gateway that signed it."""
    if not hmac.compare_digest(auth.gateway_id.encode(), frame_gateway.encode()):
        raise GatewayMismatch(f"request signed by {auth.gateway_id!r} carries a batch of "
                              f"gateway {frame_gateway!r}")
