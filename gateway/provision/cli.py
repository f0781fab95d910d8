"""`fieldlink provision`: write a gateway's first-boot configuration into a Raspberry Pi image.

    fieldlink provision --image raspios.img.xz --out gw-01.img --gateway-id gw-01 ...
    fieldlink provision bulk --csv gateways.csv --image raspios.img.xz --out cards/
    fieldlink provision upgrade-bundle --out upgrade/

One command per gateway (or one per CSV of gateways) turns a stock Raspberry Pi OS Lite
image into a card that boots, joins the network, installs fieldlink offline and starts the
gateway.  The image's FAT boot partition is written with mtools — no root, no mounting.

Exit codes: 0 done; 2 refused (the message names every problem: a missing or invalid
parameter, an image without a FAT boot partition, a gateway id already provisioned, too
little space); 130 interrupted.  Nothing is registered for a gateway whose card was not
written completely.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ProvisionError

__all__ = ["main"]

EXAMPLES = """\
examples:
  # one gateway, Wi-Fi, SSH key, 20 generated sensor accounts
  fieldlink provision --image 2024-11-19-raspios-bookworm-arm64-lite.img.xz \\
      --out gw-berlin-01.img --gateway-id gw-berlin-01 \\
      --uplink-url https://ingest.example.com:8700 --ssh-key ~/.ssh/id_ed25519.pub \\
      --wifi-ssid plant-net --wifi-password-file wifi.txt --wifi-country DE \\
      --timezone Europe/Berlin --generate-sensors 20

  # a card already written with Raspberry Pi OS and mounted
  fieldlink provision --boot-dir /media/$USER/bootfs --gateway-id gw-02 \\
      --uplink-url https://ingest.example.com:8700 --ssh-key ops.pub --sensors sensors.csv

  # many gateways from a CSV (one image per row; --bundle: boot-partition directories)
  fieldlink provision bulk --csv gateways.csv --image raspios.img.xz --out cards/ \\
      --uplink-url https://ingest.example.com:8700 --ssh-key ops.pub --wifi-country DE

Each gateway's secret is generated (unless --secret-file) and merged into the cloud
registry (--cloud-gateways, a JSON/YAML map gateway id -> secret, mode 0600); the ledger
(provisioned.jsonl) refuses a gateway id twice unless --reprovision.  Generated sensor
passwords are written once, to <gateway>.sensors.csv (mode 0600) beside the output.
See docs/provisioning.md.
"""


def add_gateway_options(parser: argparse.ArgumentParser, *, bulk: bool) -> None:
    """Options describing gateways; in bulk mode they are defaults for empty CSV cells."""
    default = " (default for empty CSV cells)" if bulk else ""
    g = parser.add_argument_group("gateway")
    if not bulk:
        g.add_argument("--gateway-id", help="the gateway's id towards the cloud (required)")
        g.add_argument("--hostname", help="default: derived from the gateway id")
    g.add_argument("--uplink-url", help=f"cloud ingest base URL, http(s)://...{default}")
    if not bulk:
        g.add_argument("--secret-file", type=Path,
                       help="file holding the gateway secret (default: generate one)")
    g.add_argument("--ssh-key", type=Path,
                   help=f"SSH public key file (or authorized_keys) for the admin user{default}")
    g.add_argument("--no-ssh", action="store_true", help="no admin user and no SSH login")
    g.add_argument("--admin-user", default="fieldadmin",
                   help="login of the admin user (default: fieldadmin)")
    g.add_argument("--timezone", help=f"tz database name, e.g. Europe/Berlin{default}")
    w = parser.add_argument_group("Wi-Fi (leave out for Ethernet only)")
    w.add_argument("--wifi-ssid", help=f"network name{default}")
    if not bulk:
        w.add_argument("--wifi-password", help="passphrase (prefer --wifi-password-file)")
    w.add_argument("--wifi-password-file", type=Path, help=f"file holding the passphrase{default}")
    w.add_argument("--wifi-country", help=f"ISO 3166 two-letter regulatory country{default}")
    s = parser.add_argument_group("sensor credentials to preload")
    if not bulk:
        s.add_argument("--sensors", type=Path,
                       help="CSV (username,password) or YAML (username: password) file")
    s.add_argument("--generate-sensors", type=int, metavar="N", default=None,
                   help=f"generate N sensor accounts with random passwords{default}")
    s.add_argument("--sensor-pattern", default=None,
                   help="names of generated sensors, with {n} and {gateway_id} "
                        "(default: {gateway_id}-s{n:03d})")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    r = parser.add_argument_group("registration")
    r.add_argument("--cloud-gateways", type=Path,
                   help="cloud registry of gateway secrets to merge into (default: "
                        "cloud-gateways.yaml beside the output)")
    r.add_argument("--ledger", type=Path,
                   help="provisioning ledger (default: provisioned.jsonl beside the output)")
    r.add_argument("--reprovision", action="store_true",
                   help="allow a gateway id provisioned before (a replacement card; the "
                        "secret is rotated)")
    b = parser.add_argument_group("first boot")
    b.add_argument("--first-boot", choices=("auto", "cloud-init", "firstrun"), default="auto",
                   help="mechanism (default: auto — cloud-init when the image has it)")
    b.add_argument("--boot-mount", choices=("/boot", "/boot/firmware"),
                   help="where the Pi mounts the boot partition, for firstrun.sh "
                        "(default: from the image's date; /boot/firmware from Bookworm)")
    k = parser.add_argument_group("wheels (fieldlink is installed offline on first boot)")
    k.add_argument("--wheels-dir", type=Path, help="use these prebuilt wheels instead")
    k.add_argument("--no-wheels", action="store_true",
                   help="copy no wheels (the installer then needs --wheels on the Pi)")
    k.add_argument("--extra", default="gateway", help="fieldlink extra to install "
                   "(default: gateway; '' for the core only)")
    k.add_argument("--platform", action="append", dest="platforms", metavar="TAG",
                   help="wheel platform tag, repeatable (default: manylinux2014_aarch64, "
                        "manylinux_2_17_aarch64 and manylinux_2_28_aarch64)")
    k.add_argument("--python-version", default="3.11",
                   help="the Pi's Python (default: 3.11, Raspberry Pi OS Bookworm)")
    k.add_argument("--wheel-cache", type=Path,
                   help="download cache (default: ~/.cache/fieldlink/wheels)")
    k.add_argument("--refresh-wheels", action="store_true",
                   help="resolve the dependencies again instead of using the cache")
    a = parser.add_argument_group("sources")
    a.add_argument("--source", type=Path, help="fieldlink source tree (default: this one)")
    a.add_argument("--deploy-dir", type=Path, help="installer files (default: deploy/rpi)")
    a.add_argument("--gateway-template", type=Path,
                   help="gateway.yaml to derive from (default: config/gateway.yaml)")
    a.add_argument("--rules", type=Path, help="alert rules (default: config/rules.yaml)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fieldlink provision",
        description="Provision a Raspberry Pi OS image (or a mounted boot partition) as a "
                    "fieldlink gateway.  For many gateways: `fieldlink provision bulk "
                    "--help`; installer and wheels for upgrading running gateways: "
                    "`fieldlink provision upgrade-bundle --help`.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    t = parser.add_argument_group("target (one of)")
    t.add_argument("--image", type=Path, help="Raspberry Pi OS image, .img or .img.xz")
    t.add_argument("--out", type=Path, help="the provisioned image to write (with --image)")
    t.add_argument("--in-place", action="store_true",
                   help="modify --image itself (an uncompressed .img) instead of --out")
    t.add_argument("--boot-dir", type=Path, help="an already mounted boot partition")
    add_gateway_options(parser, bulk=False)
    parser.add_argument("--sensors-out", type=Path,
                        help="where generated sensor passwords go (default: "
                             "<gateway>.sensors.csv beside the output)")
    add_run_options(parser)
    return parser


@dataclass
class Target:
    kind: str  # "image" | "boot-dir"
    out: Path  # the image to write, or the boot directory
    source: Path | None = None  # the image to copy from (None: modify `out` in place)

    @property
    def beside(self) -> Path:
        """The directory outputs like the ledger go to by default."""
        return self.out.parent if self.kind == "image" else Path.cwd()


def _target(args: argparse.Namespace) -> Target:
    if args.boot_dir is not None:
        if args.image or args.out or args.in_place:
            raise ProvisionError("give either --boot-dir or --image (with --out or "
                                 "--in-place), not both")
        return Target("boot-dir", args.boot_dir)
    if args.image is None:
        raise ProvisionError("missing parameter: --image (a Raspberry Pi OS .img or "
                             ".img.xz) or --boot-dir (a mounted boot partition)")
    if not args.image.is_file():
        raise ProvisionError(f"--image {args.image}: no such file")
    if args.in_place:
        if args.out is not None:
            raise ProvisionError("--in-place and --out exclude each other")
        if args.image.suffix.lower() == ".xz":
            raise ProvisionError("--in-place needs an uncompressed .img (give --out to "
                                 "decompress a .img.xz)")
        return Target("image", args.image)
    if args.out is None:
        raise ProvisionError("missing parameter: --out (the image file to write) or "
                             "--in-place")
    if args.out.exists():
        raise ProvisionError(f"--out {args.out} exists: remove it or choose another name")
    return Target("image", args.out, args.image)


def _read_secret(path: Path | None, what: str) -> str | None:
    if path is None:
        return None
    from gateway.provision.params import read_text_file

    lines = read_text_file(path, what).splitlines()
    return lines[0].strip() if lines else ""


def main(argv: Sequence[str]) -> int:
    args_list = list(argv)
    if args_list and args_list[0] == "bulk":
        from gateway.provision.bulk import main as bulk_main

        return bulk_main(args_list[1:])
    if args_list and args_list[0] == "upgrade-bundle":
        return _upgrade_bundle(args_list[1:])
    args = _parser().parse_args(args_list)
    try:
        return _single(args)
    except ProvisionError as exc:
        _refuse(exc)
        return 2
    except KeyboardInterrupt:
        print("fieldlink provision: interrupted; nothing was registered", file=sys.stderr)
        return 130


def _refuse(exc: ProvisionError) -> None:
    if len(exc.problems) == 1:
        print(f"fieldlink provision: {exc.problems[0]}", file=sys.stderr)
    else:
        print("fieldlink provision: refused:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)


def _single(args: argparse.Namespace) -> int:
    from gateway.provision import run
    from gateway.provision.params import build_params, read_key_file
    from gateway.provision.sensors import DEFAULT_PATTERN, generate_sensors, load_sensor_file

    target = _target(args)
    if args.sensors is not None and args.generate_sensors is not None:
        raise ProvisionError("give either --sensors or --generate-sensors, not both")
    sensors: tuple = ()
    if args.sensors is not None:
        sensors = load_sensor_file(args.sensors)
    elif args.generate_sensors and args.gateway_id:
        sensors = generate_sensors(args.generate_sensors, args.gateway_id,
                                   args.sensor_pattern or DEFAULT_PATTERN)
    password = args.wifi_password
    if args.wifi_password_file is not None:
        password = _read_secret(args.wifi_password_file, "--wifi-password-file")
    params = build_params(
        gateway_id=args.gateway_id, uplink_url=args.uplink_url, hostname=args.hostname,
        secret=_read_secret(args.secret_file, "--secret-file"),
        ssh_key_text=(read_key_file(args.ssh_key, "--ssh-key")
                      if args.ssh_key is not None and not args.no_ssh else None),
        ssh_key_source=f"--ssh-key {args.ssh_key}", allow_no_ssh=args.no_ssh,
        admin_user=args.admin_user, timezone=args.timezone, wifi_ssid=args.wifi_ssid,
        wifi_password=password, wifi_country=args.wifi_country, sensors=sensors)
    session = run.Session.from_args(args, beside=target.beside)
    session.check_new([params.gateway_id])
    if target.kind == "boot-dir":
        result = session.provision_dir(params, target.out)
    else:
        result = session.provision_image(params, target.out, source=target.source)
    sensors_out = args.sensors_out or target.beside / f"{params.gateway_id}.sensors.csv"
    session.report(result, params, sensors_out)
    return 0


def _upgrade_bundle(argv: list[str]) -> int:
    """The installer and wheels without any gateway's config: what an upgrade needs."""
    parser = argparse.ArgumentParser(
        prog="fieldlink provision upgrade-bundle",
        description="Write OUT/fieldlink/ with install.sh, the unit, the journald drop-in and "
                    "the wheels, to upgrade running gateways: copy it to a Pi and run "
                    "`sudo bash fieldlink/install.sh` there (docs/operations.md).")
    parser.add_argument("--out", type=Path, required=True, help="output directory (new)")
    add_run_options(parser)
    args = parser.parse_args(argv)
    try:
        from gateway.provision import run
        from gateway.provision.provisioner import DEPLOY_FILES

        if args.out.exists():
            raise ProvisionError(f"--out {args.out} exists: remove it or choose another name")
        session = run.Session.from_args(args, beside=Path.cwd())
        session.load_wheels()
        target = args.out / "fieldlink"
        (target / "wheels").mkdir(parents=True)
        for name in DEPLOY_FILES:
            shutil.copyfile(session.assets.deploy_dir / name, target / name)
        for wheel in session.assets.wheels:
            shutil.copyfile(wheel, target / "wheels" / wheel.name)
    except ProvisionError as exc:
        _refuse(exc)
        return 2
    print(f"{target}: installer and {len(session.assets.wheels)} wheels; on the Pi run "
          f"`sudo bash {target.name}/install.sh`")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))

