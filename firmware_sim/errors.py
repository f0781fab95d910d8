"""Errors of the fleet simulator.

    edge.errors.FieldlinkError
    ├── RetriableError ── TargetUnavailable   the gateway refused or dropped the connection
    └── FatalError
        ├── (edge) ConfigError                  the fleet definition is wrong
        └── NotAuthorized                       the target refused the device's credentials
"""

from __future__ import annotations

from edge.errors import ConfigError, FatalError, FieldlinkError, RetriableError

__all__ = ["ConfigError", "FatalError", "FieldlinkError", "NotAuthorized", "RetriableError",
           "TargetUnavailable"]


class TargetUnavailable(RetriableError):
    reason = "target_unavailable"


class NotAuthorized(FatalError):
    """The target refused the credentials (MQTT CONNACK 4/5): retrying cannot succeed."""

    reason = "not_authorized"
