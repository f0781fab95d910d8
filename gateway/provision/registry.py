"""Which gateways exist: the provisioning ledger and the cloud's gateway-secret registry.

* **Ledger** (`provisioned.jsonl`): one JSON object per provisioned gateway (id, hostname,
  time, output, mechanism, fieldlink version, a SHA-256 fingerprint of the secret — never
  the secret).  Append-only; a gateway id already in it is refused unless re-provisioning
  was asked for, which appends a new line (the last line of an id is current).
* **Cloud registry** (`--cloud-gateways FILE`): the map gateway id → secret the cloud's
  ingest checks signatures with (`ingest.gateways` of cloud.yaml).  Written as a JSON
  object, one gateway per line — valid YAML *and* JSON, so the cloud can take it as
  `FIELDLINK_INGEST__GATEWAYS="$(cat FILE)"` today, or read it as YAML.  Read with a YAML
  parser, so a hand-edited block-style map is accepted too.

Both are updated under one lock (`<registry>.lock`), the registry atomically with mode
0600 (`files.atomic_write`), so concurrent bulk runs cannot lose a gateway or duplicate
one, and the secret file is never readable by others.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import ProvisionError
from gateway.provision.files import atomic_write, locked

__all__ = ["Registry", "fingerprint"]


def fingerprint(secret: str) -> str:
    """A short, non-reversible tag of a secret, to tell secrets apart in the ledger."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:16]


@dataclass
class Registry:
    """The ledger and the cloud registry, together (one lock covers both)."""

    ledger_path: Path
    cloud_path: Path

    def ledger(self) -> dict[str, dict[str, Any]]:
        """Gateway id → its latest ledger entry."""
        out: dict[str, dict[str, Any]] = {}
        try:
            text = self.ledger_path.read_text()
        except FileNotFoundError:
            return out
        except OSError as exc:
            raise ProvisionError(f"ledger {self.ledger_path}: cannot read: "
                                 f"{exc.strerror or exc}") from None
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                out[str(entry["gateway_id"])] = entry
            except (ValueError, KeyError, TypeError):
                raise ProvisionError(f"ledger {self.ledger_path} line {n} is not a ledger "
                                     "entry (a JSON object with gateway_id)") from None
        return out

    def cloud_secrets(self) -> dict[str, str]:
        try:
            text = self.cloud_path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ProvisionError(f"--cloud-gateways {self.cloud_path}: cannot read: "
                                 f"{exc.strerror or exc}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ProvisionError(f"--cloud-gateways {self.cloud_path}: invalid YAML: "
                                 f"{exc}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ProvisionError(f"--cloud-gateways {self.cloud_path}: expected a map of "
                                 "gateway id to secret")
        return {str(k): str(v) for k, v in data.items()}

    def duplicates(self, gateway_ids: list[str]) -> list[str]:
        """Problems for ids already in the ledger or the registry."""
        ledger, cloud = self.ledger(), self.cloud_secrets()
        out = []
        for gid in gateway_ids:
            where = [name for name, known in (("ledger " + str(self.ledger_path), ledger),
                                               ("registry " + str(self.cloud_path), cloud))
                     if gid in known]
            if where:
                out.append(f"gateway {gid!r} is already provisioned (in the "
                           f"{' and the '.join(where)}); use --reprovision to replace its "
                           "card and rotate its secret")
        return out

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with locked(self.cloud_path):
            yield

    def record(self, entry: dict[str, Any], secret: str, *, reprovision: bool) -> None:
        """Register one gateway: its secret in the registry, a line in the ledger.

        Call inside `transaction()`.  Raises `ProvisionError` for a duplicate unless
        `reprovision`.
        """
        gid = str(entry["gateway_id"])
        if not reprovision:
            dup = self.duplicates([gid])
            if dup:
                raise ProvisionError(dup)
        secrets = self.cloud_secrets()
        secrets[gid] = secret
        body = "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}"
                                  for k, v in sorted(secrets.items())) + "\n}\n"
        atomic_write(self.cloud_path, body.encode(), 0o600)
        line = {**entry, "secret": fingerprint(secret), "reprovision": reprovision,
                "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.ledger_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.ledger_path, "a") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")
            f.flush()
