"""First-boot files: cloud-init user-data / network-config / meta-data and firstrun.sh."""

from __future__ import annotations

import base64
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import yaml

from gateway.provision import firstboot
from gateway.provision.params import GatewayParams, build_params
from gateway.provision.provisioner import boot_mount_point

_BLOB = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes(32)
KEY = f"ssh-ed25519 {base64.b64encode(_BLOB).decode()} ops@plant"


def gw(**over: object) -> GatewayParams:
    args: dict[str, object] = dict(gateway_id="gw-01", uplink_url="https://ingest.example.com",
                                   ssh_key_text=KEY, wifi_ssid="plant net",
                                   wifi_password="correct horse", wifi_country="DE",
                                   timezone="Europe/Berlin")
    args.update(over)
    return build_params(**args)  # type: ignore[arg-type]


def test_wpa_psk_known_vectors() -> None:
    # IEEE 802.11i-2004 annex H.4 test vector, and a 64-hex PSK passes through
    assert firstboot.wpa_psk("IEEE", "password") == (
        "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e")
    assert firstboot.wpa_psk("x", "AB" * 32) == "ab" * 32


def test_user_data_is_cloud_config_with_host_key_and_installer() -> None:
    text = firstboot.user_data(gw())
    assert text.startswith("#cloud-config\n")
    cfg = yaml.safe_load(text)
    assert cfg["hostname"] == "gw-01"
    assert cfg["timezone"] == "Europe/Berlin"
    assert cfg["ssh_pwauth"] is False
    (user,) = cfg["users"]
    assert user["name"] == "fieldadmin" and user["lock_passwd"] is True
    assert user["ssh_authorized_keys"] == [KEY]
    commands = [" ".join(c) if isinstance(c, list) else c for c in cfg["runcmd"]]
    assert any("do_wifi_country DE" in c for c in commands)
    assert commands[-1].startswith("sh -c for d in /boot/firmware /boot;")
    assert "fieldlink/install.sh" in commands[-1]
    assert "correct horse" not in text


def test_user_data_without_ssh_has_no_users() -> None:
    cfg = yaml.safe_load(firstboot.user_data(gw(ssh_key_text=None, allow_no_ssh=True,
                                                wifi_ssid=None, wifi_password=None,
                                                wifi_country=None, timezone=None)))
    assert "users" not in cfg and "timezone" not in cfg
    assert len(cfg["runcmd"]) == 1


def test_network_config_v2_with_hashed_psk() -> None:
    p = gw()
    net = yaml.safe_load(firstboot.network_config(p))["network"]
    assert net["version"] == 2
    assert net["ethernets"]["eth0"]["dhcp4"] is True
    wlan = net["wifis"]["wlan0"]
    assert wlan["regulatory-domain"] == "DE"
    assert wlan["access-points"] == {
        "plant net": {"password": firstboot.wpa_psk("plant net", "correct horse")}}
    assert "correct horse" not in firstboot.network_config(p)


def test_network_config_ethernet_only() -> None:
    p = gw(wifi_ssid=None, wifi_password=None, wifi_country=None)
    net = yaml.safe_load(firstboot.network_config(p))["network"]
    assert "wifis" not in net and "eth0" in net["ethernets"]


def test_meta_data_instance_id_changes_per_provisioning() -> None:
    a = yaml.safe_load(firstboot.meta_data(gw(), now_s=1000))
    b = yaml.safe_load(firstboot.meta_data(gw(), now_s=2000))
    assert a["local-hostname"] == "gw-01"
    assert a["instance-id"] != b["instance-id"]


def test_detect_mechanism() -> None:
    assert firstboot.detect_mechanism({"cmdline.txt": b"console=tty1 root=x"}) == "firstrun"
    assert firstboot.detect_mechanism({"cmdline.txt": b"root=x", "user-data": b""}) == \
        "cloud-init"
    assert firstboot.detect_mechanism({"cmdline.txt": b"root=x ds=nocloud;s=/boot/"}) == \
        "cloud-init"


def test_cmdline_hook_is_appended_once() -> None:
    line = "console=serial0,115200 root=PARTUUID=abc-02 rootwait quiet\n"
    once = firstboot.cmdline_with_firstrun(line, "/boot/firmware/firstrun.sh")
    assert once == ("console=serial0,115200 root=PARTUUID=abc-02 rootwait quiet "
                    "systemd.run=/boot/firmware/firstrun.sh systemd.run_success_action=reboot "
                    "systemd.unit=kernel-command-line.target\n")
    assert firstboot.cmdline_with_firstrun(once, "/boot/firmware/firstrun.sh") == once
    assert once.count("\n") == 1


def test_boot_mount_point_from_the_image_date() -> None:
    assert boot_mount_point({"issue.txt": b"Raspberry Pi reference 2024-11-19\n"}) == \
        "/boot/firmware"
    assert boot_mount_point({"issue.txt": b"Raspberry Pi reference 2023-05-03\n"}) == "/boot"
    assert boot_mount_point({"bcm2712-rpi-5-b.dtb": b"\xd0\x0d"}) == "/boot/firmware"
    assert boot_mount_point({}) == "/boot"


def test_firstrun_script(tmp_path: Path) -> None:
    text = firstboot.firstrun_script(gw(hostname="gw-one"))
    assert text.startswith("#!/bin/bash\n")
    assert "NEW_HOST=gw-one" in text
    assert KEY in text
    assert "COUNTRY=DE" in text and "rfkill unblock wifi" in text
    assert f"psk={firstboot.wpa_psk('plant net', 'correct horse')}" in text
    assert f"ssid={b'plant net'.hex()}" in text  # wpa_supplicant: hex SSID, no quoting issues
    assert "correct horse" not in text
    assert "TZ_NAME=Europe/Berlin" in text
    assert 'bash "$BOOT/fieldlink/install.sh"' in text
    assert text.rstrip().endswith("exit 0")
    script = tmp_path / "firstrun.sh"
    script.write_text(text)
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_firstrun_script_passes_shellcheck(tmp_path: Path) -> None:
    script = tmp_path / "firstrun.sh"
    script.write_text(firstboot.firstrun_script(gw()))
    proc = subprocess.run(["shellcheck", "-S", "warning", str(script)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout
