"""Errors of the cloud tier, classified by what the caller should do.

    edge.errors.FieldlinkError
    ├── RetriableError ── BrokerUnavailable   Kafka not reachable / not acknowledging: 503
    │                  └── SinkUnavailable     InfluxDB or the archive store is down: retry
    ├── FatalError ────── AuthFailed          bad signature, expired timestamp, replay: 401
    │                  └── (edge) DecodeError, ValidationError, ConfigError: 4xx, dead letter
    └── PartialError                           some records of a batch were rejected
"""

from __future__ import annotations

from edge.errors import (
    ConfigError,
    DecodeError,
    FatalError,
    FieldlinkError,
    PartialError,
    RetriableError,
    ValidationError,
)

__all__ = [
    "AuthFailed", "BrokerUnavailable", "ConfigError", "DecodeError", "FatalError",
    "FieldlinkError", "PartialError", "RetriableError", "SinkUnavailable", "ValidationError",
]


class BrokerUnavailable(RetriableError):
    reason = "broker_unavailable"


class SinkUnavailable(RetriableError):
    reason = "sink_unavailable"


class AuthFailed(FatalError):
    reason = "auth_failed"
