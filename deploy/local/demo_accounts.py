"""Create the MQTT accounts the one-command demo needs (used by deploy/local/run.sh).

    demo_accounts.py --sim config/sim.yaml --credentials FILE --device-password PW \
                     --operator NAME --operator-password PW

Every device of the simulated fleet gets a device account (username = device id) and one
operator account is added for dashboards and `mosquitto_sub`.  Idempotent: existing accounts
are kept.  One argon2 hash is computed for the shared demo device password and reused, so a
fleet of thousands is provisioned in a second — fine for a demo on one machine, never for a
real plant, where `fieldlink gateway devices add` gives every sensor its own password.
"""

from __future__ import annotations

import argparse
import time

from edge.config import load_config
from edge.config.sim import SimConfig, device_ids
from gateway.auth.credentials import Account, load_accounts, save_accounts
from gateway.auth.passwords import hash_password


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sim", required=True)
    parser.add_argument("--credentials", required=True)
    parser.add_argument("--device-password", required=True)
    parser.add_argument("--operator", default="operator")
    parser.add_argument("--operator-password", required=True)
    args = parser.parse_args()

    sim = load_config(args.sim, SimConfig)
    ids: list[str] = []
    first = 0
    for group in sim.fleet:
        ids += device_ids(group, first)
        first += group.count
    accounts = load_accounts(args.credentials)
    now = int(time.time() * 1000)
    added = 0
    device_hash = None
    for device in ids:
        if device not in accounts:
            device_hash = device_hash or hash_password(args.device_password)
            accounts[device] = Account(device, "device", device_hash, now)
            added += 1
    if args.operator not in accounts:
        accounts[args.operator] = Account(args.operator, "operator",
                                          hash_password(args.operator_password), now)
        added += 1
    if added:
        save_accounts(args.credentials, accounts)
    print(f"{len(ids)} device accounts and operator {args.operator!r} in {args.credentials} "
          f"({added} added)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
