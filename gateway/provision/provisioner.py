"""Provision one gateway's boot partition: stage every file, check space, write.

`provision_boot(bootfs, params, assets)` is the whole operation for one card:

1. read the boot partition's `cmdline.txt` and cloud-init files and choose the first-boot
   mechanism (`firstboot.detect_mechanism`, or the one forced);
2. stage the files in a temporary directory — nothing touches the image yet:

   =================================  ===================================================
   ``user-data``, ``network-config``,  cloud-init first boot (or ``firstrun.sh`` and the
   ``meta-data``                       hooked ``cmdline.txt`` on older images)
   ``fieldlink/install.sh``            the installer, its unit and journald drop-in
   ``fieldlink/etc/gateway.yaml``      the gateway's config (`gatewayconf`)
   ``fieldlink/etc/rules.yaml``        the alert rules
   ``fieldlink/etc/fieldlink.env``     ``FIELDLINK_UPLINK__GATEWAY_SECRET=...``
   ``fieldlink/etc/credentials/...``   the sensors' MQTT accounts (argon2id hashes)
   ``fieldlink/wheels/*.whl``          fieldlink and its dependencies, for offline install
   ``fieldlink/provision.json``        what was provisioned (no secrets)
   =================================  ===================================================

3. refuse with `ProvisionError` when the staged files do not fit in the free space (whole
   clusters counted), before writing anything;
4. write them in one pass (`BootFs.apply`).

The installer moves `fieldlink.env` and the credentials off the boot partition on first
boot (a FAT partition has no permissions, and the card can be read anywhere).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge import __version__
from gateway.errors import ProvisionError
from gateway.provision import firstboot
from gateway.provision.bootfs import BootFs, bytes_needed
from gateway.provision.gatewayconf import SECRET_ENV, render_gateway_yaml
from gateway.provision.params import GatewayParams
from gateway.provision.sensors import credentials_file_bytes

__all__ = ["DEPLOY_FILES", "Assets", "Result", "boot_mount_point", "provision_boot", "stage"]

FL = firstboot.FIELDLINK_DIR
DEPLOY_FILES = ("install.sh", "fieldlink-gateway.service", "journald-fieldlink.conf")
#: Raspberry Pi OS moved the boot partition to /boot/firmware with Bookworm (2023-10-10)
_BOOKWORM = (2023, 10, 10)


@dataclass(frozen=True)
class Assets:
    """Files every gateway gets, located once per run."""

    deploy_dir: Path
    gateway_template: Path
    rules_file: Path
    wheels: tuple[Path, ...] = ()

    def check(self) -> None:
        problems = [f"{self.deploy_dir / name} is missing (give --deploy-dir, the "
                    "deploy/rpi directory of a fieldlink checkout)"
                    for name in DEPLOY_FILES if not (self.deploy_dir / name).is_file()]
        problems += [f"{what} {path} does not exist" for what, path in
                     (("--gateway-template", self.gateway_template),
                      ("--rules", self.rules_file)) if not path.is_file()]
        if problems:
            raise ProvisionError(problems)


@dataclass
class Result:
    gateway_id: str
    mechanism: str
    target: str
    bytes_written: int
    free_before: int
    files: list[str] = field(default_factory=list)


def boot_mount_point(files: dict[str, bytes | None]) -> str:
    """Where the running system mounts the boot partition: /boot/firmware from Bookworm on.

    Decided from `issue.txt` (the image's build date) and, failing that, the presence of a
    Raspberry Pi 5 device tree (only Bookworm and later images carry one).
    """
    issue = (files.get("issue.txt") or b"").decode(errors="replace")
    m = re.search(r"(\d{4})-(\d{2})-(\d{2})", issue)
    if m:
        return "/boot/firmware" if tuple(map(int, m.groups())) >= _BOOKWORM else "/boot"
    return "/boot/firmware" if files.get("bcm2712-rpi-5-b.dtb") is not None else "/boot"


def _write(path: Path, data: str | bytes) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    path.write_bytes(raw)
    return len(raw)


def stage(staging: Path, params: GatewayParams, assets: Assets, *, mechanism: str,
          boot_files: dict[str, bytes | None], boot_mount: str | None = None,
          now_s: float | None = None) -> None:
    """Write every file for the boot partition under `staging` (see module docstring)."""
    now = time.time() if now_s is None else now_s
    if mechanism == "cloud-init":
        _write(staging / "user-data", firstboot.user_data(params))
        _write(staging / "network-config", firstboot.network_config(params))
        _write(staging / "meta-data", firstboot.meta_data(params, now))
    elif mechanism == "firstrun":
        cmdline = boot_files.get("cmdline.txt")
        if cmdline is None:
            raise ProvisionError("the boot partition has no cmdline.txt, so firstrun.sh "
                                 "cannot be hooked in: is this a Raspberry Pi OS image?")
        mount = boot_mount or boot_mount_point(boot_files)
        _write(staging / "firstrun.sh", firstboot.firstrun_script(params))
        _write(staging / "cmdline.txt", firstboot.cmdline_with_firstrun(
            cmdline.decode(errors="replace"), f"{mount}/firstrun.sh"))
    else:
        raise ProvisionError(f"unknown first-boot mechanism {mechanism!r}")
    fl = staging / FL
    for name in DEPLOY_FILES:
        _write(fl / name, (assets.deploy_dir / name).read_bytes())
    template = assets.gateway_template.read_text()
    _write(fl / "etc" / "gateway.yaml", render_gateway_yaml(
        template, gateway_id=params.gateway_id, uplink_url=params.uplink_url,
        secret=params.secret, template_name=assets.gateway_template.name))
    _write(fl / "etc" / "rules.yaml", assets.rules_file.read_bytes())
    _write(fl / "etc" / "fieldlink.env",
           f"# gateway {params.gateway_id}: the uplink's HMAC secret (cloud ingest.gateways)\n"
           f"{SECRET_ENV}={params.secret}\n")
    if params.sensors:
        _write(fl / "etc" / "credentials" / "mqtt-credentials.json",
               credentials_file_bytes(params.sensors, staging))
    for wheel in assets.wheels:
        (fl / "wheels").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(wheel, fl / "wheels" / wheel.name)
    info = {"gateway_id": params.gateway_id, "hostname": params.hostname,
            "uplink_url": params.uplink_url, "mechanism": mechanism,
            "fieldlink_version": __version__, "sensors": len(params.sensors),
            "wheels": sorted(w.name for w in assets.wheels),
            "provisioned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}
    _write(fl / "provision.json", json.dumps(info, indent=2) + "\n")


def read_boot_files(bootfs: BootFs) -> dict[str, bytes | None]:
    names = ("cmdline.txt", "issue.txt", "bcm2712-rpi-5-b.dtb", *firstboot.CLOUD_INIT_FILES)
    return {name: bootfs.read(name) for name in names}


def provision_boot(bootfs: BootFs, params: GatewayParams, assets: Assets, *,
                   mechanism: str = "auto", boot_mount: str | None = None) -> Result:
    """Provision the boot partition `bootfs` for `params` (see module docstring)."""
    files = read_boot_files(bootfs)
    if files["cmdline.txt"] is None and files["user-data"] is None:
        raise ProvisionError(f"{bootfs.describe()} has neither cmdline.txt nor user-data: "
                             "not a Raspberry Pi OS boot partition")
    chosen = firstboot.detect_mechanism(files) if mechanism == "auto" else mechanism
    with tempfile.TemporaryDirectory(prefix="fieldlink-provision-") as tmp:
        staging = Path(tmp) / "boot"
        staging.mkdir()
        stage(staging, params, assets, mechanism=chosen, boot_files=files,
              boot_mount=boot_mount)
        cluster = bootfs.cluster_bytes()
        need, free = bytes_needed(staging, cluster), bootfs.free_bytes()
        if need > free:
            raise ProvisionError(
                f"{bootfs.describe()}: the files for {params.gateway_id} need "
                f"{need / 2**20:.1f} MiB but the boot partition has {free / 2**20:.1f} MiB "
                "free (fewer wheels: a smaller --extra, or a bigger boot partition)")
        written = sorted(str(p.relative_to(staging)) for p in staging.rglob("*")
                         if p.is_file())
        bootfs.apply(staging)
    return Result(params.gateway_id, chosen, bootfs.describe(), need, free, written)
