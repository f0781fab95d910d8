"""The boot partition being provisioned: a FAT filesystem inside an image, or a directory.

`ImageBootFs(image, offset)` reads and writes the FAT partition at byte `offset` of a disk
image with mtools (``mcopy``/``mdir``/``minfo`` with ``-i image@@offset``): no root, no
loop device, no mount.  `DirBootFs(path)` is an already mounted boot partition (or a bundle
directory).  Both offer the same few operations the provisioner needs:

* `read(name)` — a file's bytes, or None when it does not exist;
* `free_bytes()` / `cluster_bytes()` — for the "does it fit" check before any write;
* `apply(staging)` — copy a staged directory tree onto the partition root, merging with
  what is there and overwriting files of the same name.

Names are POSIX paths relative to the partition root (``fieldlink/etc/gateway.yaml``).
mtools errors raise `ProvisionError` with the tool's own message.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Protocol

from gateway.errors import ProvisionError

__all__ = ["BootFs", "DirBootFs", "ImageBootFs", "bytes_needed", "require_mtools"]

_MTOOLS = ("mcopy", "mdir", "minfo")


def require_mtools() -> None:
    """Raise `ProvisionError` with the install hint when mtools is missing."""
    missing = [tool for tool in _MTOOLS if shutil.which(tool) is None]
    if missing:
        raise ProvisionError(f"{', '.join(missing)} not found: install mtools "
                             "(apt-get install mtools; it writes the FAT boot partition "
                             "without root or mounting)")


class BootFs(Protocol):
    def describe(self) -> str: ...

    def read(self, name: str) -> bytes | None: ...

    def free_bytes(self) -> int: ...

    def cluster_bytes(self) -> int: ...

    def apply(self, staging: Path) -> None: ...


def bytes_needed(staging: Path, cluster: int) -> int:
    """Space `staging` takes on a FAT filesystem: whole clusters per file and directory."""
    total = 0
    for root, dirs, files in os.walk(staging):
        total += cluster * len(dirs)
        for name in files:
            size = os.path.getsize(os.path.join(root, name))
            total += max(1, -(-size // cluster)) * cluster
    return total


class ImageBootFs:
    """The FAT partition at byte `offset` of the disk image `image`, through mtools."""

    def __init__(self, image: str | Path, offset: int) -> None:
        require_mtools()
        self.image = Path(image)
        self.offset = offset
        self._drive = f"{self.image}@@{offset}"

    def describe(self) -> str:
        return f"{self.image} (FAT partition at offset {self.offset})"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        # MTOOLS_SKIP_CHECK: images made by mkfs.fat have geometry mtools would nag about
        env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C"}
        proc = subprocess.run([args[0], "-i", self._drive, *args[1:]], capture_output=True,
                              env=env, check=False)
        if check and proc.returncode != 0:
            why = proc.stderr.decode(errors="replace").strip() or f"exit {proc.returncode}"
            raise ProvisionError(f"{args[0]} on {self.describe()} failed: {why}")
        return proc

    def read(self, name: str) -> bytes | None:
        proc = self._run("mcopy", "-n", f"::/{name}", "-", check=False)
        if proc.returncode != 0:
            if b"not found" in proc.stderr:
                return None
            why = proc.stderr.decode(errors="replace").strip()
            raise ProvisionError(f"mcopy cannot read {name} from {self.describe()}: {why}")
        return proc.stdout

    def free_bytes(self) -> int:
        out = self._run("mdir", "::/").stdout.decode(errors="replace")
        m = re.search(r"([\d ]+) bytes free", out)
        if not m:
            raise ProvisionError(f"mdir did not report the free space of {self.describe()}")
        return int(m.group(1).replace(" ", ""))

    def cluster_bytes(self) -> int:
        out = self._run("minfo", "::").stdout.decode(errors="replace")
        sector = re.search(r"sector size: (\d+) bytes", out)
        cluster = re.search(r"cluster size: (\d+) sectors", out)
        if not (sector and cluster):
            raise ProvisionError(f"minfo did not report the cluster size of "
                                 f"{self.describe()}")
        return int(sector.group(1)) * int(cluster.group(1))

    def listing(self) -> list[str]:
        """Every path on the partition (directories end in '/'), for checks and reports."""
        out = self._run("mdir", "-/", "-b", "::/").stdout.decode(errors="replace")
        return [line.removeprefix("::/") for line in out.splitlines() if line.strip()]

    def apply(self, staging: Path) -> None:
        entries = sorted(str(p) for p in staging.iterdir())
        if entries:
            # -s: recursive, merging into existing directories; -o: overwrite same names
            self._run("mcopy", "-s", "-o", "-Q", *entries, "::/")


class DirBootFs:
    """A mounted boot partition, or a directory standing for one (a bundle)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise ProvisionError(f"--boot-dir {self.path}: not a directory")

    def describe(self) -> str:
        return str(self.path)

    def read(self, name: str) -> bytes | None:
        try:
            return (self.path / name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ProvisionError(f"cannot read {self.path / name}: "
                                 f"{exc.strerror or exc}") from None

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def cluster_bytes(self) -> int:
        return max(512, os.statvfs(self.path).f_bsize)

    def apply(self, staging: Path) -> None:
        # contents only: a FAT mount refuses chmod, so copy2/copystat would fail there
        for root, _dirs, files in os.walk(staging):
            target = self.path / Path(root).relative_to(staging)
            target.mkdir(parents=True, exist_ok=True)
            for name in files:
                shutil.copyfile(os.path.join(root, name), target / name)
