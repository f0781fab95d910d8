"""Readings and events as InfluxDB line protocol, built by hand (pure).

Schema (millisecond timestamps; tags in key order, as InfluxDB sorts them):

    <measurement>,device_id=..,facility=..,gateway=..,line=..,unit=..,zone=..
        value=<float>,quality="good"[,battery=<float>][,seq=<int>i][,flags=<int>i]  <ts_ms>

    window_<measurement>,device_id=<window key>,facility=..,gateway=..,line=..,unit=..,
        window=<name>,zone=..  count=<int>i,min=..,max=..,mean=..,p95=..,...,late=<int>i,
        size_ms=<int>i,closed_by="watermark"[,battery_min=<float>]  <window start>

    alerts,device_id=..,gateway=..,rule_id=..,severity=..,transition=..
        dedup_key="..",incarnation=<int>i,state="..",message="..",notifications=<int>i,
        fired_at_ms=<int>i,rule_kind=".."[,acked_by=".."][,acked_at_ms=..i]
        [,resolved_at_ms=..i][,reason=".."],values="<JSON>"  <transition time>

    gateway_status,gateway=..  backlog_age_ms=..i,backlog_bytes=..i,backlog_rows=..i,
        config_version="..",deadletters_<reason>=..i,drops_<reason>=..i,
        firmware_version="..",uplink_down_since_ms=..i,uplink_state=".."  <report time>
        (gateway.statusreport body; a field whose value is None is left out; the tag is the
        batch's authenticated gateway id, not the body's)

A tag that is unset (or empty) is left out.  Measurement-per-type keeps each kind's fields
apart; the tags are the ones dashboards filter by.

Idempotency: InfluxDB keeps one point per (measurement, tag set, timestamp) and a later write
overwrites its fields, so a reading delivered twice is stored once.  Two DIFFERENT readings
of one device and measurement with the same millisecond timestamp also collapse into one
point (the later write wins); `seq` is a field, not a tag, on purpose: as a tag it would keep
both, but give every reading its own series (unbounded cardinality).

Escaping (InfluxDB 1.x rules, checked against influxd 1.8): commas and spaces in measurements;
commas, spaces and equals signs in tag values; backslashes and double quotes in string
fields.  A backslash in a tag value or measurement is literal, so one that ends the value or
comes before a character that needs escaping (or a double quote) cannot be written faithfully,
nor can a line break in a tag or measurement, nor a measurement starting with '#' (a comment
line) or a non-finite number: `build_*` raise `PointRejected` (reason "unrepresentable") and
the item is dead-lettered instead of being stored altered.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from cloud.errors import PointRejected
from edge.model import Event, Reading

__all__ = ["LineBuilder", "escape_measurement", "escape_string", "escape_tag"]

_MEASUREMENT = str.maketrans({",": "\\,", " ": "\\ "})
_TAG = str.maketrans({",": "\\,", " ": "\\ ", "=": "\\="})
_STRING = str.maketrans({"\\": "\\\\", '"': '\\"'})
_BAD_TAG = re.compile(r'\\(?=[,= "]|$)|[\n\r]')
_BAD_MEASUREMENT = re.compile(r'\\(?=[, "]|$)|[\n\r]|^#')

_isfinite = math.isfinite


def _unrepresentable(what: str, value: str) -> PointRejected:
    return PointRejected(f"{what} {value!r} cannot be written as InfluxDB line protocol",
                         reason="unrepresentable")


def escape_measurement(name: str) -> str:
    if not name or _BAD_MEASUREMENT.search(name):
        raise _unrepresentable("measurement", name)
    return name.translate(_MEASUREMENT)


def escape_tag(value: str) -> str:
    if _BAD_TAG.search(value):
        raise _unrepresentable("tag value", value)
    return value.translate(_TAG)


def escape_string(value: str) -> str:
    """A string field value, quotes included."""
    return '"' + value.translate(_STRING) + '"'


def _float(name: str, v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise PointRejected(f"field {name} is {type(v).__name__}, not a number",
                            reason="unrepresentable")
    f = float(v)
    if not _isfinite(f):
        raise PointRejected(f"field {name} is {f}", reason="unrepresentable")
    return repr(f)


def _int(name: str, v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float) or \
            (isinstance(v, float) and not v.is_integer()):
        raise PointRejected(f"field {name} is {v!r}, not an integer", reason="unrepresentable")
    return f"{int(v)}i"


def _tagset(pairs: list[tuple[str, str | None]]) -> str:
    """`,k=v,...` of the pairs with a value (keys must already be sorted)."""
    return "".join(f",{k}={escape_tag(v)}" for k, v in pairs if v)


class LineBuilder:
    """Builds lines; caches the escaped "measurement,tags" prefix of each series.

    Series repeat (a device sends every second), so the prefix cache makes a reading's line a
    dictionary lookup plus its fields.  The cache is dropped when it reaches `max_series`.
    """

    def __init__(self, *, max_series: int = 200_000) -> None:
        self.max_series = max_series
        self._prefixes: dict[tuple[Any, ...], str] = {}
        self._quality: dict[str, str] = {}

    def _reading_prefix(self, r: Reading, gateway: str) -> str:
        key = (r.measurement, r.device_id, r.facility, gateway, r.line, r.unit, r.zone)
        prefix = self._prefixes.get(key)
        if prefix is None:
            if len(self._prefixes) >= self.max_series:
                self._prefixes.clear()
            prefix = escape_measurement(r.measurement) + _tagset([
                ("device_id", r.device_id), ("facility", r.facility), ("gateway", gateway),
                ("line", r.line), ("unit", r.unit), ("zone", r.zone)])
            self._prefixes[key] = prefix
        return prefix

    def reading(self, r: Reading, gateway: str) -> str:
        """The line of one reading; PointRejected if it cannot be written faithfully."""
        # the hot path of the sink: one cache lookup and one f-string per reading
        prefix = self._prefixes.get((r.measurement, r.device_id, r.facility, gateway, r.line,
                                     r.unit, r.zone))
        if prefix is None:
            prefix = self._reading_prefix(r, gateway)
        v = r.value
        v_text = repr(v) if type(v) is float and _isfinite(v) else _float("value", v)
        quality = self._quality.get(r.quality)
        if quality is None:
            quality = self._quality[r.quality] = escape_string(r.quality)
        b = r.battery_voltage
        if b is None:
            extra = ""
        elif type(b) is float and _isfinite(b):
            extra = f",battery={b!r}"
        else:
            extra = f",battery={_float('battery', b)}"
        if r.seq is not None:
            extra += f",seq={r.seq}i"
        if r.flags:
            extra += f",flags={r.flags}i"
        return f"{prefix} value={v_text},quality={quality}{extra} {r.ts_ms}"

    def event(self, e: Event, gateway: str) -> str:
        if e.kind == "aggregate":
            return self.aggregate(e, gateway)
        if e.kind == "alert":
            return self.alert(e, gateway)
        if e.kind == "gateway_status":
            return self.gateway_status(e, gateway)
        raise PointRejected(f"unknown event kind {e.kind!r}", reason="unknown_event_kind")

    def aggregate(self, e: Event, gateway: str) -> str:
        """A window aggregate (edge.windows body) as a `window_<measurement>` point."""
        b = e.body
        try:
            measurement = str(b["measurement"])
            aggregates = b["aggregates"]
            tags = b.get("tags") or {}
            if not isinstance(aggregates, dict) or not isinstance(tags, dict):
                raise TypeError("aggregates and tags must be mappings")
        except (KeyError, TypeError) as exc:
            raise PointRejected(f"aggregate event body is malformed: {exc!r}",
                                reason="malformed_event") from exc
        prefix = escape_measurement("window_" + measurement) + _tagset([
            ("device_id", e.device_id), ("facility", _opt_str(tags.get("facility"))),
            ("gateway", gateway), ("line", _opt_str(tags.get("line"))),
            ("unit", _opt_str(b.get("unit"))), ("window", _opt_str(b.get("window"))),
            ("zone", _opt_str(tags.get("zone")))])
        fields = []
        for name in sorted(aggregates):
            v = aggregates[name]
            if v is None or (isinstance(v, float) and not _isfinite(v)):
                continue  # e.g. the stddev of one value: absent, not a rejection
            if not _FIELD_NAME.fullmatch(str(name)):
                raise PointRejected(f"aggregate name {name!r} is not a field name",
                                    reason="malformed_event")
            fields.append(f"{name}={_int(name, v) if name == 'count' else _float(name, v)}")
        for name in ("late", "size_ms"):
            if b.get(name) is not None:
                fields.append(f"{name}={_int(name, b[name])}")
        if b.get("closed_by") is not None:
            fields.append(f"closed_by={escape_string(str(b['closed_by']))}")
        if b.get("battery_min") is not None:
            fields.append(f"battery_min={_float('battery_min', b['battery_min'])}")
        if not fields:
            raise PointRejected("aggregate event without any value", reason="malformed_event")
        return f"{prefix} {','.join(fields)} {e.ts_ms}"

    def alert(self, e: Event, gateway: str) -> str:
        """An alert transition (edge.rules body) as an `alerts` point."""
        b = e.body
        try:
            prefix = "alerts" + _tagset([
                ("device_id", e.device_id), ("gateway", gateway),
                ("rule_id", _opt_str(b.get("rule_id"))),
                ("severity", _opt_str(b.get("severity"))),
                ("transition", _opt_str(b.get("transition")))])
            fields = [f"dedup_key={escape_string(str(b['dedup_key']))}",
                      f"incarnation={_int('incarnation', b['incarnation'])}",
                      f"state={escape_string(str(b['state']))}",
                      f"message={escape_string(str(b.get('message') or ''))}",
                      f"notifications={_int('notifications', b.get('notifications') or 0)}",
                      f"fired_at_ms={_int('fired_at_ms', b['fired_at_ms'])}",
                      f"rule_kind={escape_string(str(b.get('kind') or ''))}"]
        except (KeyError, TypeError) as exc:
            raise PointRejected(f"alert event body is malformed: {exc!r}",
                                reason="malformed_event") from exc
        for name in ("acked_at_ms", "resolved_at_ms"):
            if b.get(name) is not None:
                fields.append(f"{name}={_int(name, b[name])}")
        for name in ("acked_by", "reason"):
            if b.get(name) is not None:
                fields.append(f"{name}={escape_string(str(b[name]))}")
        values = json.dumps(b.get("values") or {}, default=str, sort_keys=True)
        fields.append(f"values={escape_string(values)}")
        return f"{prefix} {','.join(fields)} {e.ts_ms}"


    def gateway_status(self, e: Event, gateway: str) -> str:
        """A gateway's status record (gateway.statusreport body) as a `gateway_status` point:
        integers as integers, counters by reason flattened to `drops_<reason>` and
        `deadletters_<reason>`, None left out (unknown is not 0)."""
        b = e.body
        fields: dict[str, str] = {}
        try:
            for name in _STATUS_INTS:
                if b.get(name) is not None:
                    fields[name] = _int(name, b[name])
            for name in _STATUS_STRINGS:
                if b.get(name) is not None:
                    fields[name] = escape_string(str(b[name]))
            for prefix in ("drops", "deadletters"):
                counts = b.get(prefix) or {}
                if not isinstance(counts, dict):
                    raise TypeError(f"{prefix} must be a mapping")
                for reason, n in counts.items():
                    name = f"{prefix}_{reason}"
                    if not _STATUS_FIELD.fullmatch(name):
                        raise PointRejected(f"{prefix} reason {reason!r} is not a field name",
                                            reason="malformed_event")
                    fields[name] = _int(name, n)
        except (TypeError, AttributeError) as exc:
            raise PointRejected(f"gateway_status event body is malformed: {exc!r}",
                                reason="malformed_event") from exc
        if not fields:
            raise PointRejected("gateway_status event without any field",
                                reason="malformed_event")
        body = ",".join(f"{k}={v}" for k, v in sorted(fields.items()))
        return f"gateway_status{_tagset([('gateway', gateway)])} {body} {e.ts_ms}"


_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_STATUS_FIELD = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,127}")
_STATUS_INTS = ("backlog_rows", "backlog_bytes", "backlog_age_ms", "uplink_down_since_ms")
_STATUS_STRINGS = ("firmware_version", "config_version", "uplink_state")


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)
