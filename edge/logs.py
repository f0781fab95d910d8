"""Structured logging: one JSON object per line on stderr.

Every service calls `setup_logging()` once at start.  Extra fields passed with
`log.info("msg", extra={"fields": {...}})` are merged into the object.  Values under keys that
look like secrets (password, token, secret, key material) are masked, so a secret given in a
config file or environment variable never reaches a log line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_SECRET_MARKERS = ("password", "passwd", "secret", "token", "authorization", "api_key", "psk")


def _mask(fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if any(marker in key.lower() for marker in _SECRET_MARKERS):
            out[key] = "***"
        elif isinstance(value, dict):
            out[key] = _mask(value)
        else:
            out[key] = value
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            obj.update(_mask(fields))
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str)


def setup_logging(level: str = "info", *, json_lines: bool = True) -> None:
    """Configure the root logger once.  Idempotent."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_fieldlink", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._fieldlink = True  # type: ignore[attr-defined]
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
