"""Bootstrap determinism without root: the archive's date as SOURCE_DATE_EPOCH, FAT bytes."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

from imagebuilder.base import bootloader, disklayout, rootfs
from imagebuilder.base import recipe as bootrecipe
from imagebuilder.progress import Event, Progress

RELEASE = "Origin: Debian\nSuite: {suite}\nDate: {date}\nValid-Until: never\n"


class Events:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, event: Event) -> None:
        self.seen.append(f"{event.kind}: {event.name}")


def recipe(mirror: str) -> bootrecipe.Recipe:
    return bootrecipe.Recipe("debian", "bookworm", "amd64", mirror, "/k.gpg", ("main",),
                            "linux-image-amd64", ("linux-image-amd64",))  # fmt: skip


def test_mirror_epoch_is_the_newest_release_date(tmp_path: Path) -> None:
    dates = {"bookworm": "Sat, 10 Jun 2023 08:52:16 UTC",
             "bookworm-updates": "Sun, 11 Jun 2023 20:12:03 UTC",
             "bookworm-security": "Mon, 12 Jun 2023 00:00:01 UTC"}  # fmt: skip
    for root, suite in (("debian", "bookworm"), ("debian", "bookworm-updates"),
                        ("debian-security", "bookworm-security")):  # fmt: skip
        d = tmp_path / root / "dists" / suite
        d.mkdir(parents=True)
        (d / "InRelease").write_text(RELEASE.format(suite=suite, date=dates[suite]))
    rec = recipe(f"file://{tmp_path}/debian")
    assert rootfs.mirror_epoch(rec, Progress()) == 1686528001  # 2023-06-12 00:00:01 UTC


def test_an_unreadable_mirror_warns_and_gives_no_epoch(tmp_path: Path) -> None:
    events = Events()
    assert rootfs.mirror_epoch(recipe(f"file://{tmp_path}/debian"), Progress(events)) is None
    assert any("will not be reproducible" in e for e in events.seen)


def test_the_esp_is_the_same_bytes_whenever_it_is_made(tmp_path: Path) -> None:
    layout = disklayout.cloudimg_layout("seed")
    stage = tmp_path / "stage" / "EFI" / "BOOT"
    stage.mkdir(parents=True)
    (stage / "BOOTX64.EFI").write_bytes(b"shim" * 1000)
    digests = []
    for n in range(2):
        fat = tmp_path / f"esp{n}.img"
        fat.write_bytes(b"")
        subprocess.run(["truncate", "-s", "64M", fat], check=True)
        subprocess.run(["mkfs.vfat", "--invariant", "-F", "32", "-n", disklayout.ESP_LABEL,
                        "-i", layout.esp_serial, fat], check=True, capture_output=True)  # fmt: skip
        bootloader.copy_to_fat(tmp_path / "stage", fat, epoch=1686528001)
        digests.append(hashlib.sha256(fat.read_bytes()).hexdigest())
        time.sleep(1.1)  # a later wall-clock second: nothing of it may reach the bytes
    assert digests[0] == digests[1]
    assert "EFI/BOOT/BOOTX64.EFI" in bootloader.list_fat(tmp_path / "esp0.img")
