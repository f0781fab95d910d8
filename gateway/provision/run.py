"""One provisioning run: shared assets, wheels and registry, applied to one or many cards.

`Session` is built once per command (`Session.from_args`): it locates the installer files,
the gateway.yaml template and the rules, collects the wheels (built/downloaded once for a
whole bulk run) and opens the ledger and cloud registry.  Then, per gateway:

* `provision_image(params, out, source=...)` — copy/decompress `source` to `out` (or modify
  `out` in place), find its FAT boot partition, provision it;
* `provision_dir(params, boot_dir)` — provision a mounted boot partition;
* `provision_bundle(params, out_dir, reference)` — stage the boot-partition files in a
  directory, with the free-space check and first-boot detection done against `reference`
  (the image the bundle will be copied onto).

Ordering guarantee: a gateway is recorded (registry + ledger, under the registry lock)
only after its card or bundle was written completely; if recording fails (a concurrent run
took the id), the output is removed again.  So the registry never names a gateway without
a card, and no card carries a secret the cloud does not know.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from gateway.errors import ProvisionError
from gateway.provision import wheels as wheelmod
from gateway.provision.bootfs import BootFs, DirBootFs, ImageBootFs, require_mtools
from gateway.provision.media import prepare_image
from gateway.provision.params import GatewayParams
from gateway.provision.partitions import find_boot_partition
from gateway.provision.provisioner import Assets, Result, provision_boot
from gateway.provision.registry import Registry
from gateway.provision.sensors import write_plain_csv

__all__ = ["BundleBootFs", "Session"]


class BundleBootFs:
    """A bundle directory standing for the boot partition of `reference` (an image)."""

    def __init__(self, path: Path, reference: BootFs) -> None:
        self.path, self.reference = path, reference

    def describe(self) -> str:
        return f"bundle {self.path}"

    def read(self, name: str) -> bytes | None:
        return self.reference.read(name)

    def free_bytes(self) -> int:
        return self.reference.free_bytes()

    def cluster_bytes(self) -> int:
        return self.reference.cluster_bytes()

    def apply(self, staging: Path) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        DirBootFs(self.path).apply(staging)


class Session:
    def __init__(self, assets: Assets, registry: Registry, *, mechanism: str = "auto",
                 boot_mount: str | None = None, reprovision: bool = False,
                 show_progress: bool = True,
                 wheel_args: argparse.Namespace | None = None) -> None:
        self.assets, self.registry = assets, registry
        #: the command's wheel options (None: ship `assets.wheels` as they are)
        self.wheel_args = wheel_args
        self.mechanism, self.boot_mount = mechanism, boot_mount
        self.reprovision, self.show_progress = reprovision, show_progress

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, beside: Path) -> Session:
        root = args.source or wheelmod.source_root()

        def default(given: Path | None, *rel: str, option: str) -> Path:
            if given is not None:
                return given
            if root is None:
                raise ProvisionError(f"{option} is needed: fieldlink is not running from a "
                                     "source tree (or give --source DIR)")
            return root.joinpath(*rel)

        assets = Assets(
            deploy_dir=default(args.deploy_dir, "deploy", "rpi", option="--deploy-dir"),
            gateway_template=default(args.gateway_template, "config", "gateway.yaml",
                                     option="--gateway-template"),
            rules_file=default(args.rules, "config", "rules.yaml", option="--rules"))
        assets.check()
        registry = Registry(ledger_path=args.ledger or beside / "provisioned.jsonl",
                            cloud_path=args.cloud_gateways or beside / "cloud-gateways.yaml")
        return cls(assets, registry, mechanism=args.first_boot, boot_mount=args.boot_mount,
                   reprovision=args.reprovision, show_progress=not args.quiet, wheel_args=args)

    def check_new(self, gateway_ids: list[str]) -> None:
        """Refuse ids already provisioned (before any slow work)."""
        if not self.reprovision:
            dup = self.registry.duplicates(gateway_ids)
            if dup:
                raise ProvisionError(dup)

    def load_wheels(self) -> None:
        """Collect the wheels once (no-op when already done or with --no-wheels)."""
        args = self.wheel_args
        if self.assets.wheels or args is None or args.no_wheels:
            return
        opts = wheelmod.WheelOptions(
            platforms=tuple(args.platforms or wheelmod.DEFAULT_PLATFORMS),
            python_version=args.python_version, extra=args.extra,
            cache=args.wheel_cache or wheelmod.default_cache(), source=args.source,
            show_progress=self.show_progress)
        found = wheelmod.collect_wheels(opts, wheels_dir=args.wheels_dir,
                                        refresh=args.refresh_wheels)
        self.assets = Assets(self.assets.deploy_dir, self.assets.gateway_template,
                             self.assets.rules_file, tuple(found))

    def _record(self, params: GatewayParams, result: Result, output: Path,
                cleanup: Path | None) -> None:
        entry = {"gateway_id": params.gateway_id, "hostname": params.hostname,
                 "uplink_url": params.uplink_url, "output": str(output),
                 "mechanism": result.mechanism, "sensors": len(params.sensors)}
        try:
            with self.registry.transaction():
                self.registry.record(entry, params.secret, reprovision=self.reprovision)
        except BaseException:
            if cleanup is not None:
                if cleanup.is_dir():
                    shutil.rmtree(cleanup, ignore_errors=True)
                else:
                    cleanup.unlink(missing_ok=True)
            raise

    def provision_image(self, params: GatewayParams, out: Path, *,
                        source: Path | None) -> Result:
        require_mtools()
        if source is not None and source.suffix.lower() != ".xz":
            find_boot_partition(source)  # fail on a bad image before copying gigabytes
        self.load_wheels()
        created = False
        try:
            if source is not None:
                prepare_image(source, out, show_progress=self.show_progress)
                created = True
            _, boot = find_boot_partition(out)
            result = provision_boot(ImageBootFs(out, boot.offset), params, self.assets,
                                    mechanism=self.mechanism, boot_mount=self.boot_mount)
        except BaseException:
            if created:
                out.unlink(missing_ok=True)
            raise
        self._record(params, result, out, out if created else None)
        return result

    def provision_dir(self, params: GatewayParams, boot_dir: Path) -> Result:
        self.load_wheels()
        result = provision_boot(DirBootFs(boot_dir), params, self.assets,
                                mechanism=self.mechanism, boot_mount=self.boot_mount)
        self._record(params, result, boot_dir, None)
        return result

    def provision_bundle(self, params: GatewayParams, out_dir: Path,
                         reference: BootFs) -> Result:
        if out_dir.exists():
            raise ProvisionError(f"{out_dir} exists: remove it or choose another --out")
        self.load_wheels()
        try:
            result = provision_boot(BundleBootFs(out_dir, reference), params, self.assets,
                                    mechanism=self.mechanism, boot_mount=self.boot_mount)
        except BaseException:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise
        self._record(params, result, out_dir, out_dir)
        return result

    def report(self, result: Result, params: GatewayParams, sensors_out: Path) -> None:
        """Tell the operator what was written and where the secrets went (stdout)."""
        if params.sensors:
            write_plain_csv(sensors_out, params.gateway_id, params.sensors)
        lines = [f"gateway {params.gateway_id} (hostname {params.hostname}): "
                 f"{result.mechanism} first boot written to {result.target}",
                 f"  {len(result.files)} files, {result.bytes_written / 2**20:.1f} MiB of "
                 f"{result.free_before / 2**20:.1f} MiB free",
                 f"  secret registered in {self.registry.cloud_path} (mode 0600)"]
        if params.sensors:
            lines.append(f"  {len(params.sensors)} sensor accounts; their passwords are in "
                         f"{sensors_out} (mode 0600)")
        if not any(f.startswith("fieldlink/wheels/") for f in result.files):
            lines.append("  no wheels on the card: run install.sh with --wheels on the Pi")
        print("\n".join(lines), file=sys.stdout, flush=True)
