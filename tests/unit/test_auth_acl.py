from __future__ import annotations

import pytest

from gateway.auth.acl import ANONYMOUS, DEVICE, OPERATOR, Acl, AclSettings, PublishGrant

acl = Acl()


@pytest.mark.parametrize("topic", [
    "factory/plant_a/line1/d1", "devices/d1/temperature", "devices/d1", "factory/d1/x/y",
])
def test_device_publishes_under_its_own_topics_as_readings(topic: str) -> None:
    assert acl.publish(DEVICE, "d1", topic) == PublishGrant(reading=True, device_hint="d1")


@pytest.mark.parametrize("topic", [
    "factory/plant_a/line1/d2", "devices/d2/temperature", "alerts/x", "factory/a/b/d1/extra",
    "$SYS/x", "d1", "factory/d2/x",
])
def test_device_refused_elsewhere(topic: str) -> None:
    assert acl.publish(DEVICE, "d1", topic) is None


def test_operator_publishes_control_traffic_anywhere_but_dollar_topics() -> None:
    assert acl.publish(OPERATOR, "ops", "alerts/ack/line1") == PublishGrant(False, None)
    assert acl.publish(OPERATOR, "ops", "factory/a/b/d1") == PublishGrant(False, None)
    assert acl.publish(OPERATOR, "ops", "$SYS/x") is None


def test_anonymous_hint_comes_from_the_username_position() -> None:
    assert acl.publish(ANONYMOUS, None, "factory/a/b/d7") == PublishGrant(True, "d7")
    assert acl.publish(ANONYMOUS, None, "devices/d8/temp") == PublishGrant(True, "d8")
    assert acl.publish(ANONYMOUS, None, "alerts/x") is None
    assert acl.publish(ANONYMOUS, None, "devices//temp") == PublishGrant(True, None)


@pytest.mark.parametrize("role,user,flt,ok", [
    (OPERATOR, "ops", "alerts/#", True),
    (OPERATOR, "ops", "#", True),
    (DEVICE, "d1", "alerts/#", False),
    (DEVICE, "d1", "#", False),
    (DEVICE, "d1", "+/ack", False),
    (DEVICE, "d1", "devices/d1/cmd", True),
    (DEVICE, "d1", "devices/d1/#", True),
    (DEVICE, "d1", "devices/d2/cmd", False),
    (DEVICE, "d1", "devices/+/cmd", False),
    (DEVICE, "d1", "factory/#", False),
    (ANONYMOUS, None, "factory/#", True),
    (ANONYMOUS, None, "#", False),
    (ANONYMOUS, None, "alerts/line1", False),
    (ANONYMOUS, None, "$SYS/#", False),
])
def test_subscribe(role: str, user: str | None, flt: str, ok: bool) -> None:
    assert acl.subscribe(role, user, flt) is ok


def test_patterns_are_configurable() -> None:
    custom = Acl(AclSettings(device_publish=("site/{username}/+",),
                             device_subscribe=("cmd/{username}",),
                             operator_only=("alerts/#", "audit/#")))
    assert custom.publish(DEVICE, "d1", "site/d1/temp") == PublishGrant(True, "d1")
    assert custom.publish(DEVICE, "d1", "factory/a/b/d1") is None
    assert custom.subscribe(DEVICE, "d1", "cmd/d1") is True
    assert custom.subscribe(ANONYMOUS, None, "audit/x") is False


def test_settings_problems_name_the_bad_pattern() -> None:
    bad = AclSettings(device_publish=("a/#/b", "x/pre{username}"))
    problems = dict(bad.problems())
    assert "device_publish[0]" in problems
    assert "device_publish[1]" in problems
    assert AclSettings().problems() == []
