"""Click events: validation, PII scrubbing, batch parsing (pure code)."""

from __future__ import annotations

import json

import pytest

from cloud.clicks.events import (
    Rejected,
    format_ts,
    normalize,
    parse_batch,
    parse_timestamp,
    scrubbed_copy,
)
from cloud.clicks.pii import (
    PiiCounts,
    hash_identifier,
    is_pii_key,
    looks_like_pii,
    scrub,
    scrub_text,
    truncate_ip,
)

NOW = 1_705_314_645_000  # 2024-01-15T10:30:45Z


def seed_event(**over: object) -> dict[str, object]:
    event: dict[str, object] = {
        "event_id": "5b0b6f1e-4a7e-4bb9-9a51-2c8f1f7e9d10", "user_id": "12345",
        "session_id": "sess_abc123", "event_type": "click",
        "timestamp": "2024-01-15T10:30:45Z",
        "properties": {"button_text": "Add to Cart", "product_id": "prod_999", "price": 29.99},
        "context": {"ip": "192.168.1.1", "user_agent": "Mozilla/5.0 (X11; Linux x86_64) "
                    "AppleWebKit/537.36 Chrome/120.0.0.0 Safari/537.36", "locale": "en_US"}}
    event.update(over)
    return event


def test_the_seed_event_is_accepted_with_its_ip_truncated() -> None:
    e = normalize(seed_event(), source="web", now_ms=NOW)
    assert (e.event_id, e.user_id, e.session_id, e.event_type) == (
        "5b0b6f1e-4a7e-4bb9-9a51-2c8f1f7e9d10", "12345", "sess_abc123", "click")
    assert e.ts_ms == NOW
    assert e.properties == {"button_text": "Add to Cart", "product_id": "prod_999",
                            "price": 29.99}
    assert e.context["ip"] == "192.168.1.0"
    assert e.context["user_agent"].startswith("Mozilla/5.0")
    body = json.loads(e.to_json())
    assert body["timestamp"] == "2024-01-15T10:30:45.000Z"
    assert body["source"] == "web" and body["received_ms"] == NOW


@pytest.mark.parametrize("key", ["email", "E-Mail", "user_email", "emailAddress", "phone",
                                 "phoneNumber", "phone_number", "Telephone", "msisdn",
                                 "mobile_number", "contact.email"])
def test_pii_named_keys_are_dropped_at_any_depth(key: str) -> None:
    counts = PiiCounts()
    e = normalize(seed_event(properties={key: "x", "nested": {key: "y", "ok": 1},
                                         "items": [{key: "z", "sku": "a"}]},
                             context={key: "w", "locale": "de_DE"}),
                  source="web", now_ms=NOW, counts=counts)
    assert e.properties == {"nested": {"ok": 1}, "items": [{"sku": "a"}]}
    assert e.context == {"locale": "de_DE"}
    assert counts.keys == 4


def test_email_and_phone_values_are_redacted_everywhere() -> None:
    counts = PiiCounts()
    e = normalize(seed_event(properties={
        "note": "write to bob.smith@example.co.uk or call +1 (555) 123-4567",
        "list": ["555-123-4567", "keep me"], "order_id": "123456789",
        "when": "2024-01-15T10:30:45Z", "version": "1.2.3", "ip_like": "10.0.0.1"}),
        source="web", now_ms=NOW, counts=counts)
    assert e.properties == {"note": "write to [email] or call [phone]",
                            "list": ["[phone]", "keep me"], "order_id": "123456789",
                            "when": "2024-01-15T10:30:45Z", "version": "1.2.3",
                            "ip_like": "10.0.0.1"}
    assert (counts.emails, counts.phones) == (1, 2)


def test_ip_addresses_are_truncated_and_garbage_ips_dropped() -> None:
    assert truncate_ip("192.168.1.77") == "192.168.1.0"
    assert truncate_ip("2001:db8:abcd:12:1::5") == "2001:db8:abcd::"
    assert truncate_ip("::ffff:10.1.2.3") == "10.1.2.0"
    assert truncate_ip("not an ip") is None
    e = normalize(seed_event(context={"ip": "bob@example.com"}), source="web", now_ms=NOW)
    assert "ip" not in e.context
    e = normalize(seed_event(context={"ip": "2a00:1450:4001:82a::200e"}), source="w",
                  now_ms=NOW)
    assert e.context["ip"] == "2a00:1450:4001::"


def test_identifiers_that_are_pii_are_pseudonymised_or_rejected() -> None:
    with pytest.raises(Rejected) as info:
        normalize(seed_event(user_id="bob@example.com"), source="web", now_ms=NOW)
    assert info.value.reason == "pii_identifier"
    key = b"k" * 32
    e = normalize(seed_event(user_id="Bob@Example.com", session_id="+44 20 7946 0958"),
                  source="web", now_ms=NOW, hash_key=key)
    assert e.user_id == hash_identifier("bob@example.com", key)
    assert e.user_id.startswith("h:") and "@" not in e.user_id
    assert e.session_id is not None and e.session_id.startswith("h:")
    # integers are ids, not phone numbers
    assert normalize(seed_event(user_id=12345), source="w", now_ms=NOW).user_id == "12345"


@pytest.mark.parametrize(("over", "reason"), [
    ({"event_id": ""}, "bad_event_id"),
    ({"event_id": "has space"}, "bad_event_id"),
    ({"event_id": None}, "bad_event_id"),
    ({"user_id": None}, "bad_user_id"),
    ({"user_id": ""}, "bad_user_id"),
    ({"user_id": ["x"]}, "bad_user_id"),
    ({"session_id": 3.5}, "bad_session_id"),
    ({"event_type": "add to cart"}, "bad_event_type"),
    ({"event_type": ""}, "bad_event_type"),
    ({"timestamp": "yesterday"}, "bad_timestamp"),
    ({"timestamp": "2024-01-15T10:30:45"}, "bad_timestamp"),
    ({"timestamp": "1999-12-31T23:59:59Z"}, "bad_timestamp"),
    ({"timestamp": "2024-01-15T11:30:45Z"}, "timestamp_in_future"),
    ({"properties": [1, 2]}, "bad_properties"),
    ({"context": "ctx"}, "bad_context"),
])
def test_invalid_events_are_rejected_with_a_reason(over: dict[str, object],
                                                   reason: str) -> None:
    with pytest.raises(Rejected) as info:
        normalize(seed_event(**over), source="web", now_ms=NOW)
    assert info.value.reason == reason
    assert info.value.detail


def test_too_deep_and_not_an_object() -> None:
    deep: dict[str, object] = {}
    node = deep
    for _ in range(20):
        node["a"] = {}
        node = node["a"]  # type: ignore[assignment]
    with pytest.raises(Rejected) as info:
        normalize(seed_event(properties=deep), source="w", now_ms=NOW)
    assert info.value.reason == "too_deep"
    with pytest.raises(Rejected) as info:
        normalize([1], source="w", now_ms=NOW)
    assert info.value.reason == "not_an_object"


def test_timestamps() -> None:
    assert parse_timestamp("2024-01-15T10:30:45Z") == NOW
    assert parse_timestamp("2024-01-15T11:30:45+01:00") == NOW
    assert parse_timestamp("2024-01-15T10:30:45.123Z") == NOW + 123
    assert parse_timestamp(NOW) == NOW
    assert format_ts(NOW + 7) == "2024-01-15T10:30:45.007Z"
    for bad in (True, float("nan"), "x" * 50, None):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


def test_parse_batch_shapes() -> None:
    events, key = parse_batch(json.dumps({"batch": [seed_event()], "writeKey": "wk"}).encode(),
                              max_events=10)
    assert len(events) == 1 and key == "wk"
    events, key = parse_batch(json.dumps([seed_event(), seed_event()]).encode(), max_events=10)
    assert len(events) == 2 and key is None
    for body, reason in ((b"{not json", "bad_json"), (b'{"batch": 3}', "bad_batch"),
                         (b'{"batch": [NaN]}', "bad_json"), (b"\xff\xfe", "bad_json"),
                         (json.dumps([1] * 11).encode(), "too_many_events")):
        with pytest.raises(Rejected) as info:
            parse_batch(body, max_events=10)
        assert info.value.reason == reason


def test_dead_letter_copies_carry_no_pii() -> None:
    raw = seed_event(user_id="bob@example.com", properties={"email": "a@b.c",
                                                            "n": "call 555-123-4567"})
    text = scrubbed_copy(raw).decode()
    assert "bob@example.com" not in text and "a@b.c" not in text
    assert "555-123-4567" not in text and "192.168.1.1" not in text
    assert json.loads(text)["context"]["ip"] == "192.168.1.0"


def test_pii_helpers() -> None:
    assert is_pii_key("E_Mail") and is_pii_key("home-phone") and not is_pii_key("product")
    assert looks_like_pii("a@b.io") and looks_like_pii("+49 151 1234 5678")
    assert not looks_like_pii("12345") and not looks_like_pii("sess_abc123")
    assert scrub_text("short 12-34") == "short 12-34"
    assert scrub({"a": [{"Email": 1}]}) == {"a": [{}]}
