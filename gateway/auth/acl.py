"""Who may publish and subscribe where on the gateway's MQTT broker.  Pure.

Three roles:

``device``  (an account of role `device`; its username is its device id)
    publishes only to topics matching one of `device_publish` with `{username}` replaced by
    its own username (default `factory/+/+/{username}`, `devices/{username}/#`,
    `factory/{username}/#`).  Everything it publishes there is a *reading*: it goes to the
    ingest pipeline with the username as device hint.  It subscribes only to filters that lie
    entirely inside one of `device_subscribe` (default `devices/{username}/#`, where
    actuator commands for it arrive), and never to an operator-only filter.

``operator`` (an account of role `operator`: dashboards, actuators, alert acknowledgement)
    publishes and subscribes anywhere except `$`-topics.  What it publishes is control
    traffic (e.g. `alerts/ack/...`, commands), routed to subscribers but never ingested as a
    reading.

``anonymous`` (no username, only when `allow_anonymous` is on — lab use)
    publishes only on the *shape* of the device patterns (`{username}` matching any level);
    the level in the `{username}` position is the device hint.  Subscribes anywhere except
    operator-only filters.

Operator-only filters (default `alerts/#`): a non-operator SUBSCRIBE whose filter could match
any topic under them is refused (SUBACK 0x80) — so `#` from a device is refused too.
Nobody but the gateway itself publishes to `$`-topics.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.auth.topics import covers, matches, overlaps, split_pattern, valid_topic_filter

PLACEHOLDER = "{username}"

DEVICE = "device"
OPERATOR = "operator"
ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class AclSettings:
    device_publish: tuple[str, ...] = (
        "factory/+/+/{username}",
        "devices/{username}/#",
        "factory/{username}/#",
    )
    device_subscribe: tuple[str, ...] = ("devices/{username}/#",)
    operator_only: tuple[str, ...] = ("alerts/#",)

    def problems(self) -> list[tuple[str, str]]:
        """(key, reason) for every pattern that is not a valid filter once filled in."""
        out = []
        for key in ("device_publish", "device_subscribe", "operator_only"):
            for i, pattern in enumerate(getattr(self, key)):
                filled = pattern.replace(PLACEHOLDER, "x")
                if not valid_topic_filter(filled):
                    out.append((f"{key}[{i}]", f"not a valid MQTT topic filter: {pattern!r}"))
                elif PLACEHOLDER in pattern and any(
                        PLACEHOLDER in level and level != PLACEHOLDER
                        for level in pattern.split("/")):
                    out.append((f"{key}[{i}]", f"{PLACEHOLDER} must be a whole topic level"))
        return out


@dataclass(frozen=True, slots=True)
class PublishGrant:
    """An allowed PUBLISH: whether it is a sensor reading, and which device the topic names."""

    reading: bool
    device_hint: str | None


_CONTROL = PublishGrant(reading=False, device_hint=None)


class Acl:
    """Decisions for one `AclSettings`.  Callers cache per (connection, topic)."""

    def __init__(self, settings: AclSettings | None = None) -> None:
        self.settings = settings or AclSettings()
        #: (generic filter, index of the {username} level)
        self._shapes = [split_pattern(p, PLACEHOLDER) for p in self.settings.device_publish]

    def publish(self, role: str, username: str | None, topic: str) -> PublishGrant | None:
        """The grant for publishing to topic name `topic`, or None if refused."""
        if topic.startswith("$"):
            return None
        if role == OPERATOR:
            return _CONTROL
        if role == DEVICE and username is not None:
            for pattern in self.settings.device_publish:
                if matches(_fill(pattern, username), topic):
                    return PublishGrant(reading=True, device_hint=username)
            return None
        if role == ANONYMOUS:
            levels = topic.split("/")
            for shape, index in self._shapes:
                if matches(shape, topic):
                    hint = levels[index] if index is not None and index < len(levels) else None
                    return PublishGrant(reading=True, device_hint=hint or None)
        return None

    def subscribe(self, role: str, username: str | None, flt: str) -> bool:
        """True if the account may subscribe with filter `flt` (assumed valid)."""
        if role == OPERATOR:
            return True
        if any(overlaps(flt, op) for op in self.settings.operator_only):
            return False
        if role == DEVICE and username is not None:
            return any(covers(_fill(p, username), flt) for p in self.settings.device_subscribe)
        return role == ANONYMOUS and not flt.startswith("$")


def _fill(pattern: str, username: str) -> str:
    return pattern.replace(PLACEHOLDER, username)
