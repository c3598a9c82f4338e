"""The disks the benchmarks read: the cached bootstrap base, or disks made for the bench.

- :func:`bench_base` finds (or builds, ~2 min, root) the bootstrap bookworm base, the
  ~790 MB root the export targets are about, in ``$IMAGEBUILDER_TEST_CACHE``,
  ``~/.cache/imagebuilder`` (where ``make image`` keeps it) or the tests' cache
  ``~/.cache/imagebuilder-tests``; a new one goes into the first.
- :func:`make_disk` writes a GPT disk whose partition 1 is an ext4 filesystem labelled
  ``cloudimg-rootfs`` filled from a host directory with ``mkfs.ext4 -d`` (no mount, no
  root needed), the rest left as holes: the small disk of the tests and the 8 GiB
  mostly-empty disk of the raw benchmark.
- :func:`overlay` makes a throwaway qcow2 on top of a disk (packer-maas's mount writes).

Nothing here prints; commands go through ``imagebuilder.run``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from imagebuilder import run
from imagebuilder.base import recipe as bootrecipe
from imagebuilder.sources.basedisk import BaseDisk

MIB = 1024 * 1024
GIB = 1024 * MIB
LINUX_FS_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ROOT_LABEL = "cloudimg-rootfs"


def cache_dirs() -> list[Path]:
    """Where a bootstrap base may already be, most specific first."""
    env = os.environ.get("IMAGEBUILDER_TEST_CACHE")
    home = Path.home() / ".cache"
    dirs = [Path(env)] if env else []
    dirs += [home / "imagebuilder", home / "imagebuilder-tests"]
    return list(dict.fromkeys(dirs))


def bench_config(cache_dir: Path, **options: Any) -> Any:
    """The bookworm bootstrap config the benchmarks use (``options`` are CLI-style keys)."""
    from imagebuilder.config.tree import resolve

    cli: dict[str, Any] = {"series": "bookworm", "base": "bootstrap", "cache_dir": str(cache_dir)}
    cli.update(options)
    return resolve(cli, environ={})


def find_base() -> BaseDisk | None:
    """The cached bookworm bootstrap base, if any cache directory has it."""
    from imagebuilder.base import bootstrap

    for d in cache_dirs():
        cfg = bench_config(d)
        found = bootstrap.cached_base(d, bootrecipe.recipe(cfg))
        if found is not None:
            return found
    return None


def bench_base(progress: Any) -> BaseDisk:
    """The cached base, or a new one built into the first cache directory (root, ~2 min)."""
    found = find_base()
    if found is not None:
        return found
    from imagebuilder.base import bootstrap

    return bootstrap.bootstrap_base(bench_config(cache_dirs()[0]), progress)


def base_to_json(base: BaseDisk) -> str:
    data = dataclasses.asdict(base)
    data["path"] = str(base.path)
    return json.dumps(data, sort_keys=True)


def base_from_json(text: str) -> BaseDisk:
    data = json.loads(text)
    data["path"] = Path(data["path"])
    return BaseDisk(**data)


def sfdisk_script(size: int, part_size: int) -> str:
    """A GPT with partition 1 (Linux filesystem) of ``part_size`` bytes at 1 MiB."""
    if part_size + 2 * MIB > size:
        raise ValueError(f"partition of {part_size} bytes does not fit a {size}-byte disk")
    return (
        "label: gpt\nunit: sectors\nfirst-lba: 2048\n"
        f"start=2048, size={part_size // 512}, type={LINUX_FS_TYPE}, name={ROOT_LABEL}\n"
    )


def make_disk(path: Path, *, size: int, part_size: int, populate: Path, fmt: str = "raw") -> Path:
    """A GPT disk with an ext4 root filled from ``populate``; raw (sparse) or qcow2."""
    raw = path if fmt == "raw" else path.with_suffix(".raw")
    raw.unlink(missing_ok=True)
    with raw.open("wb") as f:
        f.truncate(size)
    try:
        run.run(["sfdisk", "-q", raw], input=sfdisk_script(size, part_size).encode())
        run.run(["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-E", f"offset={MIB}",
                 "-d", populate, raw, f"{part_size // 1024}k"])  # fmt: skip
        if fmt != "raw":
            run.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, raw, path])
    finally:
        if raw != path:
            raw.unlink(missing_ok=True)
    return path


def overlay(base: Path, base_fmt: str, dest: Path) -> Path:
    """A qcow2 overlay backed by ``base``: writes land here, never in the base."""
    dest.unlink(missing_ok=True)
    run.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base.resolve(),
             "-F", base_fmt, dest])  # fmt: skip
    return dest


def warm_cache(path: Path) -> None:
    """Read a file's data once (not its holes) so every contender finds it in the page cache."""
    with path.open("rb") as f:
        fd, pos, end = f.fileno(), 0, os.fstat(f.fileno()).st_size
        while pos < end:
            try:
                pos = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            hole = os.lseek(fd, pos, os.SEEK_HOLE)
            while pos < hole:
                chunk = os.pread(fd, min(8 * MIB, hole - pos), pos)
                if not chunk:
                    return
                pos += len(chunk)
