"""`fieldlink provision bulk`: one provisioned image (or bundle) per row of a CSV.

The CSV has a header; `gateway_id` is required, every other column is optional and falls
back to the command-line option of the same name:

    gateway_id,hostname,uplink_url,wifi_ssid,wifi_password,wifi_country,timezone,
    ssh_key,sensors,generate_sensors,sensor_pattern,admin_user,secret

`ssh_key` and `sensors` are file paths (relative ones are relative to the CSV's directory).
Every row is validated — and every id checked against the ledger, the registry and the
other rows — before anything is written, so a bad row refuses the whole run with all its
problems listed by row number.  Then each gateway gets a unique generated secret (unless
its row gives one) and `OUT/<gateway_id>.img` (or `OUT/<gateway_id>/` with `--bundle`), and
is recorded in the ledger and cloud registry as soon as its output is complete.  An .xz
image is decompressed once for the whole run.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from gateway.errors import ProvisionError
from gateway.provision.bootfs import ImageBootFs, require_mtools
from gateway.provision.cli import EXAMPLES, _refuse, add_gateway_options, add_run_options
from gateway.provision.media import is_xz, prepare_image
from gateway.provision.params import (
    GatewayParams,
    build_params,
    read_key_file,
    read_text_file,
)
from gateway.provision.partitions import find_boot_partition
from gateway.provision.run import Session
from gateway.provision.sensors import DEFAULT_PATTERN, generate_sensors, load_sensor_file

__all__ = ["COLUMNS", "main", "read_rows"]

COLUMNS = ("gateway_id", "hostname", "uplink_url", "wifi_ssid", "wifi_password",
           "wifi_country", "timezone", "ssh_key", "sensors", "generate_sensors",
           "sensor_pattern", "admin_user", "secret")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fieldlink provision bulk",
        description="Provision one Raspberry Pi OS image per CSV row, each with its own "
                    f"gateway secret.  CSV columns: {', '.join(COLUMNS)} (gateway_id "
                    "required; empty cells take the option of the same name).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", type=Path, required=True, help="the gateways, one per row")
    parser.add_argument("--image", type=Path, required=True,
                        help="Raspberry Pi OS image, .img or .img.xz")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--bundle", action="store_true",
                        help="write boot-partition directories OUT/<gateway_id>/ instead of "
                             "images (copy one onto a card written with the stock image)")
    add_gateway_options(parser, bulk=True)
    add_run_options(parser)
    return parser


def read_rows(path: Path) -> list[dict[str, str]]:
    text = read_text_file(path, "--csv")
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in reader.fieldnames or ()]
    if "gateway_id" not in header:
        raise ProvisionError(f"--csv {path}: the header must name a gateway_id column "
                             f"(columns: {', '.join(COLUMNS)})")
    unknown = [h for h in header if h and h not in COLUMNS]
    if unknown:
        raise ProvisionError(f"--csv {path}: unknown column(s) {', '.join(unknown)} "
                             f"(known: {', '.join(COLUMNS)})")
    rows = []
    for row in reader:
        clean = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        if any(clean.values()):
            rows.append(clean)
    if not rows:
        raise ProvisionError(f"--csv {path} has no gateway rows")
    return rows


def _row_params(row: dict[str, str], args: argparse.Namespace, base: Path) -> GatewayParams:
    def cell(name: str, default: str | None = None) -> str | None:
        return row.get(name) or default

    def path_cell(name: str, default: Path | None) -> Path | None:
        value = row.get(name)
        return (base / value if not Path(value).is_absolute() else Path(value)) \
            if value else default

    gateway_id = cell("gateway_id")
    key_path = path_cell("ssh_key", args.ssh_key)
    key_text = (read_key_file(key_path, "ssh_key")
                if key_path is not None and not args.no_ssh else None)
    password = cell("wifi_password")
    if password is None and args.wifi_password_file is not None:
        lines = read_text_file(args.wifi_password_file, "--wifi-password-file").splitlines()
        password = lines[0].strip() if lines else None
    sensors_path = path_cell("sensors", None)
    count = cell("generate_sensors")
    sensors: tuple = ()
    if sensors_path is not None:
        sensors = load_sensor_file(sensors_path)
    elif gateway_id:
        try:
            n = int(count) if count else (args.generate_sensors or 0)
        except ValueError:
            raise ProvisionError(f"generate_sensors {count!r} is not a number") from None
        pattern = cell("sensor_pattern", args.sensor_pattern) or DEFAULT_PATTERN
        sensors = generate_sensors(n, gateway_id, pattern) if n else ()
    return build_params(
        gateway_id=gateway_id, uplink_url=cell("uplink_url", args.uplink_url),
        hostname=cell("hostname"), secret=cell("secret"), ssh_key_text=key_text,
        ssh_key_source=f"ssh_key {key_path}", allow_no_ssh=args.no_ssh,
        admin_user=cell("admin_user", args.admin_user) or "fieldadmin",
        timezone=cell("timezone", args.timezone), wifi_ssid=cell("wifi_ssid", args.wifi_ssid),
        wifi_password=password, wifi_country=cell("wifi_country", args.wifi_country),
        sensors=sensors)


def plan(args: argparse.Namespace) -> list[GatewayParams]:
    """Every row's parameters, or one `ProvisionError` listing every row's problems."""
    rows = read_rows(args.csv)
    problems: list[str] = []
    out: list[GatewayParams] = []
    seen: dict[str, int] = {}
    for n, row in enumerate(rows, 2):  # row 1 is the header
        try:
            params = _row_params(row, args, args.csv.parent)
        except ProvisionError as exc:
            problems += [f"row {n} ({row.get('gateway_id') or 'no gateway_id'}): {p}"
                         for p in exc.problems]
            continue
        if params.gateway_id in seen:
            problems.append(f"row {n}: gateway {params.gateway_id!r} is also in row "
                            f"{seen[params.gateway_id]}")
        seen[params.gateway_id] = n
        out.append(params)
    if problems:
        raise ProvisionError(problems)
    return out


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    try:
        return _bulk(args)
    except ProvisionError as exc:
        _refuse(exc)
        return 2
    except KeyboardInterrupt:
        print("fieldlink provision bulk: interrupted; the gateways listed above are "
              "complete and registered, the rest are not", file=sys.stderr)
        return 130


def _bulk(args: argparse.Namespace) -> int:
    if not args.image.is_file():
        raise ProvisionError(f"--image {args.image}: no such file")
    require_mtools()
    gateways = plan(args)
    args.out.mkdir(parents=True, exist_ok=True)
    session = Session.from_args(args, beside=args.out)
    session.check_new([p.gateway_id for p in gateways])
    outputs = [args.out / (p.gateway_id if args.bundle else f"{p.gateway_id}.img")
               for p in gateways]
    clash = [str(o) for o in outputs if o.exists()]
    if clash:
        raise ProvisionError([f"{o} exists: remove it or choose another --out" for o in clash])
    session.load_wheels()
    with tempfile.TemporaryDirectory(prefix="fieldlink-bulk-", dir=args.out) as tmp:
        base = args.image
        if is_xz(base) or args.bundle:
            # decompress once; a bundle's reference image must not be modified either
            base = Path(tmp) / "base.img"
            prepare_image(args.image, base, show_progress=session.show_progress)
        _, boot = find_boot_partition(base)
        reference = ImageBootFs(base, boot.offset)
        for i, (params, output) in enumerate(zip(gateways, outputs), 1):
            print(f"[{i}/{len(gateways)}] {params.gateway_id}", file=sys.stderr, flush=True)
            if args.bundle:
                result = session.provision_bundle(params, output, reference)
            else:
                result = session.provision_image(params, output, source=base)
            session.report(result, params, args.out / f"{params.gateway_id}.sensors.csv")
    print(f"{len(gateways)} gateways provisioned; ledger {session.registry.ledger_path}, "
          f"cloud registry {session.registry.cloud_path}")
    return 0
