"""A Pi's `gateway.yaml`, generated from the commented example `config/gateway.yaml`.

The example file is the documentation of every key, so the generated file keeps it: values
are replaced in place (`set_scalar`), comments stay.  The edits (`PI_SETTINGS` plus the
gateway's own id and uplink URL):

* listeners on all interfaces (sensors are on the plant network), the HTTP endpoint too;
* state in `/var/lib/fieldlink/gateway` (the unit's StateDirectory), the MQTT credentials
  in `/etc/fieldlink/credentials/`;
* `uplink.gateway_secret: null` — the secret lives in `/etc/fieldlink/fieldlink.env` as
  `FIELDLINK_UPLINK__GATEWAY_SECRET`, readable by root only;
* the demo device registry emptied.

`render_gateway_yaml` checks its own output: the YAML is parsed back, every edited key must
hold the new value, and the result (with the secret from the environment) must pass the
gateway's config model — a template this module cannot edit safely is refused, not shipped.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from edge.config import parse_config
from edge.config.gateway import GatewayConfig
from edge.errors import ConfigError
from gateway.errors import ProvisionError

__all__ = ["CREDENTIALS_PATH", "DATA_DIR", "PI_SETTINGS", "render_gateway_yaml", "set_scalar"]

DATA_DIR = "/var/lib/fieldlink/gateway"
CREDENTIALS_PATH = "/etc/fieldlink/credentials/mqtt-credentials.json"
SECRET_ENV = "FIELDLINK_UPLINK__GATEWAY_SECRET"

PI_SETTINGS: dict[str, Any] = {
    "gateway.data_dir": DATA_DIR,
    "mqtt.host": "0.0.0.0",
    "mqtt.credentials_file": CREDENTIALS_PATH,
    "mqtt.tls.host": "0.0.0.0",
    "mqtt.websocket.host": "0.0.0.0",
    "coap.host": "0.0.0.0",
    "http.host": "0.0.0.0",
    "devices.registry": {},
    "uplink.gateway_secret": None,
}

_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_-]*):(?P<rest>.*)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_comment_or_blank(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def _find(lines: list[str], dotted: str) -> int:
    """Index of the line holding key `dotted` in a block-mapping YAML text."""
    parent_indent, begin, found = -1, 0, None
    for part in dotted.split("."):
        child_indent, found = None, None
        for i in range(begin, len(lines)):
            if _is_comment_or_blank(lines[i]):
                continue
            indent = _indent(lines[i])
            if indent <= parent_indent:
                break  # left the parent's block
            if child_indent is None:
                child_indent = indent
            m = _KEY_LINE.match(lines[i].rstrip("\n"))
            if indent == child_indent and m is not None and m["key"] == part:
                found = i
                break
        if found is None or child_indent is None:
            raise ProvisionError(f"the gateway.yaml template has no key {dotted}: it cannot "
                                 "be edited safely (give --gateway-template a file derived "
                                 "from config/gateway.yaml)")
        parent_indent, begin = child_indent, found + 1
    assert found is not None
    return found


def _split_comment(rest: str) -> str:
    """The trailing ` # comment` of a value (only for plain scalars without '#' inside)."""
    m = re.search(r"\s(#.*)$", rest)
    return m.group(1) if m else ""


def _scalar(value: Any) -> str:
    # JSON is valid YAML and quotes every string that could be misread (0.0.0.0, "on", ":")
    return json.dumps(value)


def set_scalar(text: str, dotted: str, value: Any, *, note: str | None = None) -> str:
    """Replace the value of block-mapping key `dotted` (e.g. ``mqtt.tls.host``) in `text`.

    The key line keeps its trailing comment (or gets `note` as one); a nested value that
    followed the key (a block mapping or a flow mapping continued over lines) is removed,
    the comment-only lines after it are kept.  Raises `ProvisionError` if the key is absent.
    """
    lines = text.splitlines(keepends=True)
    start = _find(lines, dotted)
    m = _KEY_LINE.match(lines[start].rstrip("\n"))
    assert m is not None
    old = lines[start].rstrip("\n")
    comment = _split_comment(m["rest"])
    column = old.rindex(comment) if comment else 30  # keep the file's comment column
    if note is not None:
        comment = f"# {note}"
    key_indent = len(m["indent"])
    new = f"{m['indent']}{m['key']}: {_scalar(value)}"
    if comment:
        new = f"{new.ljust(column)}{comment}" if len(new) < column else f"{new}  {comment}"
    out = lines[:start] + [new + "\n"]
    j = start + 1
    while j < len(lines):
        line = lines[j]
        if _is_comment_or_blank(line):
            out.append(line)
        elif _indent(line) > key_indent:
            pass  # the old nested value
        else:
            break
        j += 1
    return "".join(out + lines[j:])


def _lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[part]
    return data


def render_gateway_yaml(template: str, *, gateway_id: str, uplink_url: str, secret: str,
                        template_name: str = "config/gateway.yaml") -> str:
    """The Pi's gateway.yaml (see module docstring).  Raises `ProvisionError`."""
    edits: dict[str, Any] = {"gateway.id": gateway_id, "uplink.url": uplink_url,
                             **PI_SETTINGS}
    text = template
    for key, value in edits.items():
        note = (f"from {SECRET_ENV} in /etc/fieldlink/fieldlink.env"
                if key == "uplink.gateway_secret" else None)
        text = set_scalar(text, key, value, note=note)
    try:
        data = yaml.safe_load(text)
        for key, value in edits.items():
            if _lookup(data, key) != value:
                raise ProvisionError(f"editing {key} in {template_name} did not take effect")
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise ProvisionError(f"the gateway.yaml generated from {template_name} is not valid: "
                             f"{exc}") from None
    try:
        cfg = parse_config(data, GatewayConfig, file="gateway.yaml",
                           environ={SECRET_ENV: secret})
    except ConfigError as exc:
        raise ProvisionError(f"the generated gateway.yaml is refused by the config model: "
                             f"{exc}") from None
    problems = cfg.problems()
    if problems:
        raise ProvisionError([f"generated gateway.yaml: {key}: {why}" for key, why in problems])
    header = (f"# gateway {gateway_id}: generated by `fieldlink provision` from "
              f"{template_name}.\n# The uplink secret is not in this file: see "
              f"/etc/fieldlink/fieldlink.env ({SECRET_ENV}).\n")
    return header + text
