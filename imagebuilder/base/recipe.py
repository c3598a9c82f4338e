"""What decides a bootstrap base's content, and so its cache key: the recipe.

A :class:`Recipe` is the suite, arch, mirror, keyring, components, kernel and
package set of one bootstrap base, from the config and the release family's
bootstrap tool; its ``key`` hashes what ends up on the disk with
:data:`RECIPE_VERSION`. Pure values: nothing here touches a disk or the network.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ..config.tree import Config
from ..errors import (
    BootstrapError,
)
from ..families import catalogue
from ..families.seam import BootstrapTool, Family
from . import disklayout

#: Bump when the recipe below changes what ends up on the disk: invalidates caches.
#: 2: SOURCE_DATE_EPOCH always set (mmdebstrap, mke2fs, mtools), FAT made --invariant.
RECIPE_VERSION = 2


DISK_SIZE = 3 * disklayout.GIB


@dataclass(frozen=True)
class Recipe:
    """Everything that decides what a bootstrap base contains (and so its cache key)."""

    distro: str
    suite: str
    arch: str
    mirror: str
    keyring: str
    components: tuple[str, ...]
    kernel: str
    packages: tuple[str, ...]  # sorted; includes the kernel and grub packages

    @property
    def key(self) -> str:
        data = {
            "recipe": RECIPE_VERSION,
            "suite": self.suite,
            "arch": self.arch,
            "mirror": self.mirror,
            "packages": list(self.packages),
            "disk_size": DISK_SIZE,
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    @property
    def name(self) -> str:
        return f"{self.suite}-{self.arch}-{self.key[:16]}"

    @property
    def family(self) -> Family:
        return catalogue.get(self.suite).family

    @property
    def tool(self) -> BootstrapTool:
        return _tool(self.family)

    @property
    def origin(self) -> str:
        return f"{self.tool.name} {self.suite} {self.mirror}"

    def sources(self) -> list[str]:
        """The package sources: the release, its updates and its security pocket."""
        return self.tool.sources(self.family, self.mirror, self.suite, self.components)


def _tool(family: Family) -> BootstrapTool:
    if family.bootstrap is None:
        raise BootstrapError(
            f"{family.title} bases cannot be bootstrapped here", hint="use --base cloud"
        )
    return family.bootstrap


def recipe(cfg: Config) -> Recipe:
    rel = cfg.release
    return Recipe(
        distro=rel.distro,
        suite=rel.codename,
        arch=cfg.arch,
        mirror=(cfg.source.mirror or rel.archive_mirror(cfg.arch)).rstrip("/"),
        keyring=rel.archive_keyring(),
        components=rel.bootstrap_components(),
        kernel=rel.kernel_package(cfg.arch),
        packages=_tool(rel.family).packages(rel, cfg.arch, cfg.source.extra_packages),
    )
