"""Base disks made without a VM: bootstrap from a package mirror into a cloud-image-like disk.

``recipe`` (what decides a base and its cache key), ``hostcheck`` (host tools and
qemu-user), ``disklayout``, ``mounts``, ``chroot``, ``rootfs`` (the family's tool
fills the root, then it is configured), ``bootloader``, ``bootstrap`` (the cache and
the build), ``pkgversions`` (a base's package versions), ``obtain`` (the cached base
for a config, fetched or bootstrapped). Nothing here boots the build VM.
"""
