"""deploy/rpi: the installer in a throwaway root, and the systemd unit under systemd-analyze.

The installer runs with `--prefix` (every path under tmp_path, no useradd/chown/systemctl)
and installs *for real* from a wheels directory: the fieldlink wheel freshly built from this
tree plus its core dependencies for this machine, downloaded once with pip and cached in
~/.cache/fieldlink/test-wheels/.  `FIELDLINK_TEST_INSTALL_EXTRAS=gateway` installs the
gateway extra instead of the core only (what a Pi installs; more to download).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.errors import ProvisionError
from gateway.provision.wheels import (
    DEFAULT_PLATFORMS,
    WheelOptions,
    build_fieldlink_wheel,
    collect_wheels,
    default_cache,
    requirements,
)

REPO = Path(__file__).resolve().parents[2]
RPI = REPO / "deploy" / "rpi"
EXTRAS = os.environ.get("FIELDLINK_TEST_INSTALL_EXTRAS", "")
#: the interpreter the installer builds venvs with: the base Python, not this venv's
PYTHON = str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}")


def unavailable(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fieldlink + its dependencies as wheels for this machine."""
    cache = default_cache().parent / "test-wheels"
    reqs = requirements(REPO / "pyproject.toml", EXTRAS)
    key = hashlib.sha256("\n".join([*reqs, sys.version]).encode()).hexdigest()[:16]
    deps = cache / f"deps-{key}"
    if not (deps / ".complete").exists():
        partial = deps.with_name(deps.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q",
                               "--disable-pip-version-check", "--only-binary=:all:",
                               "--dest", str(partial), *reqs, "pip"],
                              capture_output=True, text=True, timeout=540)
        if proc.returncode != 0:
            unavailable(f"pip download of the dependencies failed: {proc.stderr[-800:]}")
        (partial / ".complete").write_text("\n".join(reqs))
        shutil.rmtree(deps, ignore_errors=True)
        partial.rename(deps)
    out = tmp_path_factory.mktemp("wheels")
    for wheel in deps.glob("*.whl"):
        shutil.copy(wheel, out / wheel.name)
    own = build_fieldlink_wheel(REPO, cache, quiet=True)
    shutil.copy(own, out / own.name)
    return out


def staged_config(root: Path) -> Path:
    """What `fieldlink provision` puts in fieldlink/etc on the boot partition."""
    etc = root / "boot-etc"
    (etc / "credentials").mkdir(parents=True)
    (etc / "gateway.yaml").write_text("gateway:\n  id: gw-test\n")
    (etc / "rules.yaml").write_text((REPO / "config" / "rules.yaml").read_text())
    (etc / "fieldlink.env").write_text("FIELDLINK_UPLINK__GATEWAY_SECRET=" + "s" * 32 + "\n")
    (etc / "credentials" / "mqtt-credentials.json").write_text('{"format": 1, "accounts": {}}\n')
    return etc


def install(root: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FIELDLINK_INSTALL_DRYRUN_SYSTEM"}
    proc = subprocess.run(["bash", str(RPI / "install.sh"), "--prefix", str(root),
                           "--python", PYTHON, *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=540)
    return proc


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_upgrade_rollback_uninstall(tmp_path: Path, wheels: Path) -> None:
    root = tmp_path / "root"
    etc_src = staged_config(tmp_path)
    proc = install(root, "--wheels", wheels, "--config-from", etc_src, "--extras", EXTRAS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipped (test root): useradd" in proc.stdout
    assert "skipped (test root): systemctl enable --now fieldlink-gateway.service" in proc.stdout

    opt = root / "opt" / "fieldlink"
    venv = opt / "venv"
    assert venv.is_symlink() and os.readlink(venv).startswith("releases/")
    first = venv.resolve()
    run = subprocess.run([str(venv / "bin" / "fieldlink"), "gateway", "--help"],
                         capture_output=True, text=True)
    assert run.returncode == 0 and "check-config" in run.stdout
    linked = subprocess.run([str(root / "usr" / "local" / "bin" / "fieldlink"), "--version"],
                            capture_output=True, text=True)
    assert linked.returncode == 0 and linked.stdout.startswith("fieldlink ")

    etc = root / "etc" / "fieldlink"
    assert (etc / "gateway.yaml").read_text() == "gateway:\n  id: gw-test\n"
    assert mode(etc) == 0o750 and mode(etc / "gateway.yaml") == 0o640
    assert mode(etc / "fieldlink.env") == 0o600
    assert mode(etc / "credentials") == 0o700
    assert mode(etc / "credentials" / "mqtt-credentials.json") == 0o600
    assert (root / "var" / "lib" / "fieldlink").is_dir()
    unit = root / "etc" / "systemd" / "system" / "fieldlink-gateway.service"
    assert unit.read_bytes() == (RPI / "fieldlink-gateway.service").read_bytes()
    assert (root / "etc" / "systemd" / "journald.conf.d" / "fieldlink.conf").is_file()
    # the secrets left the (world-readable) boot partition
    assert not (etc_src / "fieldlink.env").exists()
    assert not (etc_src / "credentials" / "mqtt-credentials.json").exists()
    assert (etc_src / "gateway.yaml").exists()

    # idempotent: same wheels, nothing rebuilt; a changed staged config does not overwrite
    (etc_src / "gateway.yaml").write_text("gateway:\n  id: gw-other\n")
    proc = install(root, "--wheels", wheels, "--config-from", etc_src, "--extras", EXTRAS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "venv up to date" in proc.stdout
    assert venv.resolve() == first and not (opt / "venv.previous").exists()
    assert (etc / "gateway.yaml").read_text() == "gateway:\n  id: gw-test\n"
    assert (etc / "gateway.yaml.new").read_text() == "gateway:\n  id: gw-other\n"

    # upgrade: a new release beside the old one, switched by symlink
    proc = install(root, "--wheels", wheels, "--extras", EXTRAS, "--force")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    second = venv.resolve()
    assert second != first and (opt / "venv.previous").resolve() == first
    assert subprocess.run([str(venv / "bin" / "fieldlink"), "--version"]).returncode == 0

    # a broken wheel set fails and leaves the running release alone
    broken = tmp_path / "broken"
    broken.mkdir()
    own = next(wheels.glob("fieldlink-*.whl"))
    shutil.copy(own, broken / own.name)
    proc = install(root, "--wheels", broken, "--extras", EXTRAS, "--force")
    assert proc.returncode != 0
    assert "pip could not install" in proc.stderr
    assert venv.resolve() == second
    assert sorted(p.name for p in (opt / "releases").iterdir()) == sorted(
        [first.name, second.name])

    proc = install(root, "--rollback")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert venv.resolve() == first and (opt / "venv.previous").resolve() == second

    proc = install(root, "--uninstall")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipped (test root): userdel fieldlink" in proc.stdout
    assert not opt.exists() and not unit.exists()
    assert not (root / "usr" / "local" / "bin" / "fieldlink").is_symlink()
    assert (etc / "gateway.yaml").exists() and (root / "var" / "lib" / "fieldlink").is_dir()

    proc = install(root, "--uninstall", "--purge")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not etc.exists() and not (root / "var" / "lib" / "fieldlink").exists()


def test_installer_refusals(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = install(tmp_path / "root", "--wheels", empty)
    assert proc.returncode == 1 and "no fieldlink-*.whl in" in proc.stderr
    proc = install(tmp_path / "root", "--rollback")
    assert proc.returncode == 1 and "no previous release" in proc.stderr
    proc = install(tmp_path / "root", "--bogus")
    assert proc.returncode == 1 and "unknown option --bogus" in proc.stderr
    proc = subprocess.run(["bash", str(RPI / "install.sh"), "--help"], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "--uninstall" in proc.stdout


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        unavailable("systemd-analyze is not installed (Debian package systemd)")
    assert analyze is not None
    text = (RPI / "fieldlink-gateway.service").read_text()
    for line in ("Type=notify", "NotifyAccess=main", "Restart=always", "WatchdogSec=30",
                 "ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes",
                 "ProtectHome=yes", "StateDirectory=fieldlink", "CapabilityBoundingSet=\n",
                 "SupplementaryGroups=dialout", "After=network-online.target",
                 "Wants=network-online.target", "EnvironmentFile=-/etc/fieldlink/fieldlink.env",
                 "User=fieldlink", "ExecStart=/opt/fieldlink/venv/bin/fieldlink gateway run "
                 "--config /etc/fieldlink/gateway.yaml"):
        assert line in text, line
    assert "Requires=" not in text and "ReadWritePaths" not in text
    # the venv's binary does not exist here: verify a copy whose ExecStart is /bin/true
    unit = tmp_path / "fieldlink-gateway.service"
    unit.write_text(text.replace("/opt/fieldlink/venv/bin/fieldlink", "/bin/true"))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines()
                  if "fieldlink-gateway.service" in line]
    assert proc.returncode == 0 and complaints == [], proc.stdout + proc.stderr
    journald = (RPI / "journald-fieldlink.conf").read_text()
    assert "[Journal]" in journald and "SystemMaxUse=" in journald


def test_the_pi_wheel_set_installs_offline(tmp_path: Path) -> None:
    """What `fieldlink provision` puts on a card resolves `fieldlink[gateway]` for the Pi
    (CPython 3.11, aarch64) with no index: the first boot needs no network."""
    try:
        found = collect_wheels(WheelOptions(show_progress=False))
    except ProvisionError as exc:
        unavailable(f"the Pi's wheels could not be collected: {exc}")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for wheel in found:
        shutil.copy(wheel, wheels / wheel.name)
    platforms = [arg for plat in DEFAULT_PLATFORMS for arg in ("--platform", plat)]
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--dry-run",
                           "--disable-pip-version-check", "--no-index", "--find-links",
                           str(wheels), *platforms, "--python-version", "3.11",
                           "--implementation", "cp", "--only-binary=:all:",
                           "--target", str(tmp_path / "target"), "--report", str(report),
                           "fieldlink[gateway]"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    names = {item["metadata"]["name"].lower().replace("_", "-")
             for item in json.loads(report.read_text())["install"]}
    assert {"fieldlink", "amqtt", "aiocoap", "numpy", "argon2-cffi", "pydantic"} <= names
    assert any(w.name.startswith("pip-") for w in found)  # for venvs without ensurepip
