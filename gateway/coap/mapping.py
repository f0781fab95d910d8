"""Pure CoAP decisions: content-format → content-type hint, outcome → response code, limits.

Nothing here touches a socket or an event loop, so every rule is unit-tested directly.

Content-Format numbers and the hint handed to the pipeline (the pipeline decodes; the CoAP
ingress never parses a payload):

=========================  ================================  =================================
Content-Format             hint (`Origin.content_type`)      what the decoder does with it
=========================  ================================  =================================
absent                     None                              sniffs: JSON, msgpack, number
0   text/plain             "text/plain"                      the same (a bare number, JSON)
50  application/json       "application/json"                JSON object or array
60  application/cbor       "application/cbor"                CBOR map or array
configured (65001)         "application/msgpack"             msgpack map or array
any other registered       its media type                    refused if it cannot read it
any other number           "application/x-coap-cf-<n>"       (`unknown_encoding`: 4.15)
=========================  ================================  =================================

msgpack has no registered CoAP Content-Format and aiocoap 0.4.17 knows none, so the number
a sensor uses for it is configured (`CoapSettings.msgpack_content_formats`, default 65001
from the experimental range 65000-65535).  Should a later aiocoap register
`application/msgpack` or `application/x-msgpack`, that number is accepted as well.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiocoap.numbers.codes import Code
from aiocoap.numbers.contentformat import ContentFormat

JSON = "application/json"
CBOR = "application/cbor"
MSGPACK = "application/msgpack"
TEXT = "text/plain"

#: experimental-range Content-Format fieldlink sensors use for msgpack unless configured
DEFAULT_MSGPACK_CONTENT_FORMAT = 65001

_FIXED: dict[int, str] = {0: TEXT, 50: JSON, 60: CBOR}


def _registered_msgpack_formats() -> set[int]:
    found: set[int] = set()
    for media_type in ("application/msgpack", "application/x-msgpack"):
        try:
            found.add(int(ContentFormat.by_media_type(media_type)))
        except (KeyError, ValueError):
            continue
    return found


_REGISTERED_MSGPACK = _registered_msgpack_formats()


def content_type_for(content_format: int | None,
                     msgpack_formats: Iterable[int] = (DEFAULT_MSGPACK_CONTENT_FORMAT,)
                     ) -> str | None:
    """The content-type hint for a request's Content-Format option (see the module table)."""
    if content_format is None:
        return None
    number = int(content_format)
    if number in _FIXED:
        return _FIXED[number]
    if number in _REGISTERED_MSGPACK or number in set(msgpack_formats):
        return MSGPACK
    try:
        known = ContentFormat(number)
    except ValueError:
        known = None
    if known is not None and known.is_known() and known.media_type:
        media_type = str(known.media_type)
        return media_type if not known.encoding or known.encoding == "identity" \
            else f"{media_type}; encoding={known.encoding}"
    return f"application/x-coap-cf-{number}"


#: dead-letter reasons the pipeline reports that deserve a more specific code than 4.00
_REASON_CODES: dict[str, Code] = {
    "unknown_device": Code.FORBIDDEN,
    "forbidden": Code.FORBIDDEN,
    "device_mismatch": Code.FORBIDDEN,
    "unauthorized": Code.UNAUTHORIZED,
    "oversize": Code.REQUEST_ENTITY_TOO_LARGE,
    # the decoder's reason for a content type it does not read
    "unknown_encoding": Code.UNSUPPORTED_CONTENT_FORMAT,
    "unsupported_content_type": Code.UNSUPPORTED_CONTENT_FORMAT,
    "unsupported_content_format": Code.UNSUPPORTED_CONTENT_FORMAT,
}


def code_for_rejection(reason: str) -> Code:
    """The response code for a payload the pipeline refused with `reason`.

    `unknown_device` (the device policy says reject) and `device_mismatch` (the payload names
    another device than the resource) are 4.03, `unauthorized` 4.01, `oversize` 4.13, a
    content type the decoder does not read (`unknown_encoding`) 4.15; every other reason
    (malformed, invalid, …) is 4.00.
    """
    return _REASON_CODES.get(reason, Code.BAD_REQUEST)


#: a diagnostic payload must fit in one datagram next to the headers
MAX_DIAGNOSTIC_BYTES = 256


def diagnostic(reason: str, detail: str = "") -> bytes:
    """RFC 7252 §5.5.2 diagnostic payload: UTF-8 text, reason first, cut to one datagram."""
    text = f"{reason}: {detail}" if detail else reason
    raw = text.encode("utf-8", errors="replace")
    if len(raw) <= MAX_DIAGNOSTIC_BYTES:
        return raw
    return raw[:MAX_DIAGNOSTIC_BYTES - 3].decode("utf-8", errors="ignore").encode() + b"..."


def exceeds_limit(payload_len: int, max_payload_bytes: int, *, block_number: int | None = None,
                  block_size: int | None = None, size1: int | None = None) -> bool:
    """Whether a request (or the block-wise transfer it is part of) is over the limit.

    For a Block1 transfer the decision is taken as early as possible: the announced total
    (Size1 option) or the offset reached so far, so an oversize upload is refused at the
    first block that crosses the limit rather than after it was assembled in memory.
    """
    if size1 is not None and size1 > max_payload_bytes:
        return True
    offset = block_number * block_size if block_number is not None and block_size else 0
    return offset + payload_len > max_payload_bytes
