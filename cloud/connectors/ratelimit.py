"""HTTP API etiquette, pure: Link pagination and rate-limit decisions (`now` is an argument).

`parse_link(header)` — RFC 8288 `Link` header -> {rel: url}, e.g. GitHub's
`<https://api.github.com/repositories/1/commits?page=2>; rel="next", <...>; rel="last"`.

`decide(status, headers, now_s)` — what to do after a response, as a `Verdict`:

    ok          2xx / 304: use it.  `pause_s` > 0 when the quota is spent
                (`X-RateLimit-Remaining: 0`): wait until `X-RateLimit-Reset` before the next
                request, so the API never has to refuse one.
    wait        rate-limited (429, or 403 with `X-RateLimit-Remaining: 0` or a "rate limit"
                message): retry the same request after `pause_s` — `Retry-After` (seconds
                or an HTTP date) when given, else until `X-RateLimit-Reset` (epoch seconds),
                else `SECONDARY_WAIT_S` (GitHub's advice for secondary limits).
    retry       408, 5xx and friends: retry with capped, jittered backoff.
    reject      other 4xx: the request itself is wrong (token, permissions, resource).

The header names are GitHub's (`X-RateLimit-Limit/-Remaining/-Reset/-Used/-Resource`), which
many APIs share; `Retry-After` is standard HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

__all__ = ["SECONDARY_WAIT_S", "Verdict", "decide", "parse_link", "retry_after_s"]

#: no header says how long: GitHub asks for at least a minute after a secondary limit
SECONDARY_WAIT_S = 60.0
#: a little past the reset instant: clocks differ by about that much
_RESET_SLACK_S = 1.0
_LINK = re.compile(r'<([^>]*)>\s*((?:;\s*[a-zA-Z*]+\s*=\s*(?:"[^"]*"|[^;,]*)\s*)*)')
_PARAM = re.compile(r';\s*([a-zA-Z*]+)\s*=\s*(?:"([^"]*)"|([^;,\s]*))')
_RETRY = frozenset({408, 425, 500, 502, 503, 504})


def parse_link(header: str | None) -> dict[str, str]:
    """{rel: url} of a Link header ({} when absent or empty)."""
    out: dict[str, str] = {}
    if not header:
        return out
    for m in _LINK.finditer(header):
        url, params = m.group(1), m.group(2)
        for p in _PARAM.finditer(params):
            if p.group(1).lower() == "rel":
                for rel in (p.group(2) or p.group(3) or "").split():
                    out.setdefault(rel.lower(), url)
    return out


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lower = name.lower()
        for k, v in headers.items():
            if k.lower() == lower:
                return v
    return value


def retry_after_s(headers: Mapping[str, str], now_s: float) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date), or None."""
    value = _header(headers, "Retry-After")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now_s)
    except (TypeError, ValueError):
        return None


def _reset_in_s(headers: Mapping[str, str], now_s: float) -> float | None:
    value = _header(headers, "X-RateLimit-Reset")
    if not value:
        return None
    try:
        return max(0.0, float(value) - now_s + _RESET_SLACK_S)
    except ValueError:
        return None


def _remaining(headers: Mapping[str, str]) -> int | None:
    value = _header(headers, "X-RateLimit-Remaining")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Verdict:
    action: str  # "ok" | "wait" | "retry" | "reject"
    pause_s: float = 0.0
    why: str = ""


def decide(status: int, headers: Mapping[str, str], now_s: float, *,
           body_hint: str = "") -> Verdict:
    """See the module docstring.  `body_hint`: the error message, if any (GitHub says
    "secondary rate limit" there)."""
    remaining = _remaining(headers)
    if 200 <= status < 300 or status == 304:
        if remaining == 0:
            return Verdict("ok", _reset_in_s(headers, now_s) or 0.0, "quota spent")
        return Verdict("ok")
    limited = status == 429 or (status == 403 and (
        remaining == 0 or "rate limit" in body_hint.lower()
        or _header(headers, "Retry-After") is not None))
    if limited:
        after = retry_after_s(headers, now_s)
        if after is not None:
            return Verdict("wait", after, "Retry-After")
        if remaining == 0:
            reset = _reset_in_s(headers, now_s)
            if reset is not None:
                return Verdict("wait", reset, "X-RateLimit-Reset")
        return Verdict("wait", SECONDARY_WAIT_S, "secondary rate limit")
    if status in _RETRY or status >= 500:
        return Verdict("retry", 0.0, f"HTTP {status}")
    return Verdict("reject", 0.0, f"HTTP {status}")
