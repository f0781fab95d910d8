"""`fieldlink provision` against real disk images: built with sfdisk/mkfs.vfat, written and
read back with mtools, user-data checked by `cloud-init schema`.  No root, no mounts.

The image is the Raspberry Pi OS layout in small: an 80 MiB disk, MBR, a 64 MiB FAT32 boot
partition at 4 MiB and a Linux partition after it.  Missing tools (mtools, dosfstools,
fdisk, cloud-init) are installed with apt when possible; otherwise the tests fail under
CI=true and skip elsewhere.
"""

from __future__ import annotations

import base64
import csv
import json
import lzma
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge.config.gateway import load_gateway_config
from gateway.auth.credentials import load_accounts
from gateway.auth.passwords import verify_password

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
BOOT_OFFSET = 4 * MIB
CMDLINE = "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 " \
          "fsck.repair=yes rootwait quiet\n"
_BLOB = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes(range(32))
SSH_KEY = f"ssh-ed25519 {base64.b64encode(_BLOB).decode()} ops@plant\n"
ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def unavailable(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


def need(tool: str, package: str) -> str:
    """The tool's path; installs its Debian package (as root) when missing."""
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        # policy-rc.d: a package must not start services (cloud-init ships several)
        policy = Path("/usr/sbin/policy-rc.d")
        added = not policy.exists()
        if added:
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
        try:
            cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
            if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
                subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
                subprocess.run(cmd, env=env, capture_output=True)
        finally:
            if added:
                policy.unlink()
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if not path:
        unavailable(f"{tool} is not installed (Debian package {package}) and could not be "
                    "installed")
    assert path is not None
    return path


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    return {"mcopy": need("mcopy", "mtools"), "mkfs.vfat": need("mkfs.vfat", "dosfstools"),
            "sfdisk": need("sfdisk", "fdisk")}


def make_image(tools: dict[str, str], path: Path, files: dict[str, str], *,
               fat_type: str = "c", fat_mib: int = 64, fat_bits: int = 32,
               disk_mib: int = 80) -> Path:
    """A disk image: MBR, a FAT partition at 4 MiB holding `files`, a Linux partition."""
    subprocess.run(["truncate", "-s", f"{disk_mib}M", str(path)], check=True)
    start, size = BOOT_OFFSET // 512, fat_mib * MIB // 512
    table = (f"label: dos\nstart={start}, size={size}, type={fat_type}, bootable\n"
             f"start={start + size}, type=83\n")
    subprocess.run([tools["sfdisk"], "-q", str(path)], input=table, text=True, check=True)
    fat = path.with_suffix(".fat")
    subprocess.run(["truncate", "-s", f"{fat_mib}M", str(fat)], check=True)
    subprocess.run([tools["mkfs.vfat"], "-F", str(fat_bits), "-n", "BOOTFS", str(fat)],
                   check=True, capture_output=True)
    subprocess.run(["dd", f"if={fat}", f"of={path}", "bs=1M", f"seek={BOOT_OFFSET // MIB}",
                    "conv=notrunc", "status=none"], check=True)
    fat.unlink()
    staging = path.parent / f"{path.stem}-files"
    staging.mkdir()
    for name, text in files.items():
        (staging / name).write_text(text)
        mput(path, staging / name, name)
    return path


def mput(image: Path, local: Path, name: str) -> None:
    subprocess.run(["mcopy", "-o", "-i", f"{image}@@{BOOT_OFFSET}", str(local), f"::/{name}"],
                   check=True, env=ENV)


def mtype(image: Path, name: str) -> str:
    return subprocess.run(["mtype", "-i", f"{image}@@{BOOT_OFFSET}", f"::/{name}"],
                          check=True, capture_output=True, text=True, env=ENV).stdout


def mdir(image: Path) -> set[str]:
    out = subprocess.run(["mdir", "-/", "-b", "-i", f"{image}@@{BOOT_OFFSET}", "::/"],
                         check=True, capture_output=True, text=True, env=ENV).stdout
    return {line.removeprefix("::/") for line in out.splitlines() if line.strip()}


def provision(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """`fieldlink provision ARGS --quiet` (a subcommand name must come first in ARGS)."""
    return subprocess.run([sys.executable, "-m", "edge.cli", "provision", *map(str, args),
                           "--quiet"], capture_output=True, text=True, cwd=REPO, timeout=240)


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "ops.pub"
    path.write_text(SSH_KEY)
    return path


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    """Stand-in wheels: the tests here check they are copied, test_rpi_install installs."""
    d = tmp_path / "wheels"
    d.mkdir()
    (d / "fieldlink-0.1.0-py3-none-any.whl").write_bytes(b"PK" + os.urandom(2000))
    (d / "msgpack-1.0.0-cp311-cp311-manylinux_2_17_aarch64.whl").write_bytes(b"PK" + bytes(9000))
    return d


def common(key: Path, wheels: Path) -> list[str | Path]:
    return ["--uplink-url", "https://ingest.example.com:8700", "--ssh-key", key,
            "--wifi-ssid", "plant-net", "--wifi-password", "correct horse",
            "--wifi-country", "de", "--timezone", "Europe/Berlin", "--wheels-dir", wheels]


def test_cloud_init_image(tools: dict[str, str], tmp_path: Path, key: Path,
                          wheels: Path) -> None:
    src = make_image(tools, tmp_path / "raspios.img",
                     {"cmdline.txt": CMDLINE, "config.txt": "arm_64bit=1\n",
                      "user-data": "#cloud-config\n", "meta-data": "instance-id: stock\n"})
    out = tmp_path / "cards" / "gw-01.img"
    proc = provision("--image", src, "--out", out, "--gateway-id", "gw-01",
                     "--generate-sensors", "3", *common(key, wheels))
    assert proc.returncode == 0, proc.stderr
    assert "cloud-init first boot written" in proc.stdout

    files = mdir(out)
    for name in ("user-data", "network-config", "meta-data", "fieldlink/install.sh",
                 "fieldlink/fieldlink-gateway.service", "fieldlink/etc/gateway.yaml",
                 "fieldlink/etc/rules.yaml", "fieldlink/etc/fieldlink.env",
                 "fieldlink/etc/credentials/mqtt-credentials.json",
                 "fieldlink/wheels/fieldlink-0.1.0-py3-none-any.whl", "fieldlink/provision.json"):
        assert name in files, sorted(files)
    assert "user-data" in mdir(src) and mtype(src, "user-data") == "#cloud-config\n"  # source untouched
    assert mtype(out, "cmdline.txt") == CMDLINE  # cloud-init images need no hook

    user_data = mtype(out, "user-data")
    cfg = yaml.safe_load(user_data)
    assert cfg["hostname"] == "gw-01"
    assert cfg["users"][0]["ssh_authorized_keys"] == [SSH_KEY.strip()]
    (tmp_path / "user-data").write_text(user_data)
    cloud_init = need("cloud-init", "cloud-init")
    schema = subprocess.run([cloud_init, "schema", "--config-file", str(tmp_path / "user-data")],
                            capture_output=True, text=True)
    assert schema.returncode == 0, schema.stdout + schema.stderr
    assert "Valid cloud-config" in schema.stdout

    net = yaml.safe_load(mtype(out, "network-config"))["network"]
    assert list(net["wifis"]["wlan0"]["access-points"]) == ["plant-net"]
    assert "correct horse" not in mtype(out, "network-config")
    assert yaml.safe_load(mtype(out, "meta-data"))["instance-id"].startswith("fieldlink-gw-01-")

    registry = json.loads((out.parent / "cloud-gateways.yaml").read_text())
    secret = registry["gw-01"]
    assert mtype(out, "fieldlink/etc/fieldlink.env").splitlines()[-1] == \
        f"FIELDLINK_UPLINK__GATEWAY_SECRET={secret}"
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "gateway.yaml").write_text(mtype(out, "fieldlink/etc/gateway.yaml"))
    (conf / "rules.yaml").write_text(mtype(out, "fieldlink/etc/rules.yaml"))
    gw = load_gateway_config(conf / "gateway.yaml",
                             environ={"FIELDLINK_UPLINK__GATEWAY_SECRET": secret})
    assert gw.gateway.id == "gw-01" and gw.uplink.url == "https://ingest.example.com:8700"
    assert secret not in (conf / "gateway.yaml").read_text()

    (conf / "creds.json").write_text(mtype(out, "fieldlink/etc/credentials/mqtt-credentials.json"))
    accounts = load_accounts(conf / "creds.json")
    rows = list(csv.DictReader((out.parent / "gw-01.sensors.csv").open()))
    assert [r["username"] for r in rows] == ["gw-01-s001", "gw-01-s002", "gw-01-s003"]
    assert all(verify_password(accounts[r["username"]].password_hash, r["password"])
               for r in rows)
    ledger = [json.loads(x) for x in (out.parent / "provisioned.jsonl").read_text().splitlines()]
    assert [e["gateway_id"] for e in ledger] == ["gw-01"]

    again = provision("--image", src, "--out", tmp_path / "cards" / "gw-01b.img",
                      "--gateway-id", "gw-01", *common(key, wheels))
    assert again.returncode == 2
    assert "gateway 'gw-01' is already provisioned" in again.stderr
    assert not (tmp_path / "cards" / "gw-01b.img").exists()


def test_firstrun_image_from_xz(tools: dict[str, str], tmp_path: Path, key: Path,
                                wheels: Path) -> None:
    img = make_image(tools, tmp_path / "raspios.img",
                     {"cmdline.txt": CMDLINE, "config.txt": "arm_64bit=1\n",
                      "issue.txt": "Raspberry Pi reference 2024-11-19\n"})
    xz = tmp_path / "raspios.img.xz"
    xz.write_bytes(lzma.compress(img.read_bytes(), preset=0))
    out = tmp_path / "gw-02.img"
    proc = provision("--image", xz, "--out", out, "--gateway-id", "gw-02",
                     "--hostname", "line-2-gw", *common(key, wheels))
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size == img.stat().st_size
    files = mdir(out)
    assert "firstrun.sh" in files and "user-data" not in files
    cmdline = mtype(out, "cmdline.txt")
    assert cmdline == CMDLINE.rstrip("\n") + (
        " systemd.run=/boot/firmware/firstrun.sh systemd.run_success_action=reboot "
        "systemd.unit=kernel-command-line.target\n")
    script = mtype(out, "firstrun.sh")
    assert "NEW_HOST=line-2-gw" in script and SSH_KEY.strip() in script
    (tmp_path / "firstrun.sh").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "firstrun.sh")]).returncode == 0


def test_boot_dir_and_refusals(tools: dict[str, str], tmp_path: Path, key: Path,
                               wheels: Path) -> None:
    boot = tmp_path / "bootfs"
    boot.mkdir()
    (boot / "cmdline.txt").write_text(CMDLINE)
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "provision", "-q", "--boot-dir",
                           str(boot), "--gateway-id", "gw-03", "--sensors-out",
                           str(tmp_path / "s.csv"), *map(str, common(key, wheels))],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (boot / "firstrun.sh").is_file() and (boot / "fieldlink" / "install.sh").is_file()
    assert (tmp_path / "provisioned.jsonl").is_file()

    linux_only = tmp_path / "linux.img"
    subprocess.run(["truncate", "-s", "16M", str(linux_only)], check=True)
    subprocess.run([tools["sfdisk"], "-q", str(linux_only)], input="label: dos\nstart=2048, type=83\n",
                   text=True, check=True)
    proc = provision("--image", linux_only, "--out", tmp_path / "x.img", "--gateway-id", "gw-x",
                     *common(key, wheels))
    assert proc.returncode == 2
    assert "no FAT boot partition (MBR table: partition 1: 0x83 Linux" in proc.stderr
    assert not (tmp_path / "x.img").exists()

    proc = provision("--image", linux_only, "--out", tmp_path / "y.img", "--wifi-country",
                     "Germany", "--ssh-key", linux_only)
    assert proc.returncode == 2
    assert "missing parameters: --gateway-id, --uplink-url" in proc.stderr
    assert "is not an OpenSSH public key: it holds binary data" in proc.stderr
    assert "Wi-Fi country 'Germany' is not a 2-letter ISO 3166 code" in proc.stderr


def test_not_enough_space_is_refused_before_writing(tools: dict[str, str], tmp_path: Path,
                                                    key: Path, wheels: Path) -> None:
    small = make_image(tools, tmp_path / "small.img", {"cmdline.txt": CMDLINE},
                       fat_type="e", fat_mib=16, fat_bits=16, disk_mib=24)
    (wheels / "numpy-2.0-cp311-cp311-manylinux_2_17_aarch64.whl").write_bytes(
        os.urandom(17 * MIB))
    proc = provision("--image", small, "--in-place", "--gateway-id", "gw-04",
                     *common(key, wheels))
    assert proc.returncode == 2
    assert "need" in proc.stderr and "MiB free" in proc.stderr
    assert mdir(small) == {"cmdline.txt"}
    assert not (tmp_path / "cloud-gateways.yaml").exists()


def test_bulk_images_and_bundles(tools: dict[str, str], tmp_path: Path, key: Path,
                                 wheels: Path) -> None:
    src = make_image(tools, tmp_path / "raspios.img",
                     {"cmdline.txt": CMDLINE, "user-data": "#cloud-config\n"})
    sensors = tmp_path / "line1.yaml"
    sensors.write_text("press-01: pw-press-0001\npress-02: pw-press-0002\n")
    table = tmp_path / "gateways.csv"
    table.write_text("gateway_id,hostname,wifi_ssid,wifi_password,sensors,generate_sensors\n"
                     "gw-a,,plant-net,password-a,line1.yaml,\n"
                     "gw-b,gateway-b,,,,2\n"
                     "gw-c,,,,,\n")
    out = tmp_path / "cards"
    base = ["--uplink-url", "https://ingest.example.com", "--ssh-key", key,
            "--wifi-country", "DE", "--wheels-dir", wheels]
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "provision", "bulk", "-q",
                           "--csv", str(table), "--image", str(src), "--out", str(out),
                           *map(str, base)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "3 gateways provisioned" in proc.stdout
    secrets = json.loads((out / "cloud-gateways.yaml").read_text())
    assert sorted(secrets) == ["gw-a", "gw-b", "gw-c"] and len(set(secrets.values())) == 3
    for gid in secrets:
        assert mtype(out / f"{gid}.img", "fieldlink/etc/fieldlink.env").endswith(
            f"={secrets[gid]}\n")
    assert yaml.safe_load(mtype(out / "gw-b.img", "user-data"))["hostname"] == "gateway-b"
    assert "wifis" not in yaml.safe_load(mtype(out / "gw-c.img", "network-config"))["network"]
    assert len(list(csv.DictReader((out / "gw-b.sensors.csv").open()))) == 2
    accounts = json.loads(mtype(out / "gw-a.img",
                                "fieldlink/etc/credentials/mqtt-credentials.json"))
    assert sorted(accounts["accounts"]) == ["press-01", "press-02"]

    # a second run with one known gateway refuses everything, writes nothing
    table.write_text("gateway_id\ngw-d\ngw-b\n")
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "provision", "bulk", "-q",
                           "--csv", str(table), "--image", str(src), "--out", str(out),
                           "--bundle", *map(str, base)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "gateway 'gw-b' is already provisioned" in proc.stderr
    assert not (out / "gw-d").exists()

    table.write_text("gateway_id,wifi_country\ngw-d,\ngw-e,XYZ\ngw-d,\n")
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "provision", "bulk", "-q",
                           "--csv", str(table), "--image", str(src), "--out", str(out),
                           "--bundle", *map(str, base)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "row 3 (gw-e): Wi-Fi country 'XYZ' is not a 2-letter" in proc.stderr
    assert "row 4: gateway 'gw-d' is also in row 2" in proc.stderr

    table.write_text("gateway_id\ngw-d\ngw-e\n")
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "provision", "bulk", "-q",
                           "--csv", str(table), "--image", str(src), "--out", str(out),
                           "--bundle", *map(str, base)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (out / "gw-d" / "user-data").is_file()
    assert (out / "gw-e" / "fieldlink" / "etc" / "fieldlink.env").is_file()
    assert len(json.loads((out / "cloud-gateways.yaml").read_text())) == 5
    assert len((out / "provisioned.jsonl").read_text().splitlines()) == 5


def test_upgrade_bundle_and_help(tmp_path: Path, wheels: Path) -> None:
    proc = provision("upgrade-bundle", "--out", tmp_path / "up", "--wheels-dir", wheels)
    assert proc.returncode == 0, proc.stderr
    bundle = tmp_path / "up" / "fieldlink"
    assert (bundle / "install.sh").read_bytes() == (REPO / "deploy/rpi/install.sh").read_bytes()
    assert sorted(p.name for p in (bundle / "wheels").iterdir()) == sorted(
        p.name for p in wheels.iterdir())
    assert not list(tmp_path.glob("**/cloud-gateways.yaml"))
    again = provision("upgrade-bundle", "--out", tmp_path / "up", "--wheels-dir", wheels)
    assert again.returncode == 2 and "exists" in again.stderr

    help_text = subprocess.run([sys.executable, "-m", "edge.cli", "provision", "--help"],
                               capture_output=True, text=True).stdout
    assert "examples:" in help_text and "fieldlink provision bulk --csv" in help_text
    bulk_help = subprocess.run([sys.executable, "-m", "edge.cli", "provision", "bulk", "--help"],
                               capture_output=True, text=True).stdout
    assert "gateway_id" in bulk_help and "--bundle" in bulk_help
