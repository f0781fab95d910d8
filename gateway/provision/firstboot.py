"""What a Raspberry Pi runs on its first boot: cloud-init files, or the older firstrun.sh.

Two mechanisms exist, and `detect_mechanism(bootfs)` picks the one the image uses:

* **cloud-init** (current Raspberry Pi OS images): `user-data` (``#cloud-config``: hostname,
  timezone, the admin user with its SSH key, SSH on, the Wi-Fi country, then the fieldlink
  installer via `runcmd`), `network-config` (version 2, netplan style: Ethernet by DHCP and
  the Wi-Fi network with its pre-hashed WPA PSK) and `meta-data` (a fresh `instance-id`, so
  cloud-init runs again on a re-provisioned card).
* **firstrun.sh** (older images): the script Raspberry Pi Imager's mechanism runs once via
  ``systemd.run=`` on the kernel command line (`cmdline_with_firstrun`); it sets the same
  things by hand, runs the installer, removes itself and its command-line entry, and the
  system reboots into the configured gateway.

Everything here is text generation: pure, no I/O.  The Wi-Fi passphrase never lands on
the card in clear — both paths carry the PSK, PBKDF2(passphrase, SSID), as wpa_supplicant,
NetworkManager and netplan accept it.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import time
from typing import Any

import yaml

from gateway.provision.params import GatewayParams

__all__ = ["CLOUD_INIT_FILES", "FIELDLINK_DIR", "FIRSTRUN_ARGS", "cmdline_with_firstrun",
           "detect_mechanism", "firstrun_script", "meta_data", "network_config",
           "user_data", "wpa_psk"]

#: the directory on the boot partition that holds the installer, wheels and config
FIELDLINK_DIR = "fieldlink"
CLOUD_INIT_FILES = ("user-data", "meta-data", "network-config")
FIRSTRUN_ARGS = ("systemd.run_success_action=reboot", "systemd.unit=kernel-command-line.target")
#: runs the installer from whichever mount point the boot partition has on this release
_INSTALL = ("for d in /boot/firmware /boot; do "
            f'if [ -f "$d/{FIELDLINK_DIR}/install.sh" ]; then '
            f'exec bash "$d/{FIELDLINK_DIR}/install.sh" >>/var/log/fieldlink-install.log 2>&1; '
            "fi; done; echo 'fieldlink: install.sh not found on the boot partition' >&2; exit 1")
_SSH_GROUPS = ["adm", "sudo", "dialout", "systemd-journal"]


def wpa_psk(ssid: str, passphrase: str) -> str:
    """The 256-bit WPA PSK (64 hex digits) for a passphrase; a 64-hex input is returned."""
    if re.fullmatch(r"[0-9a-fA-F]{64}", passphrase):
        return passphrase.lower()
    return hashlib.pbkdf2_hmac("sha1", passphrase.encode(), ssid.encode(), 4096, 32).hex()


def detect_mechanism(files: dict[str, bytes | None]) -> str:
    """"cloud-init" or "firstrun" from the boot partition's `cmdline.txt`, `user-data`...

    `files` maps the names in `CLOUD_INIT_FILES` and "cmdline.txt" to their contents (None:
    absent).  Any cloud-init file, or a command line naming cloud-init's NoCloud data
    source, means the image runs cloud-init on first boot.
    """
    if any(files.get(name) is not None for name in CLOUD_INIT_FILES):
        return "cloud-init"
    cmdline = (files.get("cmdline.txt") or b"").decode(errors="replace")
    if re.search(r"\bds=nocloud|cloud-init|cloud_init", cmdline, re.IGNORECASE):
        return "cloud-init"
    return "firstrun"


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000)


def user_data(p: GatewayParams) -> str:
    """`#cloud-config` for the first boot (valid for `cloud-init schema`)."""
    cfg: dict[str, Any] = {"hostname": p.hostname, "manage_etc_hosts": True}
    if p.timezone:
        cfg["timezone"] = p.timezone
    cfg["ssh_pwauth"] = False
    if p.ssh_keys:
        cfg["users"] = [{
            "name": p.admin_user,
            "gecos": "fieldlink administrator",
            "groups": _SSH_GROUPS,
            "shell": "/bin/bash",
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "lock_passwd": True,
            "ssh_authorized_keys": list(p.ssh_keys),
        }]
    runcmd: list[Any] = []
    if p.wifi_country:
        # Raspberry Pi OS keeps Wi-Fi rfkill-blocked until a country is set
        runcmd.append(["sh", "-c", f"raspi-config nonint do_wifi_country {p.wifi_country} "
                                   f"|| iw reg set {p.wifi_country} || true"])
        runcmd.append(["sh", "-c", "rfkill unblock wifi || true"])
    if p.ssh_keys:
        runcmd.append(["systemctl", "enable", "--now", "ssh"])
    runcmd.append(["sh", "-c", _INSTALL])
    cfg["runcmd"] = runcmd
    header = (f"#cloud-config\n# fieldlink gateway {p.gateway_id}: first-boot configuration "
              "written by `fieldlink provision`.\n")
    return header + _dump(cfg)


def network_config(p: GatewayParams) -> str:
    """cloud-init network config version 2: Ethernet by DHCP, plus the Wi-Fi if given."""
    net: dict[str, Any] = {"version": 2,
                           "ethernets": {"eth0": {"dhcp4": True, "optional": True}}}
    if p.wifi_ssid:
        assert p.wifi_password is not None
        wlan: dict[str, Any] = {"dhcp4": True, "optional": True}
        if p.wifi_country:
            wlan["regulatory-domain"] = p.wifi_country
        wlan["access-points"] = {p.wifi_ssid: {"password": wpa_psk(p.wifi_ssid,
                                                                   p.wifi_password)}}
        net["wifis"] = {"wlan0": wlan}
    return _dump({"network": net})


def meta_data(p: GatewayParams, now_s: float | None = None) -> str:
    """A new instance-id per provisioning: cloud-init runs its first-boot modules again."""
    stamp = int(time.time() if now_s is None else now_s)
    return _dump({"instance-id": f"fieldlink-{p.gateway_id}-{stamp}",
                  "local-hostname": p.hostname})


def cmdline_with_firstrun(cmdline: str, script: str) -> str:
    """`cmdline.txt` (one line) with the firstrun hook appended once.

    An earlier hook (a previous provisioning, or Raspberry Pi Imager's) is replaced, so
    re-provisioning a card never runs two scripts.
    """
    words = [w for w in cmdline.split() if not w.startswith(("systemd.run=",
             "systemd.run_success_action=", "systemd.unit=kernel-command-line.target"))]
    return " ".join([*words, f"systemd.run={script}", *FIRSTRUN_ARGS]) + "\n"


def firstrun_script(p: GatewayParams) -> str:
    """The bash script for images without cloud-init (run once as root by systemd.run)."""
    q = shlex.quote
    lines = [
        "#!/bin/bash",
        f"# fieldlink gateway {p.gateway_id}: first-boot configuration written by",
        "# `fieldlink provision`.  Runs once (systemd.run= on the kernel command line), then",
        "# removes itself and the hook, and the system reboots.",
        "set +e",
        'BOOT=$(dirname "$(readlink -f "$0")")',
        "exec >>/var/log/fieldlink-firstrun.log 2>&1",
        'echo "fieldlink firstrun: $(date -Is) from $BOOT"',
        "",
        "# hostname",
        f"NEW_HOST={q(p.hostname)}",
        "OLD_HOST=$(tr -d ' \\t\\n\\r' </etc/hostname)",
        "if [ -x /usr/lib/raspberrypi-sys-mods/imager_custom ]; then",
        '    /usr/lib/raspberrypi-sys-mods/imager_custom set_hostname "$NEW_HOST"',
        "else",
        '    echo "$NEW_HOST" >/etc/hostname',
        '    sed -i "s/127\\.0\\.1\\.1.*$OLD_HOST/127.0.1.1\\t$NEW_HOST/g" /etc/hosts',
        "fi",
    ]
    if p.ssh_keys:
        keys = "\n".join(p.ssh_keys)
        user = q(p.admin_user)
        lines += [
            "",
            "# the admin user: SSH key only, no password",
            f"ADMIN={user}",
            "FIRSTUSER=$(getent passwd 1000 | cut -d: -f1)",
            'if [ -x /usr/lib/userconf-pi/userconf ] && [ -n "$FIRSTUSER" ]; then',
            "    # renames the image's first user and disables the first-boot wizard",
            "    /usr/lib/userconf-pi/userconf \"$ADMIN\" '*'",
            'elif ! id "$ADMIN" >/dev/null 2>&1; then',
            f'    useradd -m -s /bin/bash -G {",".join(_SSH_GROUPS)} "$ADMIN"',
            "fi",
            'usermod -p "*" -aG ' + ",".join(_SSH_GROUPS) + ' "$ADMIN"',
            'HOME_DIR=$(getent passwd "$ADMIN" | cut -d: -f6)',
            'install -d -m 700 -o "$ADMIN" -g "$ADMIN" "$HOME_DIR/.ssh"',
            f"cat >\"$HOME_DIR/.ssh/authorized_keys\" <<'FIELDLINK_KEYS'\n{keys}\nFIELDLINK_KEYS",
            'chown "$ADMIN:$ADMIN" "$HOME_DIR/.ssh/authorized_keys"',
            'chmod 600 "$HOME_DIR/.ssh/authorized_keys"',
            'echo "$ADMIN ALL=(ALL) NOPASSWD:ALL" >/etc/sudoers.d/010_fieldlink-admin',
            "chmod 440 /etc/sudoers.d/010_fieldlink-admin",
            "install -d /etc/ssh/sshd_config.d",
            "printf 'PasswordAuthentication no\\n' >/etc/ssh/sshd_config.d/fieldlink.conf",
            "systemctl enable ssh",
        ]
    if p.wifi_ssid:
        assert p.wifi_password is not None and p.wifi_country is not None
        psk = wpa_psk(p.wifi_ssid, p.wifi_password)
        ssid_hex = p.wifi_ssid.encode().hex()
        lines += [
            "",
            "# Wi-Fi: regulatory country first (the radio stays blocked without it)",
            f"COUNTRY={q(p.wifi_country)}",
            "if command -v raspi-config >/dev/null; then",
            '    raspi-config nonint do_wifi_country "$COUNTRY"',
            "else",
            '    iw reg set "$COUNTRY"',
            "fi",
            "rfkill unblock wifi",
            "for f in /var/lib/systemd/rfkill/*:wlan; do [ -e \"$f\" ] && echo 0 >\"$f\"; done",
            "if [ -d /etc/NetworkManager/system-connections ]; then",
            "    cat >/etc/NetworkManager/system-connections/fieldlink-wifi.nmconnection "
            "<<'FIELDLINK_WIFI'",
            "[connection]",
            "id=fieldlink-wifi",
            "type=wifi",
            "interface-name=wlan0",
            "autoconnect=true",
            "",
            "[wifi]",
            "mode=infrastructure",
            f"ssid={_nm_ssid(p.wifi_ssid)}",
            "",
            "[wifi-security]",
            "key-mgmt=wpa-psk",
            f"psk={psk}",
            "",
            "[ipv4]",
            "method=auto",
            "",
            "[ipv6]",
            "method=auto",
            "FIELDLINK_WIFI",
            "    chmod 600 /etc/NetworkManager/system-connections/fieldlink-wifi.nmconnection",
            "else",
            "    cat >/etc/wpa_supplicant/wpa_supplicant.conf <<FIELDLINK_WPA",
            "ctrl_interface=DIR=/var/run/wpa_supplicant GROUP=netdev",
            "update_config=1",
            "country=$COUNTRY",
            "",
            "network={",
            f"    ssid={ssid_hex}",
            f"    psk={psk}",
            "}",
            "FIELDLINK_WPA",
            "    chmod 600 /etc/wpa_supplicant/wpa_supplicant.conf",
            "fi",
        ]
    if p.timezone:
        lines += [
            "",
            "# timezone",
            f"TZ_NAME={q(p.timezone)}",
            "if [ -x /usr/lib/raspberrypi-sys-mods/imager_custom ]; then",
            '    /usr/lib/raspberrypi-sys-mods/imager_custom set_timezone "$TZ_NAME"',
            "else",
            '    ln -sf "/usr/share/zoneinfo/$TZ_NAME" /etc/localtime',
            '    echo "$TZ_NAME" >/etc/timezone',
            "    dpkg-reconfigure -f noninteractive tzdata",
            "fi",
        ]
    lines += [
        "",
        "# the gateway itself (systemd is not fully up yet: install.sh only enables the unit,",
        "# which starts after the reboot below)",
        f'bash "$BOOT/{FIELDLINK_DIR}/install.sh" >>/var/log/fieldlink-install.log 2>&1 \\',
        '    || echo "fieldlink firstrun: install.sh failed, see /var/log/fieldlink-install.log"',
        "",
        "# run once: remove the hook and this script",
        "sed -i 's| systemd.run.*||g' \"$BOOT/cmdline.txt\"",
        'rm -f "$BOOT/firstrun.sh"',
        "exit 0",
        "",
    ]
    return "\n".join(lines)


def _nm_ssid(ssid: str) -> str:
    # a keyfile value: escape what the GKeyFile syntax would read differently
    return ssid.replace("\\", "\\\\").replace(";", "\\;")
