"""Partition tables built in memory: MBR, GPT, and the refusals."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest

from gateway.errors import ProvisionError
from gateway.provision.partitions import (
    SECTOR,
    find_boot_partition,
    gpt_entries_span,
    read_partitions,
)


def mbr(*entries: tuple[int, int, int], bootable: int | None = 0) -> bytes:
    """A first sector with up to four (type, start_lba, sectors) entries."""
    sector = bytearray(SECTOR)
    for i, (ptype, start, count) in enumerate(entries):
        off = 446 + 16 * i
        sector[off] = 0x80 if bootable == i else 0
        sector[off + 4] = ptype
        struct.pack_into("<II", sector, off + 8, start, count)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def gpt(*parts: tuple[uuid.UUID, int, int]) -> tuple[bytes, bytes]:
    """(first two sectors, entry array) of a GPT disk with `parts` (type, first, last)."""
    head = bytearray(mbr((0xEE, 1, 0xFFFFFFFF), bootable=None) + bytes(SECTOR))
    header = bytearray(92)
    header[:8] = b"EFI PART"
    struct.pack_into("<QII", header, 72, 2, 128, 128)
    head[SECTOR: SECTOR + 92] = header
    entries = bytearray(128 * 128)
    for i, (ptype, first, last) in enumerate(parts):
        entries[i * 128: i * 128 + 16] = ptype.bytes_le
        entries[i * 128 + 16: i * 128 + 32] = uuid.uuid4().bytes_le
        struct.pack_into("<QQ", entries, i * 128 + 32, first, last)
    return bytes(head), bytes(entries)


def test_raspberry_pi_os_layout() -> None:
    table = read_partitions(mbr((0x0C, 8192, 1048576), (0x83, 1056768, 4194304)))
    assert table.scheme == "mbr"
    boot = table.boot_partition()
    assert boot is not None
    assert (boot.number, boot.offset, boot.size) == (1, 8192 * 512, 1048576 * 512)
    assert boot.bootable and boot.is_fat
    assert [p.kind for p in table.partitions] == ["0x0c FAT32 (LBA)", "0x83 Linux"]


@pytest.mark.parametrize("ptype", [0x0B, 0x0C, 0x0E])
def test_every_fat_type_a_pi_boots_from(ptype: int) -> None:
    boot = read_partitions(mbr((0x83, 2048, 100), (ptype, 4096, 100))).boot_partition()
    assert boot is not None and boot.number == 2 and boot.mbr_type == ptype


def test_extended_and_empty_entries_are_skipped() -> None:
    table = read_partitions(mbr((0x0F, 2048, 100), (0, 0, 0), (0x83, 4096, 100)))
    assert [p.number for p in table.partitions] == [3]
    assert table.boot_partition() is None


def test_no_signature_is_refused() -> None:
    with pytest.raises(ProvisionError, match="no MBR signature"):
        read_partitions(bytes(SECTOR))
    with pytest.raises(ProvisionError, match="no MBR signature"):
        read_partitions(b"\xfd7zXZ\x00" + bytes(600))  # an .xz given as .img


def test_gpt_boot_partition() -> None:
    basic_data = uuid.UUID("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7")
    linux = uuid.UUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
    head, entries = gpt((linux, 2048, 4095), (basic_data, 8192, 139263))
    assert gpt_entries_span(head) == (2 * SECTOR, 128 * 128)
    table = read_partitions(head, entries)
    assert table.scheme == "gpt"
    boot = table.boot_partition()
    assert boot is not None
    assert (boot.number, boot.offset, boot.size) == (2, 8192 * 512, 131072 * 512)
    assert boot.kind == "Microsoft basic data"


def test_gpt_without_entries_or_header_says_so() -> None:
    head, _ = gpt()
    with pytest.raises(ProvisionError, match="uses GPT"):
        read_partitions(head)
    broken = head[:SECTOR] + bytes(SECTOR)
    with pytest.raises(ProvisionError, match="no valid GPT header"):
        read_partitions(broken)


def test_find_boot_partition_in_a_file(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(mbr((0x0C, 8, 16), (0x83, 24, 8)) + bytes(31 * SECTOR))
    table, boot = find_boot_partition(image)
    assert boot.offset == 8 * SECTOR and len(table.partitions) == 2


def test_no_fat_partition_names_what_is_there(tmp_path: Path) -> None:
    image = tmp_path / "linux-only.img"
    image.write_bytes(mbr((0x83, 8, 16)) + bytes(24 * SECTOR))
    with pytest.raises(ProvisionError) as err:
        find_boot_partition(image)
    assert "no FAT boot partition" in str(err.value)
    assert "0x83 Linux" in str(err.value)


def test_truncated_image_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "short.img"
    image.write_bytes(mbr((0x0C, 8, 1000)) + bytes(10 * SECTOR))
    with pytest.raises(ProvisionError, match="truncated"):
        find_boot_partition(image)


def test_unreadable_image(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="cannot read"):
        find_boot_partition(tmp_path / "missing.img")
