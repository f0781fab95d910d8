"""Errors of the fleet simulator.

    edge.errors.FieldlinkError
    ├── RetriableError ── TargetUnavailable   the gateway refused or dropped the connection
    └── FatalError ────── (edge) ConfigError  the fleet definition is wrong
"""

from __future__ import annotations

from edge.errors import ConfigError, FatalError, FieldlinkError, RetriableError

__all__ = ["ConfigError", "FatalError", "FieldlinkError", "RetriableError", "TargetUnavailable"]


class TargetUnavailable(RetriableError):
    reason = "target_unavailable"
