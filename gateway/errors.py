"""Errors of the gateway, classified by what the caller should do.

    edge.errors.FieldlinkError
    ├── RetriableError ── BufferBusy          the buffer could not commit in time; retry
    │                  ├── UplinkUnavailable   the cloud did not answer / answered 5xx
    │                  └── DeliveryFailed      an alert channel is unreachable (timeout,
    │                                          429, 5xx); retried from the alert outbox
    ├── FatalError ────── BufferCorrupt       the SQLite file failed its integrity check
    │                  ├── Unauthorized        bad credentials or an ACL refusal
    │                  ├── ProtocolViolation   an MQTT client broke the protocol; it is
    │                  │                       disconnected and `reason` counted
    │                  ├── ProvisionError      `fieldlink provision` refused its input
    │                  │                       (exit 2); `problems` names each one
    │                  ├── DeliveryRejected    an alert receiver refused a notification
    │                  │                       (4xx): kept in the outbox as dead, counted
    │                  └── (edge) ValidationError, PayloadError, DecodeError, ConfigError
    └── PartialError                           some readings of a batch were rejected

Ingress code turns every FatalError about input into a dead letter with `err.reason`.
"""

from __future__ import annotations

from edge.errors import (
    ConfigError,
    DecodeError,
    FatalError,
    FieldlinkError,
    PartialError,
    PayloadError,
    RetriableError,
    ValidationError,
)

__all__ = [
    "BufferBusy", "BufferCorrupt", "ConfigError", "DecodeError", "FatalError", "FieldlinkError",
    "PartialError", "PayloadError", "RetriableError", "Unauthorized", "UplinkUnavailable",
    "ValidationError",
]


class BufferBusy(RetriableError):
    reason = "buffer_busy"


class BufferCorrupt(FatalError):
    reason = "buffer_corrupt"


class Unauthorized(FatalError):
    reason = "unauthorized"


class UplinkUnavailable(RetriableError):
    reason = "uplink_unavailable"


class ProtocolViolation(FatalError):
    """An MQTT client sent something the protocol forbids (malformed or oversize packet,
    unknown packet type, wrong packet order).  The broker closes that connection, counts
    `reason` (`malformed_packet`, `oversize_frame`, `unknown_packet_type`, `bad_utf8`,
    `protocol_violation`, ...) and keeps serving everyone else."""

    reason = "protocol_violation"


__all__ += ["ProtocolViolation"]


class ProvisionError(FatalError):
    """`fieldlink provision` cannot go on: a missing or invalid parameter, an image without a
    FAT boot partition, a gateway id already provisioned, too little free space.  `problems`
    lists one human sentence per problem (all are reported together); the command exits 2."""

    reason = "provision"

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


__all__ += ["ProvisionError"]


class DeliveryFailed(RetriableError):
    """An alert delivery channel did not take a notification this time (connection refused,
    timeout, HTTP 429 or 5xx).  The outbox retries it with backoff; `retry_after_s` is the
    receiver's Retry-After, when it sent one."""

    reason = "delivery_failed"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeliveryRejected(FatalError):
    """An alert receiver refused a notification for good (HTTP 4xx other than 408/429, an
    invalid MQTT topic).  The outbox row is marked dead with this message and not retried."""

    reason = "delivery_rejected"


__all__ += ["DeliveryFailed", "DeliveryRejected"]
