"""Errors of the cloud tier, classified by what the caller should do.

    edge.errors.FieldlinkError
    ├── RetriableError ── BrokerUnavailable   Kafka not reachable / not acknowledging: 503
    │                  ├── SinkUnavailable     InfluxDB or the archive store is down: retry
    │                  ├── ConsumerFenced      another member of the consumer group took the
    │                  │                       partitions over: seek_to_committed and go on
    │                  └── UpstreamUnavailable a SaaS API is down, failing (5xx) or rate-
    │                                          limited longer than we wait: next poll round
    ├── FatalError ────── AuthFailed          bad signature, expired timestamp, replay: 401
    │                  │                       (edge.signing.AuthError says which, by reason)
    │                  ├── UnknownTopic        produced to a topic the bus does not have
    │                  ├── PointRejected       a store refused one item (InfluxDB 4xx such as
    │                  │                       a field type conflict, or a value line protocol
    │                  │                       cannot carry): dead-letter it, go on
    │                  ├── SinkMisconfigured   the store refuses every write for a reason only
    │                  │                       configuration can fix (credentials, missing
    │                  │                       permission): the sink stops, commits nothing
    │                  ├── UpstreamRejected    a SaaS API refuses the request itself (401,
    │                  │                       403 without a rate limit, 404): fix the
    │                  │                       token or the repository name
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
    "AuthFailed", "BrokerUnavailable", "ConfigError", "ConsumerFenced", "DecodeError",
    "FatalError", "FieldlinkError", "PartialError", "PointRejected", "RetriableError",
    "SinkMisconfigured", "SinkUnavailable", "UnknownTopic", "UpstreamRejected",
    "UpstreamUnavailable", "ValidationError",
]


class BrokerUnavailable(RetriableError):
    reason = "broker_unavailable"


class SinkUnavailable(RetriableError):
    reason = "sink_unavailable"


class AuthFailed(FatalError):
    reason = "auth_failed"


class ConsumerFenced(RetriableError):
    """A commit was refused because the group's partitions now belong to another member."""

    reason = "consumer_fenced"


class UnknownTopic(FatalError):
    """The topic does not exist on the bus (ensure_topics was not run for it)."""

    reason = "unknown_topic"


class PointRejected(FatalError):
    """A store refused one item, or it cannot be expressed in the store's format.

    `reason` says why ("field_type_conflict", "rejected", "unrepresentable", ...); the sink
    dead-letters the item with it and carries on with the rest.
    """

    reason = "point_rejected"


class SinkMisconfigured(FatalError):
    """The store refuses every write (401/403: credentials or permissions); retrying the same
    request cannot help, so the sink stops without committing."""

    reason = "sink_misconfigured"


class UpstreamUnavailable(RetriableError):
    """A SaaS API could not answer usefully now (unreachable, 5xx, rate-limited past the
    wait cap); the connector tries again in its next round, from its saved cursor."""

    reason = "upstream_unavailable"


class UpstreamRejected(FatalError):
    """A SaaS API refuses the request itself (bad credentials, no access, unknown resource):
    retrying cannot help until the configuration changes."""

    reason = "upstream_rejected"
