"""Errors of the `edge` contract library, classified by what the caller should do.

    FieldlinkError                      base of every error fieldlink raises on purpose
    ├── RetriableError                  try the same thing again later (with backoff)
    ├── FatalError                      do not retry; fix input or configuration
    │   ├── ConfigError                 a config file is wrong: names file, key path, reason
    │   ├── ValidationError             one reading is invalid: names the field and reason
    │   │   ├── MissingField
    │   │   ├── WrongType
    │   │   ├── NonFinite               NaN or +/-inf where a finite number is required
    │   │   ├── TimestampOutOfRange
    │   │   └── Oversize                payload or field longer than the configured limit
    │   ├── PayloadError                bytes that are not a sensor message at all
    │   └── DecodeError                 a batch frame that cannot be decoded
    │       ├── UnsupportedVersion
    │       ├── ChecksumMismatch
    │       ├── Truncated
    │       └── MalformedFrame
    └── PartialError                    some items succeeded, some did not: `.failed` lists
                                        the failures, the caller keeps the successes

Every `ValidationError`, `PayloadError` and `DecodeError` has a short machine-readable
`reason` (used as a metrics label and dead-letter reason) and a human message.

The classes are flat on purpose (the aiomqtt model): a caller catches `RetriableError` to
back off, `FatalError` to dead-letter, and `PartialError` to split a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class FieldlinkError(Exception):
    """Base class.  `reason` is a stable snake_case label for metrics and dead letters."""

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.reason


class RetriableError(FieldlinkError):
    """A transient condition (peer down, timeout, back-pressure).  Retry with backoff."""

    reason = "retriable"


class FatalError(FieldlinkError):
    """Retrying the same input cannot succeed."""

    reason = "fatal"


class PartialError(FieldlinkError):
    """Part of a batch failed.  `failed` holds (index, error) pairs of the failures."""

    reason = "partial"

    def __init__(self, message: str, failed: Sequence[tuple[int, FieldlinkError]]) -> None:
        super().__init__(message)
        self.failed = list(failed)


class ConfigError(FatalError):
    """A configuration file is invalid.  `problems` lists (key_path, reason) pairs."""

    reason = "config"

    def __init__(self, file: str, problems: Sequence[tuple[str, str]]) -> None:
        self.file = file
        self.problems = list(problems)
        lines = [f"{file}: {path or '<root>'}: {why}" for path, why in self.problems]
        super().__init__("\n".join(lines) if lines else f"{file}: invalid configuration")


class ValidationError(FatalError):
    """One reading failed validation.  `field` names the offending field, if any."""

    reason = "invalid"

    def __init__(self, message: str, *, field: str | None = None, reason: str | None = None,
                 value: Any = None) -> None:
        super().__init__(message, reason=reason)
        self.field = field
        self.value = value


class MissingField(ValidationError):
    reason = "missing_field"


class WrongType(ValidationError):
    reason = "wrong_type"


class NonFinite(ValidationError):
    reason = "non_finite"


class TimestampOutOfRange(ValidationError):
    reason = "timestamp_out_of_range"


class Oversize(ValidationError):
    reason = "oversize"


class PayloadError(FatalError):
    """The bytes are not a sensor message (bad JSON, unknown encoding, wrong shape)."""

    reason = "malformed_payload"


class DecodeError(FatalError):
    """A batch frame could not be decoded.  Never raised as anything but a subclass."""

    reason = "decode_error"


class UnsupportedVersion(DecodeError):
    reason = "unsupported_version"


class ChecksumMismatch(DecodeError):
    reason = "checksum_mismatch"


class Truncated(DecodeError):
    reason = "truncated"


class MalformedFrame(DecodeError):
    reason = "malformed"
