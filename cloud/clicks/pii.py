"""Personal data scrubbing for click events — pure, no I/O.

What is never stored (in `web_events`, in the dead-letter topic, in results):

* keys named like an email address or phone number, at any depth of a mapping: after
  lower-casing and removing `-`, `_`, `.` and spaces, a key containing `email`, `phone`,
  `telephone`, `msisdn` or `mobilenumber` is dropped with its value (`E-Mail`, `user_email`,
  `phoneNumber`, `contact.phone` ...);
* string values that contain an email address or a phone number: each match is replaced by
  `[email]` / `[phone]` (the rest of the string is kept);
* IP addresses beyond the network: `truncate_ip` keeps the /24 of an IPv4 address and the
  /48 of an IPv6 address (`192.168.1.77` -> `192.168.1.0`).

Phone numbers are told from other digit runs conservatively: 7 to 15 digits, and either a
leading `+` or at least one separator (space, `-`, `.`, parentheses) — so ids such as
`123456789` stay, while dates (`2024-01-15`), times, dotted quads and version strings are
never taken for phone numbers.  `scrub_text` is used on anything that could not be parsed,
so even a dead-lettered body carries no address.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Callable
from typing import Any

__all__ = ["PiiCounts", "TooDeep", "hash_identifier", "is_pii_key", "looks_like_pii", "scrub",
           "scrub_text", "truncate_ip"]

_KEY_MARKERS = ("email", "phone", "telephone", "msisdn", "mobilenumber")
_KEY_STRIP = re.compile(r"[-_.\s]")
EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
                   r"[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+")
_PHONE_CANDIDATE = re.compile(r"(?<![\w+])\+?\(?\d[\d\s().-]{5,}\d(?![\w])")
_DATE_LIKE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{1,2}:\d{2}|\d{2}/\d{2}/\d{4}")
_DOTTED = re.compile(r"\d{1,3}(?:\.\d{1,3}){2,}")
_SEVEN_DIGITS = re.compile(r"\d(?:\D*\d){6}")
_IPV4 = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})")


class PiiCounts:
    """What a scrub removed, for metrics: keys dropped and values redacted, by kind."""

    __slots__ = ("keys", "emails", "phones")

    def __init__(self) -> None:
        self.keys = 0
        self.emails = 0
        self.phones = 0

    def total(self) -> int:
        return self.keys + self.emails + self.phones


@functools.lru_cache(maxsize=4096)
def is_pii_key(key: str) -> bool:
    # cached: the same few dozen property names come with every event
    norm = _KEY_STRIP.sub("", key.lower())
    return any(marker in norm for marker in _KEY_MARKERS)


def _is_phone(candidate: str) -> bool:
    digits = sum(c.isdigit() for c in candidate)
    if not 7 <= digits <= 15:
        return False
    if _DATE_LIKE.search(candidate) or _DOTTED.fullmatch(candidate.strip()):
        return False
    return candidate.startswith("+") or any(c in candidate for c in " -.()")


def scrub_text(text: str, counts: PiiCounts | None = None) -> str:
    """`text` with every email address and phone number replaced by a marker."""
    if "@" in text:
        text, n = EMAIL.subn("[email]", text)
        if counts is not None:
            counts.emails += n
    if not _SEVEN_DIGITS.search(text):
        return text  # the common case: too few digits for any phone number

    def phone(m: re.Match[str]) -> str:
        if _is_phone(m.group(0)):
            if counts is not None:
                counts.phones += 1
            return "[phone]"
        return m.group(0)

    return _PHONE_CANDIDATE.sub(phone, text)


def looks_like_pii(text: str) -> bool:
    """Whether the whole of `text` is an email address or a phone number."""
    text = text.strip()
    if EMAIL.fullmatch(text):
        return True
    m = _PHONE_CANDIDATE.fullmatch(text)
    return m is not None and _is_phone(text)


class TooDeep(ValueError):
    """A value nested deeper than `scrub`'s `max_depth`."""


def scrub(value: Any, counts: PiiCounts | None = None, *,
          keep: Callable[[str], bool] | None = None, max_depth: int = 64,
          _depth: int = 0) -> Any:
    """A copy of a JSON value without personal data (see the module docstring).

    `keep(key)` names keys of the top-level mapping whose string values are left as they are
    (the caller handles them, e.g. `ip`, `user_agent`).  Mappings and lists nested deeper
    than `max_depth` raise `TooDeep`.
    """
    if isinstance(value, str):
        return scrub_text(value, counts)
    if _depth >= max_depth and isinstance(value, dict | list):
        raise TooDeep(f"nested deeper than {max_depth} levels")
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            key = str(k)
            if is_pii_key(key):
                if counts is not None:
                    counts.keys += 1
                continue
            if _depth == 0 and keep is not None and keep(key) and isinstance(v, str):
                out[key] = v
                continue
            out[key] = scrub(v, counts, max_depth=max_depth, _depth=_depth + 1)
        return out
    if isinstance(value, list):
        return [scrub(v, counts, max_depth=max_depth, _depth=_depth + 1) for v in value]
    return value


def truncate_ip(text: str) -> str | None:
    """The network part of an IP address (/24 IPv4, /48 IPv6); None if it is not one."""
    m = _IPV4.fullmatch(text)
    if m is not None:  # the common case, without ipaddress's parsing
        octets = [int(g) for g in m.groups()]
        if all(o <= 255 for o in octets) and not any(len(g) > 1 and g[0] == "0"
                                                     for g in m.groups()):
            return f"{octets[0]}.{octets[1]}.{octets[2]}.0"
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


def hash_identifier(value: str, key: bytes) -> str:
    """A stable pseudonym for an identifier that is personal data (HMAC-SHA256, 128 bits)."""
    return "h:" + hmac.new(key, value.strip().lower().encode(), hashlib.sha256).hexdigest()[:32]
