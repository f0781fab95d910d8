"""Partition tables of disk images, read in pure Python: MBR, and GPT (protective MBR).

`read_partitions(head)` parses the first sectors of an image (`HEAD_BYTES` are always
enough for an MBR; a GPT needs its entry array, `gpt_entries_span` tells how much);
`find_boot_partition(path)` opens an image file and returns the FAT partition a Raspberry Pi
boots from, or raises `ProvisionError` saying what the image holds instead.

Raspberry Pi OS images use an MBR with a FAT32 (LBA) boot partition first; the boot ROM of
a Pi 4/5 can also boot GPT disks, where the boot partition is a "Microsoft basic data" or
"EFI system" partition.  Offsets are bytes from the start of the image (what mtools'
``image@@offset`` wants); the sector size is 512 bytes, as on every SD card image.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ProvisionError

__all__ = ["FAT_MBR_TYPES", "HEAD_BYTES", "SECTOR", "Partition", "PartitionTable",
           "find_boot_partition", "gpt_entries_span", "read_image_partitions",
           "read_partitions"]

SECTOR = 512
#: enough to parse an MBR and a GPT header (LBA 0 and 1)
HEAD_BYTES = 2 * SECTOR

#: FAT32 (CHS), FAT32 (LBA), FAT16 (LBA): the types a Pi boots from
FAT_MBR_TYPES = {0x0B: "FAT32", 0x0C: "FAT32 (LBA)", 0x0E: "FAT16 (LBA)"}
_EXTENDED = {0x05, 0x0F, 0x85}
_GPT_PROTECTIVE = 0xEE
_GPT_FAT_TYPES = {
    uuid.UUID("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"): "Microsoft basic data",
    uuid.UUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"): "EFI system",
}
_MBR_NAMES = {0x83: "Linux", 0x82: "Linux swap", 0x8E: "Linux LVM", 0x07: "NTFS/exFAT",
              0x06: "FAT16", 0x01: "FAT12", 0x04: "FAT16 <32M"}


@dataclass(frozen=True, slots=True)
class Partition:
    number: int  # 1-based, as in /dev/mmcblk0p1
    start_lba: int
    sectors: int
    #: the MBR type byte, or None on GPT
    mbr_type: int | None = None
    #: the GPT partition type GUID, or None on MBR
    gpt_type: uuid.UUID | None = None
    bootable: bool = False

    @property
    def offset(self) -> int:
        return self.start_lba * SECTOR

    @property
    def size(self) -> int:
        return self.sectors * SECTOR

    @property
    def is_fat(self) -> bool:
        if self.mbr_type is not None:
            return self.mbr_type in FAT_MBR_TYPES
        return self.gpt_type in _GPT_FAT_TYPES

    @property
    def kind(self) -> str:
        if self.mbr_type is not None:
            name = FAT_MBR_TYPES.get(self.mbr_type) or _MBR_NAMES.get(self.mbr_type, "other")
            return f"0x{self.mbr_type:02x} {name}"
        assert self.gpt_type is not None
        return _GPT_FAT_TYPES.get(self.gpt_type, str(self.gpt_type))

    def describe(self) -> str:
        return (f"partition {self.number}: {self.kind}, {self.size / 2**20:.1f} MiB at "
                f"offset {self.offset}")


@dataclass(frozen=True, slots=True)
class PartitionTable:
    scheme: str  # "mbr" | "gpt"
    partitions: tuple[Partition, ...]

    def boot_partition(self) -> Partition | None:
        """The first FAT partition (the Pi's firmware reads the first one it finds)."""
        return next((p for p in self.partitions if p.is_fat), None)


def _mbr_entries(head: bytes) -> list[tuple[int, int, int, int]]:
    """(status, type, start_lba, sectors) of the four primary entries."""
    out = []
    for i in range(4):
        entry = head[446 + 16 * i: 446 + 16 * (i + 1)]
        status, ptype = entry[0], entry[4]
        start, count = struct.unpack_from("<II", entry, 8)
        out.append((status, ptype, start, count))
    return out


def gpt_entries_span(head: bytes) -> tuple[int, int] | None:
    """(offset, length) in bytes of the GPT entry array named by the header at LBA 1."""
    header = head[SECTOR: 2 * SECTOR]
    if len(header) < 92 or header[:8] != b"EFI PART":
        return None
    entries_lba, count, size = struct.unpack_from("<QII", header, 72)
    if not (0 < count <= 1024 and 128 <= size <= 4096):
        return None
    return entries_lba * SECTOR, count * size


def _gpt(head: bytes, entries: bytes) -> PartitionTable:
    header = head[SECTOR: 2 * SECTOR]
    _, count, size = struct.unpack_from("<QII", header, 72)
    parts = []
    for i in range(count):
        raw = entries[i * size: (i + 1) * size]
        if len(raw) < 48:
            break
        type_guid = uuid.UUID(bytes_le=bytes(raw[:16]))
        if type_guid.int == 0:
            continue
        first, last = struct.unpack_from("<QQ", raw, 32)
        parts.append(Partition(i + 1, first, last - first + 1, gpt_type=type_guid))
    return PartitionTable("gpt", tuple(parts))


def read_partitions(head: bytes, gpt_entries: bytes | None = None) -> PartitionTable:
    """Parse the partition table from the first bytes of an image.

    For a GPT disk pass the entry array as `gpt_entries` (see `gpt_entries_span`); without
    it a GPT disk raises `ProvisionError`.  Raises `ProvisionError` when there is no valid
    MBR signature (not a disk image).
    """
    if len(head) < SECTOR or head[510:512] != b"\x55\xaa":
        raise ProvisionError("no partition table: the first sector has no MBR signature "
                             "(0x55AA) — is this a disk image (.img), not a compressed or "
                             "partition image?")
    entries = _mbr_entries(head)
    if any(ptype == _GPT_PROTECTIVE for _, ptype, _, _ in entries):
        if gpt_entries_span(head) is None:
            raise ProvisionError("the image has a protective MBR but no valid GPT header at "
                                 "LBA 1")
        if gpt_entries is None:
            raise ProvisionError("the image uses GPT: pass its partition entry array")
        return _gpt(head, gpt_entries)
    parts = []
    for i, (status, ptype, start, count) in enumerate(entries):
        if ptype == 0 or count == 0:
            continue
        if ptype in _EXTENDED:
            continue  # logical partitions: a Pi never boots from one
        parts.append(Partition(i + 1, start, count, mbr_type=ptype, bootable=status == 0x80))
    return PartitionTable("mbr", tuple(parts))


def read_image_partitions(path: str | Path) -> PartitionTable:
    """Read the partition table of the image file at `path` (MBR or GPT)."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
            entries = None
            span = gpt_entries_span(head) if len(head) == HEAD_BYTES else None
            if span is not None:
                f.seek(span[0])
                entries = f.read(span[1])
    except OSError as exc:
        raise ProvisionError(f"{path}: cannot read the image: {exc.strerror or exc}") from None
    try:
        return read_partitions(head, entries)
    except ProvisionError as exc:
        raise ProvisionError(f"{path}: {exc.message}") from None


def find_boot_partition(path: str | Path) -> tuple[PartitionTable, Partition]:
    """The image's partition table and its FAT boot partition.

    Raises `ProvisionError` naming the partitions found when none is FAT, or when the FAT
    partition lies beyond the end of the file (a truncated download).
    """
    table = read_image_partitions(path)
    boot = table.boot_partition()
    if boot is None:
        found = "; ".join(p.describe() for p in table.partitions) or "no partitions"
        raise ProvisionError(
            f"{path}: no FAT boot partition ({table.scheme.upper()} table: {found}); a "
            "Raspberry Pi OS image has a FAT32 partition of type 0x0c first")
    size = Path(path).stat().st_size
    if boot.offset + boot.size > size:
        raise ProvisionError(
            f"{path}: the boot partition ends at byte {boot.offset + boot.size} but the file "
            f"has only {size} bytes — the image is truncated (download it again)")
    return table, boot
